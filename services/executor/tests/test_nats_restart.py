"""The executor outlives a NATS restart: jobs run again, and cancels still reach running jobs
(the cancel watch is an ephemeral consumer the restart loses; the executor watches again)."""

from __future__ import annotations

from conveyor.executor.service import SPEC
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer, start_nats_server


async def test_jobs_and_cancels_work_after_nats_restarts(
    nats_server: NatsServer, nc, bus, make_settings
) -> None:
    async with serve(SPEC, make_settings(shutdown_grace_s=0.5)) as rt:
        await nats_server.stop()
        again = await start_nats_server(nats_server.store_dir, port=nats_server.port)
        try:

            async def reconnected() -> None:
                assert rt.connected and nc.is_connected  # the service's and the test's (bus.js)

            await eventually(reconnected, timeout=15)
            job_id = await eventually(lambda: bus.job("sleep", {"ms": 60_000}), timeout=10)
            await bus.until(job_id, "processing")
            await bus.cancel(job_id)
            await bus.until(job_id, "cancelled", timeout=15)
            done = await bus.job("qa", {"files": {"a.py": "x = 1\n"}})
            await bus.until(done, "completed")
        finally:
            await rt.bus.close(drain_s=0)
            await again.stop()
