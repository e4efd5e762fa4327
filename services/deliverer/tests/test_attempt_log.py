"""The attempt log's unawaited writes against a real nats-server: a new key, a key with
history, a deleted key, and a bucket that is not there."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from conveyor.deliverer.attempt_log import AttemptLog
from conveyor.shared.bus import Bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import DeliveryAttempt, DeliveryLog, utcnow
from conveyor.shared.testing.fixtures import eventually


def attempt(outcome: str) -> DeliveryAttempt:
    return DeliveryAttempt(
        at=utcnow(),
        url="https://example.com/hook",
        status_code=200 if outcome == "delivered" else 500,
        latency_ms=1.5,
        error=None if outcome == "delivered" else "HTTP 500",
        outcome=outcome,  # type: ignore[arg-type]
    )


async def started_log(
    nc: Client, js: JetStreamContext, bucket: str = subjects.KV_DELIVERIES, *, answer_timeout_s: float = 10.0
) -> AttemptLog:
    await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    conn = Bus(nc)  # the bus over the test's connection, as the service has its own
    await conn.start()
    return AttemptLog(await conn.kv(bucket), answer_timeout_s=answer_timeout_s)


async def gone_log(nc: Client, js: JetStreamContext, bucket: str, **kw: float) -> AttemptLog:
    """A log whose bucket's stream was deleted after the handle was made."""
    log = await started_log(nc, js, bucket, **kw)
    await js.delete_key_value(bucket)
    return log


async def outcomes(log: AttemptLog, key: str, want: list[str]) -> DeliveryLog:
    async def check() -> DeliveryLog:
        entry = await log.read(key)
        assert entry is not None and [a.outcome for a in entry.attempts] == want
        return entry

    return await eventually(check)


async def test_unawaited_create_new_key_then_existing_history_then_deleted_key(
    nc: Client, js: JetStreamContext
) -> None:
    log = await started_log(nc, js)

    # No log yet: created as kv.create would.
    await log.append_later("job_new", attempt("delivered"), known=False, entry=None)
    entry = await outcomes(log, "job_new", ["delivered"])
    assert entry.delivered

    # A replayed dead letter: the key has history, JetStream refuses the create, the record
    # is read and appended instead of lost or written over.
    await log.append("job_replayed", attempt("retry"), known=False, entry=None)
    await log.append(
        "job_replayed", attempt("dead_lettered"), known=True, entry=await log.read("job_replayed")
    )
    await log.append_later("job_replayed", attempt("delivered"), known=False, entry=None)
    entry = await outcomes(log, "job_replayed", ["retry", "dead_lettered", "delivered"])
    assert entry.delivered

    # A deleted key (a delete marker is its last value) is written again.
    await log.kv.delete("job_new")
    await log.append_later("job_new", attempt("skipped"), known=False, entry=None)
    await outcomes(log, "job_new", ["skipped"])

    await log.flush(timeout=5)
    assert not log._unanswered and not log._pending


async def test_unanswerable_record_is_logged_and_frees_its_slot(
    nc: Client, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    # Records aimed at a bucket no stream holds: "no responders", logged, never waited on forever.
    log = await gone_log(nc, js, "absent")
    log._slots = asyncio.Semaphore(1)
    with caplog.at_level(logging.WARNING, logger="conveyor.deliverer.attempt_log"):
        for n in range(3):  # one slot: each waits for the previous answer
            await log.append_later(f"job_{n}", attempt("delivered"), known=False, entry=None)
        await log.flush(timeout=5)
    assert not log._unanswered
    assert sum("could not record delivery attempt of job_" in r.getMessage() for r in caplog.records) == 3


async def test_record_without_answer_is_given_up(
    nc: Client, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    # Something takes the message but never answers (no stream, no 503): the record is given
    # up after the answer timeout, logged, and its slot is free again.
    log = await gone_log(nc, js, "silent", answer_timeout_s=0.2)
    silent = await nc.subscribe("$KV.silent.>")
    with caplog.at_level(logging.WARNING, logger="conveyor.deliverer.attempt_log"):
        await log.append_later("job_lost", attempt("delivered"), known=False, entry=None)
        await log.flush(timeout=5)
    assert not log._unanswered and log._slots._value == 1024  # type: ignore[attr-defined]
    assert any("job_lost: no answer in 0.2s" in r.getMessage() for r in caplog.records)
    await silent.unsubscribe()
