"""A job's record moves only as its lifecycle says: queued -> processing -> an end, a retry
back to queued, and nothing after the end."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from conveyor.shared.contracts import lifecycle
from conveyor.shared.contracts.events import TERMINAL_STATUSES, JobRecord

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
STATUSES = ["queued", "processing", *sorted(TERMINAL_STATUSES)]


def queued() -> JobRecord:
    return lifecycle.new("job_1", created_at=T0, agent="qa", source="api", project="p")


def test_a_job_runs_retries_and_ends() -> None:
    rec = queued()
    assert (rec.status, rec.created_at, rec.updated_at, rec.attempts) == ("queued", T0, T0, 0)
    later = T0 + dt.timedelta(seconds=1)
    rec = lifecycle.start(rec, attempt=1, now=later, agent="qa", backend="builtin")
    assert (rec.status, rec.attempts, rec.progress, rec.started_at) == ("processing", 1, 10, later)
    rec = lifecycle.progress(rec, 50)
    assert (rec.status, rec.progress) == ("processing", 50)
    rec = lifecycle.requeue(rec, attempts=1, error="attempt 1 failed")
    assert (rec.status, rec.progress, rec.error) == ("queued", 0, "attempt 1 failed")
    rec = lifecycle.start(rec, attempt=2, now=later)
    assert rec.error is None  # a new attempt starts clean
    end = later + dt.timedelta(seconds=2)
    rec = lifecycle.finish(rec, "completed", now=end)
    assert (rec.status, rec.progress, rec.finished_at, rec.updated_at) == ("completed", 100, end, end)


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(STATUSES, STATUSES)))
def test_only_the_drawn_transitions_are_allowed(current: str, wanted: str) -> None:
    rec = lifecycle.new("job_1", created_at=T0)
    rec = JobRecord(**{**{f: getattr(rec, f) for f in rec.__struct_fields__}, "status": current})
    expected = {
        "queued": {"queued", "processing", "completed", "failed", "cancelled"},
        "processing": {"queued", "processing", *TERMINAL_STATUSES},
    }.get(current, set())
    if wanted in expected:
        assert lifecycle.move(rec, wanted).status == wanted  # type: ignore[arg-type]
    else:
        with pytest.raises(lifecycle.IllegalTransition):
            lifecycle.move(rec, wanted)  # type: ignore[arg-type]


def test_an_ended_job_never_moves_again() -> None:
    done = lifecycle.finish(queued(), "cancelled", now=T0, error="cancelled by request")
    for step in (
        lambda: lifecycle.start(done, attempt=1, now=T0),
        lambda: lifecycle.requeue(done, attempts=1, error="x"),
        lambda: lifecycle.finish(done, "completed", now=T0),
        lambda: lifecycle.progress(done, 50),
    ):
        with pytest.raises(lifecycle.IllegalTransition):
            step()


def test_finish_takes_only_an_end() -> None:
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.finish(queued(), "processing", now=T0)
