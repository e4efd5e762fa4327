"""Request and response bodies of the HTTP API. Handlers decode and encode these, and
/openapi.json is generated from them, so the document cannot drift from the code."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from conveyor.shared.contracts.events import DeliveryAttempt, JobRecord, JobStatus

# $(?!\n), not \Z: the document shows the pattern, and JSON Schema's regexes have no \Z.
ProjectRef = Annotated[
    str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$(?!\n)", description="lower-case [a-z0-9_-], 1-63")
]
"""A Conveyor project named in a body (admin and organisation keys choose one; a project key's
own is the default)."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx/5xx: a code, a sentence, and the field at fault when there is one."""

    error: str
    message: str
    field: str | None = None
    job_status: str | None = None  # 409 on cancel: the status the job ended in
    limit: int | None = None  # 413: the byte limit


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """202 for a webhook or job: where to follow it. ``duplicate`` is true for a repeat delivery
    (same delivery id or Idempotency-Key), which names the first job and creates none."""

    job_id: str
    status_url: str
    stream_url: str
    duplicate: bool = False


class Ignored(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """202 for a verified webhook that is not run: its event type no route wants (ignored), or
    its project is disabled (disabled: enabling the project makes the next one run)."""

    status: Literal["ignored", "disabled"]
    event: str
    delivery_id: str
    project: str | None = None
    message: str | None = None


class JobCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/jobs."""

    agent: Annotated[str, Meta(min_length=1, max_length=128, description="One of the configured agents.")]
    prompt: Annotated[str, Meta(min_length=1, max_length=5000)]
    input: dict[str, Any] = {}
    callback_url: Annotated[str, Meta(max_length=2048)] | None = None
    project_id: Annotated[str, Meta(max_length=200)] | None = None
    timeout_ms: Annotated[int, Meta(ge=1000, le=86_400_000)] | None = None
    project: ProjectRef | None = None
    """The Conveyor project the job belongs to: a project key's own by default; admin and
    organisation keys name one (else the default project)."""


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A job in a list: its record without the result (GET /api/jobs/{id} has that)."""

    job_id: str
    status: JobStatus
    project: str
    source: str
    agent: str | None
    event_type: str | None
    progress: int
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    schedule_id: str | None
    children: list[str]

    @classmethod
    def of(cls, r: JobRecord) -> JobSummary:
        return cls(
            job_id=r.job_id,
            status=r.status,
            project=r.project,
            source=r.source,
            agent=r.agent,
            event_type=r.event_type,
            progress=r.progress,
            error=r.error,
            created_at=r.created_at,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
            schedule_id=r.schedule_id,
            children=r.children,
        )


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[JobSummary]
    next_cursor: int | None
    """Pass as ``cursor`` for the next page; null when the list reached the end."""


class JobPending(msgspec.Struct, frozen=True, kw_only=True):
    """202 from GET /api/jobs/{id}/result while the job has not finished."""

    job_id: str
    status: JobStatus
    progress: int


class CancelAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """202 for a cancel request: the executor stops the job (a queued one never starts)."""

    job_id: str
    status: JobStatus
    cancel_requested: bool = True


class TestSendCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/webhooks/test: ask the deliverer to send a signed test event to ``url``."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    project: ProjectRef | None = None
    """Whose callback secret signs the test event (admin and organisation keys; a project key's
    own by default)."""


class TestSendOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a test send (``pending`` until the deliverer has reported)."""

    id: str
    status: Literal["delivered", "failed", "pending"]
    status_url: str
    url: str | None = None
    attempts: list[DeliveryAttempt] = []


class KeyCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/admin/keys; limits default to API_KEY_PER_MINUTE / API_KEY_PER_DAY (0 = unlimited)."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]
    per_minute: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    per_day: Annotated[int, Meta(ge=0, le=100_000_000)] | None = None
    admin: bool = False
    """Same as scope "admin"."""
    scope: Literal["admin", "org", "project"] | None = None
    """What the key reaches: everything, one organisation's projects, or one project (default:
    the project named by ``project_id``, else the default project)."""
    org_id: Annotated[str, Meta(max_length=63)] | None = None
    project_id: Annotated[str, Meta(max_length=63)] | None = None
    read_only: bool = False


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    name: str
    prefix: str
    admin: bool
    per_minute: int
    per_day: int
    revoked: bool
    created_at: dt.datetime
    scope: Literal["admin", "org", "project"] = "project"
    org_id: str | None = None
    project_id: str | None = None
    read_only: bool = False


class KeyCreated(KeyView, frozen=True, kw_only=True):
    """The only answer that ever contains the key itself."""

    key: str


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    keys: list[KeyView]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """GET /health: 200 while NATS is connected, 503 (status degraded) otherwise."""

    status: Literal["ok", "degraded"]
    uptime: float  # seconds
    queue_depth: int | None  # jobs waiting in the JOBS work queue; null while NATS is unreachable
    nats_connected: bool
    instance: str


class AgentHealth(msgspec.Struct, frozen=True, kw_only=True):
    """GET /health/agent, from the most recent job records (``sample_size`` of them)."""

    agents_available: list[str]
    workers_waiting: int | None  # executor pull requests waiting for work: > 0 means idle workers
    last_execution: dt.datetime | None
    error_rate: float | None  # failed or timed out / finished, over the sample
    sample_size: int


class LovableHealth(msgspec.Struct, frozen=True, kw_only=True):
    last_webhook_received: dt.datetime | None
    secret_configured: bool
    callback_url_configured: bool


class Live(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ready", "not_ready"]
    nats_connected: bool | None = None
    instance: str | None = None
