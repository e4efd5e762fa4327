"""An executor killed with SIGKILL mid-job: the job completes on another executor, and
exactly one result is published. Both executors are real processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor.shared.contracts import subjects
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.procs import ServiceProcess, service_env


async def test_sigkill_mid_job_completes_on_the_other_executor_with_one_result(
    bus, nats_url: str, tmp_path: Path
) -> None:
    procs = {
        name: ServiceProcess(
            "executor",
            service_env(nats_url, ACK_WAIT_S="2", SERVICE_INSTANCE=name, LOG_FORMAT="text"),
            tmp_path / f"{name}.log",
        )
        for name in ("exec-a", "exec-b")
    }
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        job_id = await bus.job("sleep", {"ms": 3000})
        await bus.until(job_id, "processing")
        # The attempt's first log line (written just after "processing") names its executor.
        [first] = await eventually(lambda: bus.log_lines(job_id))
        victim = next(name for name in procs if f" on {name} " in first)
        await procs[victim].kill()

        rec = await bus.until(job_id, "completed", timeout=30)
        assert rec.attempts == 2
        lines = await bus.log_lines(job_id)
        survivor = next(name for name in procs if name != victim)
        assert any(f"attempt 2 of 3 on {survivor} " in line for line in lines), lines
        [result] = await bus.results(job_id)
        assert result.result.status == "completed"
        # Still one after the survivor settles everything.
        assert await procs[survivor].stop() == 0, procs[survivor].tail()
        assert len(await bus.results(job_id)) == 1
    finally:
        for p in procs.values():
            await p.kill()


async def test_sigkill_while_routing_instant_jobs_loses_none_and_doubles_none(
    bus, nats_url: str, tmp_path: Path
) -> None:
    """Instant agents' jobs run in the router, on the event's delivery. An executor SIGKILLed in
    the middle of a backlog of them: every event it held comes back to the other executor,
    every job ends completed, and each has exactly one result."""
    events: list[str] = []
    for _ in range(10):
        events += await asyncio.gather(
            *(bus.event("agent.task_requested", {"agent": "noop"}) for _ in range(300))
        )
    env = {"ACK_WAIT_S": "2", "LOG_FORMAT": "text"}
    victim = ServiceProcess(
        "executor", service_env(nats_url, SERVICE_INSTANCE="a", **env), tmp_path / "a.log"
    )
    survivor = ServiceProcess(
        "executor", service_env(nats_url, SERVICE_INSTANCE="b", **env), tmp_path / "b.log"
    )

    async def results_by_job() -> dict[str, int]:
        info = await bus.js.stream_info(subjects.RESULTS, subjects_filter="results.>")
        return {s.removeprefix("results."): n for s, n in (info.state.subjects or {}).items()}

    try:
        await victim.start(wait_ready=False)

        async def some_done_some_held() -> None:
            assert (await bus.js.stream_info(subjects.RESULTS)).state.messages >= 20
            # Killed while it holds events unacknowledged (not between two fetches).
            assert (await bus.js.consumer_info(subjects.EVENTS, subjects.ROUTER)).num_ack_pending > 0

        await eventually(some_done_some_held, interval=0.005)
        await victim.kill()
        # What the dead process held stays pending on the server until AckWait (2 s) ends.
        held = (await bus.js.consumer_info(subjects.EVENTS, subjects.ROUTER)).num_ack_pending
        assert held > 0
        assert (await bus.js.stream_info(subjects.RESULTS)).state.messages < len(events)  # work was left
        await survivor.start()

        async def all_done() -> dict[str, int]:
            found = await results_by_job()
            assert len(found) == len(events), len(found)
            # And every event settled: those the victim held (some with their job already
            # done and its result stored) came back after AckWait and were acknowledged.
            router = await bus.js.consumer_info(subjects.EVENTS, subjects.ROUTER)
            assert router.num_ack_pending == 0 and router.num_pending == 0, router
            return found

        found = await eventually(all_done, timeout=60)
        router = await bus.js.consumer_info(subjects.EVENTS, subjects.ROUTER)
        # Events the victim held came back: delivered again, on top of one delivery each.
        assert router.delivered.consumer_seq >= len(events) + held, (router.delivered, held)
        assert await survivor.stop() == 0, survivor.tail()
        found = await results_by_job()
        assert found == dict.fromkeys(events, 1)
        for job_id in events:
            assert (await bus.record(job_id)).status == "completed"
    finally:
        await victim.kill()
        await survivor.kill()
