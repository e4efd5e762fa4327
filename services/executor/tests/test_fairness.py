"""Fairness between projects: a project runs at most ``max_running`` jobs at once across every
executor, a project that floods the queue does not hold up another's job, and the slots of a
SIGKILLed executor come back. Real nats-server; executors as real processes where there are two."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import httpx

from conveyor.executor.service import SPEC
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobRecord
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.procs import ServiceProcess, service_env


def peak(records: Iterable[JobRecord]) -> int:
    """The most jobs running at once, from the records' started_at/finished_at (an end and a
    start at the same instant do not overlap)."""
    events: list[tuple[dt.datetime, int]] = []
    for r in records:
        assert r.started_at is not None and r.finished_at is not None, r
        events += [(r.started_at, 1), (r.finished_at, -1)]
    running = most = 0
    for _, step in sorted(events):
        running += step
        most = max(most, running)
    return most


def executors(nats_url: str, tmp_path: Path, *names: str, **env: str) -> dict[str, ServiceProcess]:
    return {
        name: ServiceProcess(
            "executor",
            service_env(nats_url, SERVICE_INSTANCE=name, LOG_FORMAT="text", **env),
            tmp_path / f"{name}.log",
        )
        for name in names
    }


async def metric(port: int, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def test_a_flooding_project_keeps_to_its_limit_and_another_projects_job_starts_at_once(
    bus, nats_url: str, tmp_path: Path
) -> None:
    await bus.project("flood", max_running=4)
    procs = executors(nats_url, tmp_path, "exec-a", "exec-b")
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        flood = [await bus.job("sleep", {"ms": 200}, project="flood") for _ in range(300)]
        enqueued = dt.datetime.now(dt.UTC)
        other = await bus.job("sleep", {"ms": 200}, project="other")
        rec = await bus.until(other, "completed", timeout=30)
        assert rec.started_at is not None
        waited = (rec.started_at - enqueued).total_seconds()
        assert waited < 1.0, f"the other project's job waited {waited:.2f} s behind the flood"

        async def all_done() -> list[JobRecord]:
            found = [await bus.record(j) for j in flood]
            assert all(r.status == "completed" for r in found), sum(r.status != "completed" for r in found)
            return found

        records = await eventually(all_done, timeout=120, interval=1.0)
        # The flood had not run when the other job started: most of it was still queued.
        later = [r for r in records if r.started_at is not None and r.started_at > rec.started_at]
        assert len(later) > 0, "the flood had already run"
        assert peak(records) == 4, "the flood ran more (or fewer) than its 4 at once"
        assert all(r.attempts == 1 for r in records)
        # Every job published exactly one result: nothing lost, nothing twice.
        assert (await bus.js.stream_info(subjects.RESULTS)).state.messages == 301
        for p in procs.values():
            assert await p.stop() == 0, p.tail()
    finally:
        for p in procs.values():
            await p.kill()


async def test_another_projects_job_does_not_wait_behind_a_backlog_of_a_limited_project(
    bus, nats_url: str, tmp_path: Path
) -> None:
    """The flood is all in the shared queue, ahead of the other job, before any executor runs."""
    await bus.project("flood", max_running=4)
    flood = [await bus.job("sleep", {"ms": 200}, project="flood") for _ in range(100)]
    other = await bus.job("sleep", {"ms": 200}, project="other")
    procs = executors(nats_url, tmp_path, "exec-a", "exec-b")
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        rec = await bus.until(other, "completed", timeout=30)
        records = [await bus.until(j, "completed", timeout=60) for j in flood]
        began = min(r.started_at for r in records if r.started_at is not None)
        assert rec.started_at is not None
        waited = (rec.started_at - began).total_seconds()
        assert waited < 1.0, f"the other project's job started {waited:.2f} s after the flood began"
        later = [r for r in records if r.started_at is not None and r.started_at > rec.started_at]
        assert len(later) > 0, "the flood had already run"
        assert peak(records) <= 4
    finally:
        for p in procs.values():
            await p.kill()


async def test_the_slots_of_a_sigkilled_executor_come_back(bus, nats_url: str, tmp_path: Path) -> None:
    await bus.project("tight", max_running=2)
    procs = executors(nats_url, tmp_path, "exec-x", "exec-y", ACK_WAIT_S="2")
    try:
        await procs["exec-x"].start()
        jobs = [await bus.job("sleep", {"ms": 6000}, project="tight") for _ in range(4)]

        async def running() -> list[str]:
            records = [await bus.record(j) for j in jobs]
            return [r.job_id for r in records if r.status == "processing"]

        async def two_running() -> list[str]:
            found = await running()
            assert len(found) == 2, found
            return found

        on_x = await eventually(two_running)
        # Only now a second executor; then the first dies holding both of the project's slots.
        # The second can run the project's jobs only once those slots expire with AckWait.
        await procs["exec-y"].start()
        assert await running() == on_x  # still running on exec-x: its slots are held
        await procs["exec-x"].kill()
        records = [await bus.until(j, "completed", timeout=60) for j in jobs]
        assert {r.job_id: r.attempts for r in records if r.attempts == 2} == dict.fromkeys(on_x, 2)
        assert peak(records) <= 2
        late = await bus.job("sleep", {"ms": 10}, project="tight")
        await bus.until(late, "completed")
        for j in [*jobs, late]:
            assert len(await bus.results(j)) == 1
        assert await procs["exec-y"].stop() == 0, procs["exec-y"].tail()
    finally:
        for p in procs.values():
            await p.kill()


async def test_a_changed_limit_applies_to_the_jobs_already_waiting(bus, make_settings) -> None:
    await bus.project("p", max_running=1)
    async with serve(SPEC, make_settings()) as rt:
        jobs = [await bus.job("sleep", {"ms": 800}, project="p") for _ in range(5)]
        first = await eventually(lambda: _one_processing(bus, jobs))
        await bus.project("p", max_running=3)

        async def widened() -> None:
            info = await bus.js.consumer_info(subjects.JOBS, subjects.limited_consumer("p"))
            assert info.config.max_ack_pending == 3

        await eventually(widened)
        records = [await bus.until(j, "completed") for j in jobs]
        rest = [r for r in records if r.job_id != first]
        assert peak(records) <= 3 and peak(rest) == 3
        hopped = await metric(rt.http_port, "executor_jobs_limited_total")
        assert hopped == 5

        # No limit any more: the project's jobs take the shared queue, and its own is let go.
        await bus.project("p", max_running=0)

        async def let_go() -> None:
            assert await metric(rt.http_port, "executor_limited_projects") == 0

        await eventually(let_go)
        unlimited = await bus.job("sleep", {"ms": 10}, project="p")
        await bus.until(unlimited, "completed")
        assert await metric(rt.http_port, "executor_jobs_limited_total") == hopped


async def _one_processing(bus, jobs: list[str]) -> str:
    records = [await bus.record(j) for j in jobs]
    running = [r.job_id for r in records if r.status == "processing"]
    assert len(running) == 1 and all(r.status == "queued" for r in records if r.job_id not in running)
    return running[0]


async def test_jobs_without_a_limit_are_not_moved(bus, make_settings) -> None:
    await bus.project("free", max_running=0)
    await bus.project("capped", max_running=2)
    async with serve(SPEC, make_settings()) as rt:
        plain = await bus.job("noop")
        free = await bus.job("noop", project="free")
        unknown = await bus.job("no-such-agent", project="capped")
        await bus.until(plain, "completed")
        await bus.until(free, "completed")
        # An agent nobody has ends at once, limit or not: nothing of the project would run.
        assert "unknown agent" in ((await bus.until(unknown, "failed")).error or "")
        assert await metric(rt.http_port, "executor_jobs_limited_total") == 0
        info = await bus.js.stream_info(subjects.JOBS, subjects_filter=subjects.LIMITED_JOBS_FILTER)
        assert not info.state.subjects
