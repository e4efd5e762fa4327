"""An executor killed with SIGKILL mid-job: the job completes on another executor, and
exactly one result is published. Both executors are real processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
