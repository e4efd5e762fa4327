"""NATS stopped mid-test: writes answer 503 with Retry-After (never 202), reads degrade to a
clear 503, and the receiver recovers by itself when NATS comes back on the same port."""

from __future__ import annotations

import httpx

from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer, start_nats_server
from conveyor.shared.testing.procs import ServiceProcess, free_port, service_env


async def test_outage_and_recovery(nats_server: NatsServer, start_receiver, new_key, lovable) -> None:
    async with start_receiver(retry_after_s=3) as r:
        key = await new_key(r)
        h = {"Authorization": f"Bearer {key}"}
        job = (await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=h)).json()

        async def webhook() -> int:
            body = lovable.body()
            return (
                await r.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
            ).status_code

        assert await webhook() == 202
        await nats_server.stop()
        restarted: NatsServer | None = None
        try:

            async def refused() -> None:
                assert not r.rt.connected
                body = lovable.body()
                resp = await r.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
                assert resp.status_code == 503
                assert resp.headers["Retry-After"] == "3"
                assert resp.json()["error"] == "unavailable"

            await eventually(refused, timeout=15)

            resp = await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=h)
            assert (resp.status_code, resp.json()["error"]) == (503, "unavailable")
            assert resp.headers["Retry-After"] == "3"
            resp = await r.http.get(job["status_url"], headers=h)
            assert (resp.status_code, resp.json()["error"]) == (503, "unavailable")
            assert "NATS" in resp.json()["message"]
            health = await r.http.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "degraded" and health.json()["nats_connected"] is False
            assert (await r.http.get("/health/ready")).status_code == 503
            assert (await r.http.get("/health/live")).status_code == 200

            restarted = await start_nats_server(nats_server.store_dir, port=nats_server.port)

            async def recovered() -> None:
                assert await webhook() == 202

            await eventually(recovered, timeout=30, interval=0.2)
            resp = await r.http.get(job["status_url"], headers=h)
            assert resp.status_code == 200 and resp.json()["status"] == "queued"
            assert (await r.http.get("/health")).json()["status"] == "ok"
            # Only the two webhooks answered 202 are in the stream: nothing refused got in.
            assert (await r.http.get("/health")).json()["queue_depth"] == 1
            events = await r.rt.bus.stream_state("EVENTS")
            assert events.messages == 2
        finally:
            if restarted is not None:
                await restarted.stop()


async def test_started_before_nats_answers_503_then_serves(tmp_path, lovable) -> None:
    port = free_port()
    env = service_env(
        f"nats://127.0.0.1:{port}", LOVABLE_WEBHOOK_SECRET="lovable-test-secret", LOG_LEVEL="WARNING"
    )
    proc = ServiceProcess("receiver", env, tmp_path / "receiver.log")
    await proc.start(wait_ready=False)
    server: NatsServer | None = None
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:

            async def live() -> None:
                assert (await http.get("/health/live")).status_code == 200

            await eventually(live, timeout=20)
            assert (await http.get("/health/ready")).status_code == 503
            body = lovable.body()
            resp = await http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
            assert resp.status_code == 503 and "Retry-After" in resp.headers

            server = await start_nats_server(tmp_path / "js", port=port)
            await proc.wait_ready(timeout=30)
            resp = await http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
            assert resp.status_code == 202, resp.text
    finally:
        await proc.stop()
        if server is not None:
            await server.stop()
