"""The life of a job record: the one place a JobRecord is made and its status moved.

    queued ──> processing ──> completed | failed | timeout | cancelled
      │  ^         │ ^
      │  └─────────┘ └─ another attempt (the executor running it before stopped)
      │   a retry
      └──> completed | failed | cancelled   (an instant agent; refused before it ran;
                                              cancelled before it started)

A terminal record never moves again: :func:`move` raises :class:`IllegalTransition` for that
and for any step not drawn above. The receiver makes records (:func:`new`, "queued"); the
executor moves them (:func:`start`, :func:`requeue`, :func:`finish`, :func:`progress`),
always as a compare-and-set on the key's revision (executor/handlers/jobstore.py), so a
writer that loses re-reads and decides again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from msgspec.structs import replace

from conveyor.shared.contracts.events import (
    TERMINAL_STATUSES,
    JobRecord,
    JobRequest,
    JobStatus,
    WebhookEvent,
    utcnow,
)

QUEUED: JobStatus = "queued"
PROCESSING: JobStatus = "processing"

ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"queued", "processing", "completed", "failed", "cancelled"}),
    "processing": frozenset({"queued", "processing", *TERMINAL_STATUSES}),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}


class IllegalTransition(ValueError):
    """A record asked to move where its lifecycle does not go (a terminal one, anywhere)."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id}: {current} -> {wanted} is not a transition a job makes")
        self.job_id, self.current, self.wanted = job_id, current, wanted


def allowed(current: str, wanted: str) -> bool:
    return wanted in ALLOWED.get(current, frozenset())


def new(job_id: str, *, created_at: dt.datetime, now: dt.datetime | None = None, **fields: Any) -> JobRecord:
    """A job's first record: queued, nothing run yet. ``fields``: what the job is (agent,
    source, event_type, project, project_id, callback_url, parent_id, schedule_id)."""
    return JobRecord(
        job_id=job_id, status=QUEUED, created_at=created_at, updated_at=now or created_at, **fields
    )


def received(event: WebhookEvent, *, now: dt.datetime) -> JobRecord:
    """The queued record an event's job has when the executor finds none (the receiver's
    write was lost, or the event came another way): what the event says of the job."""
    return new(
        event.job_id,
        created_at=event.received_at,
        now=now,
        source=event.source,
        event_type=event.type,
        project_id=event.project_id,
        project=event.project,
        callback_url=event.callback_url,
    )


def requested(req: JobRequest, *, now: dt.datetime, agent: str | None = None) -> JobRecord:
    """The queued record of a requested job whose record is missing: what the request says."""
    return new(
        req.job_id,
        created_at=req.created_at,
        now=now,
        agent=agent,
        source=req.source,
        event_type=req.event_type,
        project_id=req.project_id,
        project=req.project,
        callback_url=req.callback_url,
        parent_id=req.parent_id,
        schedule_id=req.schedule_id,
    )


def child(parent: JobRequest, child_id: str, agent: str, *, now: dt.datetime) -> JobRecord:
    """The first record of a job another job started (a fan-out's or a pipeline stage's child,
    a delegation): in the parent's project, no callback of its own."""
    return new(
        child_id,
        created_at=now,
        agent=agent,
        source=parent.source,
        event_type=parent.event_type,
        project_id=parent.project_id,
        project=parent.project,
        parent_id=parent.job_id,
    )


def move(record: JobRecord, status: JobStatus, **changes: Any) -> JobRecord:
    """``record`` in ``status`` with ``changes`` (``updated_at`` now unless given);
    IllegalTransition when its lifecycle does not go there."""
    if not allowed(record.status, status):
        raise IllegalTransition(record.job_id, record.status, status)
    changes.setdefault("updated_at", utcnow())
    return replace(record, status=status, **changes)


def start(
    record: JobRecord, *, attempt: int, now: dt.datetime, progress: int = 10, **changes: Any
) -> JobRecord:
    """Attempt ``attempt`` begins (queued, or processing on an executor that stopped)."""
    return move(
        record,
        PROCESSING,
        attempts=attempt,
        progress=progress,
        started_at=changes.pop("started_at", now),
        error=changes.pop("error", None),
        **changes,
    )


def requeue(
    record: JobRecord, *, attempts: int, error: str, now: dt.datetime | None = None, **changes: Any
) -> JobRecord:
    """A failed attempt that will be retried: back to queued, its error kept."""
    return move(
        record, QUEUED, progress=0, attempts=attempts, error=error, updated_at=now or utcnow(), **changes
    )


def finish(record: JobRecord, status: JobStatus, *, now: dt.datetime, **changes: Any) -> JobRecord:
    """The job's end: ``status`` is completed, failed, timeout or cancelled."""
    if status not in TERMINAL_STATUSES:
        raise IllegalTransition(record.job_id, record.status, status)
    return move(record, status, progress=100, finished_at=now, updated_at=now, **changes)


def progress(record: JobRecord, value: int, *, now: dt.datetime | None = None, **changes: Any) -> JobRecord:
    """Progress reported while the job runs (the status stays); ``changes``: what else the
    run reported meanwhile (its token usage)."""
    if record.terminal:
        raise IllegalTransition(record.job_id, record.status, record.status)
    return replace(record, progress=value, updated_at=now or utcnow(), **changes)
