"""Schedules: every firing on ``schedules.fire.<id>`` becomes a normal job.

nats-server fires copies of a schedule's definition (a ``ScheduleFire``) onto
``schedules.fire.<id>``; the durable ``executor-scheduler`` consumer takes each copy:

1. The schedule's record (KV ``schedules``) decides. No record: nothing runs, and the
   definition is purged in case it outlived its record. Paused or ended: nothing. Fired before
   start_at: nothing (the server fires from the start; the window is ours to apply). Fired
   after end_at: the schedule ends (record "ended", definition purged).
   Overlap "skip" while the last run's job is queued or running: skipped. Then the firing is
   charged to the owner's API key (its per-minute and per-day limits, the same counters in KV
   ``ratelimits`` the receiver charges requests to); over either limit: skipped, recorded as
   last_outcome "rate_limited". A firing is charged once per handling, so only one redelivered
   after a crash between the charge and the record's write is charged twice.
2. The job id is derived from the schedule id and the copy's stream sequence, so a redelivered
   copy, or one two executors handle at once, names the same job.
3. The record takes the run first (last job, fire time, the server's next run), compare-and-set,
   so two firings can never both pass the overlap check. Then the job record is created
   "queued" (kv.create; one that exists is fine) and the JobRequest published on
   ``jobs.run.<agent>`` with Nats-Msg-Id = job id. A crash in between is repaired by the
   redelivery: the record already names this job, so the steps repeat without doubling.
4. The handled copy is deleted from the stream (nothing else reads it; unhandled copies expire
   after the FIRE_TTL the definition sets).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from msgspec.structs import replace
from prometheus_client import CollectorRegistry, Counter, Histogram

from conveyor.shared import bus
from conveyor.shared.bus import AckPolicy, ConsumerConfig, DeliverPolicy
from conveyor.shared.contracts import lifecycle, subjects
from conveyor.shared.contracts.errors import PermanentError, RetryableError
from conveyor.shared.contracts.events import JobIndexEntry, JobRequest, job_record_decoder, utcnow
from conveyor.shared.contracts.schedules import (
    FiringOutcome,
    ScheduleFire,
    ScheduleRecord,
    fire_job_id,
    parse_next,
    schedule_fire_decoder,
    schedule_record_decoder,
    window,
)
from conveyor.shared.domain.ratelimit import UNLIMITED, Decision, LimiterUnavailable, RateLimiter, hit_key
from conveyor.shared.runtime.logs import bound
from conveyor.shared.runtime.runner import Components, Runtime

log = logging.getLogger(__name__)

STAGE = "executor"
SOURCE = "schedule"  # JobRecord.source / JobRequest.source of scheduled jobs
OUTCOMES = ("run", "skipped_overlap", "rate_limited", "before_start", "ended", "paused", "deleted")
_WRITE_TRIES = 10
_encoder = msgspec.json.Encoder()


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.firings = Counter(
            "executor_schedule_firings",
            "Schedule firings handled, by outcome (run = a job was created).",
            ["outcome"],
            registry=registry,
        )
        self.lag = Histogram(
            "executor_schedule_firing_lag_seconds",
            "From the server firing a schedule to the executor taking the firing.",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.by_outcome = {o: self.firings.labels(o) for o in OUTCOMES}


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.SCHEDULER,
        filter_subject=subjects.SCHEDULE_FIRE_FILTER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30,
        max_deliver=10,
        max_ack_pending=1000,
    )


class Scheduler:
    def __init__(
        self,
        *,
        js: bus.Bus,
        schedules: bus.Kv,
        jobs: bus.Kv,
        limiter: RateLimiter,
        metrics: SchedulerMetrics,
    ) -> None:
        self.js = js
        self.schedules = schedules
        self.jobs = jobs
        self.limiter = limiter
        self.metrics = metrics

    async def handle(self, msg: bus.Delivery) -> None:
        schedule_id = msg.subject.removeprefix(subjects.SCHEDULE_FIRE_PREFIX)
        if not subjects.is_token(schedule_id):
            raise PermanentError(f"not a schedule firing subject: {msg.subject!r}")
        fire = schedule_fire_decoder.decode(msg.data)  # a bad body is dead-lettered by the consumer
        if fire.schedule_id != schedule_id:
            raise PermanentError(f"firing on {msg.subject} names schedule {fire.schedule_id!r}")
        seq = msg.stream_seq
        headers = msg.headers or {}
        next_header = headers.get(subjects.H_SCHEDULE_NEXT)
        job_id = fire_job_id(schedule_id, seq, next_header)
        fired_at = msg.timestamp
        self.metrics.lag.observe(max(0.0, (utcnow() - fired_at).total_seconds()))
        with bound(job=job_id, correlation=schedule_id):
            outcome = await self.decide(schedule_id, job_id, fired_at, parse_next(next_header))
            if outcome == "run":
                await self.start_job(fire, job_id, schedule_id)
            log.debug("schedule %s fired (seq %d): %s", schedule_id, seq, outcome)
        self.metrics.by_outcome[outcome].inc()
        with contextlib.suppress(Exception):  # only housekeeping: the copy expires anyway
            await self.js.delete_msg(subjects.SCHEDULES, seq)

    async def decide(
        self, schedule_id: str, job_id: str, fired_at: dt.datetime, next_at: dt.datetime | None
    ) -> str:
        """What this firing does, written into the schedule's record (compare-and-set)."""
        charged: Decision | None = None
        for _ in range(_WRITE_TRIES):
            found = await self._load(schedule_id)
            if found is None:
                await self._purge_definition(schedule_id)
                return "deleted"
            rec, revision = found
            if rec.last_job_id == job_id:
                return "run"  # taken by an earlier delivery of this same firing: finish it
            if rec.status != "active":
                return rec.status
            now = utcnow()
            where = window(rec, fired_at)
            if where == "after":
                ended = replace(rec, status="ended", ended_at=now, next_run_at=None, updated_at=now)
                if await self._write(schedule_id, ended, revision):
                    log.info("schedule %s ended (end_at %s)", schedule_id, rec.end_at)
                    await self._purge_definition(schedule_id)
                    return "ended"
                continue
            if where == "before":
                return "before_start"  # not recorded: a write per firing until start_at buys nothing
            if rec.overlap == "skip" and rec.last_job_id and await self._unfinished(rec.last_job_id):
                reason = f"previous run {rec.last_job_id} not finished"
                skip = _skip(rec, fired_at, next_at, reason, "skipped_overlap")
                if await self._write(schedule_id, skip, revision):
                    return "skipped_overlap"
                continue
            if charged is None:  # a write that lost its race decides again, on the same charge
                charged = await self._charge(rec)
            if not charged.allowed:
                per = "minute" if charged.limit == rec.owner_per_minute else "day"
                reason = f"API key {rec.owner} is over its limit of {charged.limit} per {per}"
                limited = _skip(rec, fired_at, next_at, reason, "rate_limited")
                if await self._write(schedule_id, limited, revision):
                    return "rate_limited"
                continue
            taken = replace(
                rec,
                last_job_id=job_id,
                last_run_at=fired_at,
                next_run_at=next_at,
                runs=rec.runs + 1,
                last_outcome="run",
                updated_at=now,
            )
            if await self._write(schedule_id, taken, revision):
                return "run"
        raise RetryableError(f"schedule {schedule_id}: the record kept changing")

    async def start_job(self, fire: ScheduleFire, job_id: str, schedule_id: str) -> None:
        """Queue the job the way the receiver queues an API job: record first, then the request."""
        now = utcnow()
        request = JobRequest(
            job_id=job_id,
            agent=fire.agent,
            created_at=now,
            source=SOURCE,
            prompt=fire.prompt,
            input=fire.input,
            project_id=fire.project_id,
            project=fire.project,
            callback_url=fire.callback_url,
            timeout_ms=fire.timeout_ms,
            schedule_id=schedule_id,
            correlation_id=schedule_id,
        )
        record = lifecycle.requested(request, now=now, agent=fire.agent)
        with contextlib.suppress(bus.Conflict):  # exists: a redelivery
            await self.jobs.create(job_id, _encoder.encode(record))
        # Listed with the project's jobs (GET /api/jobs); a redelivery's repeat entry is skipped
        # by the list (its time is not the record's).
        await self.js.publish(
            subjects.job_index(fire.project),
            _encoder.encode(JobIndexEntry.of(record)),
            stream=subjects.JOBINDEX,
        )
        await self.js.publish(
            subjects.job_run(fire.agent),
            _encoder.encode(request),
            stream=subjects.JOBS,
            msg_id=job_id,
            headers={
                subjects.H_JOB_ID: job_id,
                subjects.H_SCHEDULE_ID: schedule_id,
                subjects.H_CORRELATION_ID: schedule_id,
            },
        )

    async def _charge(self, rec: ScheduleRecord) -> Decision:
        """Charge one run to the owner's key; NATS trouble is retried like any other step."""
        try:
            decision = await hit_key(self.limiter, rec.owner, rec.owner_per_minute, rec.owner_per_day)
        except LimiterUnavailable as exc:
            raise RetryableError(f"schedule {rec.schedule_id}: the owner's limits: {exc}") from None
        return decision or UNLIMITED

    async def _load(self, schedule_id: str) -> tuple[ScheduleRecord, int] | None:
        try:
            entry = await self.schedules.get(schedule_id)
        except bus.NotFound:
            return None
        if not entry.value:
            return None
        return schedule_record_decoder.decode(entry.value), entry.revision or 0

    async def _write(self, schedule_id: str, record: ScheduleRecord, revision: int) -> bool:
        try:
            await self.schedules.update(schedule_id, _encoder.encode(record), last=revision)
        except bus.Conflict:
            return False  # changed meanwhile (the API, or another executor): decide again
        return True

    async def _unfinished(self, job_id: str) -> bool:
        try:
            entry = await self.jobs.get(job_id)
        except bus.NotFound:
            return False  # expired, or never queued: nothing is running
        return bool(entry.value) and not job_record_decoder.decode(entry.value).terminal

    async def _purge_definition(self, schedule_id: str) -> None:
        await self.js.purge(subjects.SCHEDULES, subject=subjects.schedule(schedule_id))


def _skip(
    rec: ScheduleRecord,
    fired_at: dt.datetime,
    next_at: dt.datetime | None,
    reason: str,
    outcome: FiringOutcome,
) -> ScheduleRecord:
    return replace(
        rec,
        skipped=rec.skipped + 1,
        last_skipped_at=fired_at,
        last_skip_reason=reason,
        last_outcome=outcome,
        next_run_at=next_at,
        updated_at=utcnow(),
    )


@contextlib.asynccontextmanager
async def scheduling(rt: Runtime[Any]) -> AsyncIterator[None]:
    """Declare the SCHEDULES stream and the schedules and ratelimits buckets, start the firing
    consumer."""
    settings = rt.settings
    kv = await rt.bus.declare(
        [subjects.SCHEDULES], [subjects.KV_SCHEDULES, subjects.KV_RATELIMITS], replicas=settings.nats_replicas
    )
    # Counted exactly: firings are too rare for slots claimed ahead to be used.
    limiter = RateLimiter(kv[subjects.KV_RATELIMITS], claim_ahead=False)
    scheduler = Scheduler(
        js=rt.bus,
        schedules=kv[subjects.KV_SCHEDULES],
        jobs=rt.kv[subjects.KV_JOBS],
        limiter=limiter,
        metrics=SchedulerMetrics(rt.registry),
    )
    await rt.consume(
        subjects.SCHEDULES,
        consumer_config(),
        scheduler.handle,
        stage=STAGE,
        concurrency=8,
        retry_base_s=settings.retry_base_ms / 1000,
        retry_cap_s=settings.retry_cap_ms / 1000,
    )
    try:
        yield
    finally:
        await limiter.close()


def with_scheduler(inner: Components) -> Components:
    """The executor's components plus the schedule consumer (entered after, left before them)."""

    @contextlib.asynccontextmanager
    async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
        async with inner(rt), scheduling(rt):
            yield

    return components
