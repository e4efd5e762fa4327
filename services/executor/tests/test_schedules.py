"""Schedule firings -> jobs, in an executor on a real nats-server whose own message scheduler
fires the definitions: jobs with their own ids, overlap policies, the window, paused and deleted
schedules, firings charged to the owner's key limits, a firing handled twice, and a firing that
cannot be read."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import nats.js.errors
from msgspec.structs import replace
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from conveyor.executor.config import AgentConfig, Settings
from conveyor.executor.handlers.scheduler import Scheduler, SchedulerMetrics
from conveyor.executor.service import SPEC
from conveyor.shared.bus import Bus, Delivery
from conveyor.shared.bus.streams import ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobRecord, job_record_decoder
from conveyor.shared.contracts.schedules import (
    ScheduleRecord,
    definition_headers,
    fire_job_id,
    schedule_record_decoder,
)
from conveyor.shared.domain.ratelimit import RateLimiter
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually

enc = msgspec.json.Encoder()
CALLBACK = "http://127.0.0.1:9/callback"
FILES = {"app/main.py": "import os\n\ndef main():\n    return 1\n"}
# Takes longer than the interval, so runs overlap unless the schedule skips.
SLOW = AgentConfig(
    name="slow",
    backend="command",
    command=["sh", "-c", 'cat >/dev/null; sleep 2.5; echo \'{"summary": "slow and done"}\''],
    retries=0,
)


class Schedules:
    """Schedules written the way the receiver writes them: record in KV, then the definition."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, jobs: KeyValue) -> None:
        self.js, self.kv, self.jobs = js, kv, jobs

    async def add(self, agent: str = "qa", *, arm: bool = True, **kw: Any) -> ScheduleRecord:
        now = dt.datetime.now(dt.UTC)
        values: dict[str, Any] = {
            "schedule_id": f"sch_{uuid.uuid4().hex[:16]}",
            "owner": "key_test",
            "status": "active",
            "agent": agent,
            "callback_url": CALLBACK,
            "pattern": "@every 1s",
            "every_s": 1,
            "created_at": now,
            "updated_at": now,
            "armed_at": now,
            "input": msgspec.Raw(enc.encode({"files": FILES})),
            **kw,
        }
        record = ScheduleRecord(**values)
        await self.kv.put(record.schedule_id, enc.encode(record))
        if arm:
            await self.arm(record)
        return record

    async def arm(self, record: ScheduleRecord) -> None:
        await self.js.publish(
            subjects.schedule(record.schedule_id),
            enc.encode(record.fire()),
            stream=subjects.SCHEDULES,
            headers=definition_headers(record),
        )

    async def disarm(self, schedule_id: str) -> None:
        await self.js.purge_stream(subjects.SCHEDULES, subject=subjects.schedule(schedule_id))

    async def get(self, schedule_id: str) -> ScheduleRecord:
        entry = await self.kv.get(schedule_id)
        assert entry.value is not None
        return schedule_record_decoder.decode(entry.value)

    async def armed(self, schedule_id: str) -> bool:
        try:
            await self.js.get_last_msg(subjects.SCHEDULES, subjects.schedule(schedule_id))
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def jobs_of(self, schedule_id: str) -> list[JobRecord]:
        try:
            keys = await self.jobs.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for key in keys:
            entry = await self.jobs.get(key)
            if entry.value:
                rec = job_record_decoder.decode(entry.value)
                if rec.schedule_id == schedule_id:
                    out.append(rec)
        return out


async def schedules_for(js: JetStreamContext, bus: Any) -> Schedules:
    await ensure_streams(js, [subjects.SCHEDULES, subjects.JOBINDEX])
    kv = await ensure_kv(js, [subjects.KV_SCHEDULES])
    return Schedules(js, kv[subjects.KV_SCHEDULES], bus.jobs)


async def metric(port: int, outcome: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    line = f'executor_schedule_firings_total{{outcome="{outcome}"}} '
    return float(next(ln for ln in text.splitlines() if ln.startswith(line)).split()[-1])


async def test_every_second_makes_jobs_that_finish_with_results(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    s = await schedules_for(js, bus)
    async with serve(SPEC, make_settings()) as rt:
        sched = await s.add("qa", prompt="nightly qa", overlap="allow")

        async def three_done() -> list[JobRecord]:
            done = [j for j in await s.jobs_of(sched.schedule_id) if j.status == "completed"]
            assert len(done) >= 3
            return done

        done = await eventually(three_done, timeout=15)
        await s.disarm(sched.schedule_id)
        assert len({j.job_id for j in done}) == len(done)
        for job in done:
            assert job.source == "schedule" and job.agent == "qa" and job.callback_url == CALLBACK
            result = await bus.one_result(job.job_id)
            assert result.callback_url == CALLBACK and result.source == "schedule"
            assert result.result.status == "completed" and result.result.agent_id == "qa"
            assert "'os' imported but unused" in " ".join(result.result.result.suggestions)

        async def recorded() -> ScheduleRecord:
            rec = await s.get(sched.schedule_id)
            assert rec.runs == len(await s.jobs_of(sched.schedule_id)) and rec.runs >= 3
            return rec

        rec = await eventually(recorded)
        assert rec.last_job_id in {j.job_id for j in await s.jobs_of(sched.schedule_id)}
        assert rec.last_run_at is not None and rec.next_run_at is not None
        # The server's Nats-Schedule-Next of the last firing: the tick one interval later.
        assert rec.next_run_at - rec.last_run_at <= dt.timedelta(seconds=2)
        assert rec.next_run_at.microsecond == 0 and rec.skipped == 0

        # Handled copies are deleted: the stream keeps nothing that was fired and taken.
        async def emptied() -> None:
            info = await js.stream_info(
                subjects.SCHEDULES, subjects_filter=subjects.schedule_fire(sched.schedule_id)
            )
            assert not info.state.subjects

        await eventually(emptied)
        assert await metric(rt.http_port, "run") == rec.runs


async def test_overlap_skip_runs_one_at_a_time_and_allow_runs_them_together(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    s = await schedules_for(js, bus)
    async with serve(SPEC, make_settings(SLOW)):
        skip = await s.add("slow", overlap="skip")
        allow = await s.add("slow", overlap="allow")

        async def skipping() -> ScheduleRecord:
            rec = await s.get(skip.schedule_id)
            assert rec.skipped >= 2 and rec.runs >= 1
            return rec

        async def overlapping() -> None:
            jobs = await s.jobs_of(allow.schedule_id)
            assert sum(not j.terminal for j in jobs) >= 2

        rec, _ = await asyncio.gather(eventually(skipping, timeout=15), eventually(overlapping, timeout=15))
        await asyncio.gather(s.disarm(skip.schedule_id), s.disarm(allow.schedule_id))
        assert rec.last_skip_reason is not None and "not finished" in rec.last_skip_reason
        # Skipping: each run started only after the one before it had ended.
        jobs = sorted(await s.jobs_of(skip.schedule_id), key=lambda j: j.created_at)
        for before, after in itertools.pairwise(jobs):
            assert before.finished_at is not None and before.finished_at <= after.created_at


async def test_paused_deleted_and_windowed_schedules_run_nothing(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    s = await schedules_for(js, bus)
    now = dt.datetime.now(dt.UTC)
    async with serve(SPEC, make_settings()) as rt:
        paused = await s.add("qa")
        await s.kv.put(paused.schedule_id, enc.encode(replace(paused, status="paused")))
        orphan = await s.add("qa")
        await s.kv.delete(orphan.schedule_id)
        later = await s.add("qa", start_at=now + dt.timedelta(days=1))
        over = await s.add("qa", end_at=now - dt.timedelta(seconds=1))

        async def settled() -> None:
            assert not await s.armed(orphan.schedule_id)  # a definition without its record is purged
            assert not await s.armed(over.schedule_id)  # past end_at: the schedule ends
            assert (await s.get(over.schedule_id)).status == "ended"
            assert await metric(rt.http_port, "before_start") >= 2
            assert await metric(rt.http_port, "paused") >= 2

        await eventually(settled, timeout=15)
        await asyncio.gather(s.disarm(paused.schedule_id), s.disarm(later.schedule_id))
        for sched in (paused, orphan, later, over):
            assert await s.jobs_of(sched.schedule_id) == []
        rec = await s.get(later.schedule_id)
        assert rec.status == "active" and rec.runs == 0 and rec.last_job_id is None
        assert (await s.get(over.schedule_id)).ended_at is not None
        assert await metric(rt.http_port, "run") == 0


async def test_a_firing_handled_twice_makes_one_job(js: JetStreamContext, bus: Any, nats_bus: Bus) -> None:
    s = await schedules_for(js, bus)
    sched = await s.add("qa", overlap="allow", owner="key_twice", owner_per_minute=10)
    sub = await js.pull_subscribe(
        subjects.schedule_fire(sched.schedule_id),
        durable="test-fires",
        stream=subjects.SCHEDULES,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )

    async def one() -> Any:
        msgs = await sub.fetch(1, timeout=1)
        return msgs[0]

    try:
        msg = await eventually(one, timeout=10)
    finally:
        await s.disarm(sched.schedule_id)
        await sub.unsubscribe()
    limits = (await ensure_kv(js, [subjects.KV_RATELIMITS]))[subjects.KV_RATELIMITS]
    scheduler = Scheduler(
        js=nats_bus,
        schedules=await nats_bus.kv(subjects.KV_SCHEDULES),
        jobs=await nats_bus.kv(subjects.KV_JOBS),
        limiter=RateLimiter(await nats_bus.kv(subjects.KV_RATELIMITS), claim_ahead=False),
        metrics=SchedulerMetrics(CollectorRegistry()),
    )
    # A redelivery, and two executors taking the same copy at once.
    await scheduler.handle(Delivery(msg))
    await asyncio.gather(scheduler.handle(Delivery(msg)), scheduler.handle(Delivery(msg)))

    job_id = fire_job_id(
        sched.schedule_id, msg.metadata.sequence.stream, msg.headers[subjects.H_SCHEDULE_NEXT]
    )
    jobs = await s.jobs_of(sched.schedule_id)
    assert [j.job_id for j in jobs] == [job_id] and jobs[0].status == "queued"
    rec = await s.get(sched.schedule_id)
    assert rec.runs == 1 and rec.last_job_id == job_id
    info = await js.stream_info(subjects.JOBS)
    assert info.state.messages == 1  # the JobRequest's Nats-Msg-Id dropped the repeats
    request = await js.get_last_msg(subjects.JOBS, subjects.job_run("qa"))
    assert request.headers is not None and request.headers[subjects.MSG_ID] == job_id
    assert request.headers[subjects.H_SCHEDULE_ID] == sched.schedule_id
    # The run was charged to the owner once: the repeats found it taken.
    assert (await limits.get("k.key_twice.m")).value.split()[1] == b"1"


async def counter(js: JetStreamContext, key: str) -> int:
    """The count in KV ratelimits under ``key`` (the receiver's format: "<window start ms> <count>")."""
    kv = (await ensure_kv(js, [subjects.KV_RATELIMITS]))[subjects.KV_RATELIMITS]
    try:
        return int((await kv.get(key)).value.split()[1])
    except nats.js.errors.KeyNotFoundError:
        return 0


async def test_firings_are_charged_to_the_owners_key_and_skipped_over_its_limit(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    s = await schedules_for(js, bus)
    async with serve(SPEC, make_settings()) as rt:
        sched = await s.add("qa", overlap="allow", owner="key_limited", owner_per_minute=3, owner_per_day=100)

        async def limited() -> ScheduleRecord:
            rec = await s.get(sched.schedule_id)
            assert rec.last_outcome == "rate_limited" and rec.skipped >= 2
            return rec

        rec = await eventually(limited, timeout=15)
        await s.disarm(sched.schedule_id)
        # Three runs, the minute's budget, and no more: every later firing was skipped.
        assert rec.runs == 3 and len(await s.jobs_of(sched.schedule_id)) == 3
        assert rec.last_skip_reason == "API key key_limited is over its limit of 3 per minute"
        assert rec.last_skipped_at is not None and rec.last_run_at is not None
        assert rec.last_skipped_at > rec.last_run_at
        # The receiver's counters for the key: what its requests are counted on too.
        assert await counter(js, "k.key_limited.m") == 3

        # As for a request: a firing the minute refuses still counts in the day.
        async def day_counts_every_firing() -> None:
            rec = await s.get(sched.schedule_id)
            assert await counter(js, "k.key_limited.d") == rec.runs + rec.skipped
            assert await metric(rt.http_port, "rate_limited") == rec.skipped

        await eventually(day_counts_every_firing)
        assert await metric(rt.http_port, "run") == 3


async def test_a_key_spent_on_requests_runs_no_firing(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    """The owner used its day's budget on API requests (the receiver's counter): its schedule's
    firings are skipped; an unlimited owner's (the admin key) run."""
    s = await schedules_for(js, bus)
    kv = (await ensure_kv(js, [subjects.KV_RATELIMITS]))[subjects.KV_RATELIMITS]
    await kv.put("k.key_spent.d", f"{int(time.time() * 1000)} 50".encode())
    async with serve(SPEC, make_settings()):
        spent = await s.add("qa", overlap="allow", owner="key_spent", owner_per_minute=60, owner_per_day=50)
        free = await s.add("qa", overlap="allow", owner="admin")

        async def settled() -> None:
            assert (await s.get(spent.schedule_id)).skipped >= 2
            assert (await s.get(free.schedule_id)).runs >= 2

        await eventually(settled, timeout=15)
        await asyncio.gather(s.disarm(spent.schedule_id), s.disarm(free.schedule_id))
        rec = await s.get(spent.schedule_id)
        assert rec.runs == 0 and await s.jobs_of(spent.schedule_id) == []
        assert rec.last_outcome == "rate_limited" and rec.last_skip_reason is not None
        assert rec.last_skip_reason.endswith("limit of 50 per day")
        assert (await s.get(free.schedule_id)).last_outcome == "run"


async def test_an_unreadable_firing_is_dead_lettered(
    js: JetStreamContext, bus: Any, make_settings: Callable[..., Settings]
) -> None:
    await schedules_for(js, bus)
    async with serve(SPEC, make_settings()):
        await js.publish(subjects.schedule_fire("sch_broken"), b"not json", stream=subjects.SCHEDULES)

        async def dead() -> Any:
            return await js.get_last_msg(subjects.DLQ, "dlq.executor.schedules.fire.sch_broken")

        letter = await eventually(dead, timeout=10)
        assert letter.data == b"not json"
        assert letter.headers is not None and letter.headers[subjects.H_STAGE] == "executor"
