"""The first path, end to end, with every service as a real process.

webhook (signed) -> receiver -> EVENTS -> executor (router, worker) -> RESULTS -> deliverer
-> a real HTTP callback sink; and the same for POST /api/jobs with an API key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.shared.domain.signing import lovable_sign, standard_verify
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink as Sink

SECRET = "e2e-webhook-secret"
SIGNING = "whsec_ZTJlLWNhbGxiYWNrLXNpZ25pbmcta2V5"
ADMIN = "e2e-admin-key"


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    yield s
    await s.stop()


@pytest.fixture
def fast_paths() -> str:
    """CONVEYOR_FAST_PATHS for the services (the bus's fast paths: on unless a test says)."""
    return "1"


@pytest.fixture
async def system(
    nats_server: NatsServer, sink: Sink, tmp_path: Path, fast_paths: str
) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = service_env(
        nats_server.url,
        CONVEYOR_FAST_PATHS=fast_paths,
        LOVABLE_WEBHOOK_SECRET=SECRET,
        LOVABLE_CALLBACK_URL=sink.url,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_SIGNING_SECRETS=SIGNING,
        ADMIN_API_KEY=ADMIN,
        DATA_DIR=str(tmp_path / "deployer"),
    )
    procs = {
        name: ServiceProcess(name, env, tmp_path / "logs" / f"{name}.log")
        for name in ("receiver", "executor", "deliverer", "deployer")
    }
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        yield procs
    finally:
        codes = await asyncio.gather(*(p.stop() for p in procs.values()))
        # A clean drain exits 0: nothing was killed by the stop deadline.
        assert list(codes) == [0, 0, 0, 0], {n: p.tail() for n, p in procs.items()}


def signed_lovable(body: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    ts = int(time.time())
    return raw, {
        "Content-Type": "application/json",
        "X-Lovable-Timestamp": str(ts),
        "X-Lovable-Signature": lovable_sign(secret, ts, raw),
        "X-Lovable-Project-Id": body["project_id"],
    }


async def test_signed_webhook_reaches_the_callback(system: dict[str, ServiceProcess], sink: Sink) -> None:
    await _signed_webhook_reaches_the_callback(system, sink)


@pytest.mark.parametrize("fast_paths", ["0"])
async def test_signed_webhook_reaches_the_callback_on_stock_nats_py(
    system: dict[str, ServiceProcess], sink: Sink, fast_paths: str
) -> None:
    """The same path with the bus's fast paths off (CONVEYOR_FAST_PATHS=0): every service runs
    on stock nats-py (its parser, publish, KV calls) and the job still goes end to end."""
    await _signed_webhook_reaches_the_callback(system, sink)
    for name, proc in system.items():
        assert "bus fast paths off" in proc.log_path.read_text(), name


async def _signed_webhook_reaches_the_callback(system: dict[str, ServiceProcess], sink: Sink) -> None:
    receiver = system["receiver"].url
    event_id = f"evt_{uuid.uuid4().hex}"
    raw, headers = signed_lovable(
        {
            "id": event_id,
            "type": "agent.task_requested",
            "project_id": "proj-42",
            "data": {"agent": "architect", "prompt": "Summarise the structure",
                     "files": {"app/main.py": "def main():\n    return 1\n", "app/util.py": "X = 1\n"}},
            "created_at": "2026-11-21T10:00:00Z",
        }
    )  # fmt: skip
    # Reads need a key: the admin's here (the webhook's job is the default project's).
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=receiver, timeout=10, headers=admin) as http:
        assert (await http.get("/api/jobs/job_x", headers={"Authorization": ""})).status_code == 401
        r = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert r.json()["duplicate"] is False

        # Accepted means durable: the status is readable at once.
        first = (await http.get(f"/api/jobs/{job_id}")).json()
        assert first["job_id"] == job_id and first["status"] in {"queued", "processing", "completed"}

        async def delivered() -> dict[str, Any]:
            bodies = [b for b in sink.bodies if b.get("jobId") == job_id]
            assert len(bodies) == 1
            return bodies[0]

        body = await eventually(delivered, timeout=30)
        assert set(body) == {
            "jobId",
            "lovableProjectId",
            "agentId",
            "status",
            "result",
            "executionTime",
            "timestamp",
        }
        assert body["jobId"] == job_id
        assert body["lovableProjectId"] == "proj-42"
        assert body["agentId"] == "architect"
        assert body["status"] == "completed"
        assert isinstance(body["executionTime"], int) and body["executionTime"] >= 0
        assert body["timestamp"].endswith("Z") or "+00:00" in body["timestamp"]
        result = body["result"]
        assert isinstance(result["summary"], str) and result["summary"]
        assert isinstance(result["files_changed"], list)
        assert isinstance(result["suggestions"], list)
        assert "app/main.py" in json.dumps(result)  # the agent really looked at the payload

        headers_seen, raw_seen = next((h, b) for h, b in sink.received if json.loads(b)["jobId"] == job_id)
        lower = {k.lower(): v for k, v in headers_seen.items()}
        assert standard_verify([SIGNING], raw_seen, lower) == f"result-{job_id}"

        async def final() -> dict[str, Any]:
            rec = (await http.get(f"/api/jobs/{job_id}")).json()
            assert rec["status"] == "completed" and rec["progress"] == 100
            return rec

        record = await eventually(final)
        assert record["agent"] == "architect"

        # The same delivery again is accepted once: same job, no second callback.
        again = await http.post(
            "/api/webhooks/lovable", content=raw, headers=signed_lovable(json.loads(raw))[1]
        )
        assert again.status_code == 202 and again.json() == {
            **again.json(),
            "duplicate": True,
            "job_id": job_id,
        }


async def test_api_job_with_key_reaches_the_callback(system: dict[str, ServiceProcess], sink: Sink) -> None:
    async with httpx.AsyncClient(base_url=system["receiver"].url, timeout=10) as http:
        created = await http.post(
            "/api/admin/keys", json={"name": "e2e"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        # Credentials in the callback URL go to the endpoint as Basic auth and nowhere else.
        with_credentials = sink.url.replace("http://", "http://cb-user:e2e-s3cret@")
        r = await http.post(
            "/api/jobs",
            json={"agent": "dev", "prompt": "Review", "callback_url": with_credentials,
                  "input": {"diff": "--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+eval(input())\n"}},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert r.headers["Location"].endswith(f"/api/jobs/{job_id}")

        async def delivered() -> dict[str, Any]:
            bodies = [b for b in sink.bodies if b.get("jobId") == job_id]
            assert len(bodies) == 1
            return bodies[0]

        body = await eventually(delivered, timeout=30)
        assert body["agentId"] == "dev" and body["status"] == "completed"
        assert body["lovableProjectId"] is None
        result = (
            await http.get(f"/api/jobs/{job_id}/result", headers={"Authorization": f"Bearer {key}"})
        ).json()
        assert result["jobId"] == job_id
        headers_seen = next(h for h, b in sink.received if json.loads(b)["jobId"] == job_id)
        assert headers_seen["Authorization"] == "Basic " + base64.b64encode(b"cb-user:e2e-s3cret").decode()
        shown = sink.url.replace("http://", "http://cb-user:***@")
        record = (await http.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})).json()
        assert record["callback_url"] == shown

        async def logged() -> dict[str, Any]:
            got = (
                await http.get(f"/api/jobs/{job_id}/deliveries", headers={"Authorization": f"Bearer {key}"})
            ).json()
            assert got["delivered"]
            return got

        deliveries = await eventually(logged)
        assert [a["url"] for a in deliveries["attempts"]] == [shown]
    for name, proc in system.items():
        assert "e2e-s3cret" not in proc.log_path.read_text(errors="replace"), name


async def test_receiver_answers_503_when_nats_is_down(nats_server: NatsServer, tmp_path: Path) -> None:
    proc = ServiceProcess("receiver", service_env(nats_server.url, LOVABLE_WEBHOOK_SECRET=SECRET),
                          tmp_path / "receiver.log")  # fmt: skip
    await proc.start()
    try:
        await nats_server.stop()
        raw, headers = signed_lovable(
            {"id": "evt-down", "type": "project.created", "project_id": "p", "data": {}, "created_at": "x"}
        )
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:

            async def unavailable() -> httpx.Response:
                r = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
                assert r.status_code == 503
                return r

            r = await eventually(unavailable)
            assert "Retry-After" in r.headers
            assert r.json()["error"]
    finally:
        assert await proc.stop() == 0, proc.tail()
