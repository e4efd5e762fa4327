"""Projects end to end, every service a real process: each project's webhooks verified with its
own secret, its results called back to its own URL, signed with its own secret (checked with
the standardwebhooks package) and carrying its own credential; a disabled project answered and
not run; the default project (the settings of before) unchanged."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.domain.signing import lovable_sign
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink as Sink

DEFAULT_SECRET = "default-project-webhook-secret"
DEFAULT_SIGNING = "whsec_ZGVmYXVsdC1wcm9qZWN0LWNhbGxiYWNrLWtleQ=="
ADMIN = "projects-e2e-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class System:
    def __init__(self, http: httpx.AsyncClient, sinks: dict[str, Sink], default_sink: Sink) -> None:
        self.http = http
        self.sinks = sinks
        self.default_sink = default_sink


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    sinks = {name: await Sink().start() for name in ("a", "b", "default")}
    env = service_env(
        nats_server.url,
        LOVABLE_WEBHOOK_SECRET=DEFAULT_SECRET,
        LOVABLE_CALLBACK_URL=sinks["default"].url,
        CALLBACK_SIGNING_SECRETS=DEFAULT_SIGNING,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        ADMIN_API_KEY=ADMIN,
        CONVEYOR_SECRET_KEYS=new_key_setting(),
    )
    procs = [
        ServiceProcess(name, env, tmp_path / f"{name}.log") for name in ("receiver", "executor", "deliverer")
    ]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with httpx.AsyncClient(base_url=procs[0].url, timeout=10, headers=AUTH) as http:
            yield System(http, {"a": sinks["a"], "b": sinks["b"]}, sinks["default"])
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        for sink in sinks.values():
            await sink.stop()


def signed(secret: str, lovable_project: str, **data: Any) -> tuple[bytes, dict[str, str]]:
    body = {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "agent.task_requested",
        "project_id": lovable_project,
        "data": {"agent": "qa", "prompt": "check", **data},
        "created_at": "2026-12-01T10:00:00Z",
    }
    raw = json.dumps(body).encode()
    ts = int(time.time())
    return raw, {"Content-Type": "application/json", "X-Lovable-Timestamp": str(ts),
                 "X-Lovable-Signature": lovable_sign(secret, ts, raw)}  # fmt: skip


async def _project(http: httpx.AsyncClient, name: str, sink: Sink, **extra: Any) -> dict[str, Any]:
    await http.post("/api/admin/orgs", json={"org_id": f"org-{name}", "name": name})
    resp = await http.post(
        "/api/admin/projects",
        json={
            "project_id": name,
            "org_id": f"org-{name}",
            "name": name,
            "external_ids": [f"lovable:lp-{name}"],
            "webhook_secrets": {"lovable": [f"webhook-secret-of-project-{name}"]},
            "callback_url": sink.url,
            "outbound_credential": f"lovable-api-key-{name}",
            **extra,
        },
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_each_project_is_called_back_at_its_url_with_its_secret(system: System) -> None:
    http = system.http
    created = {name: await _project(http, name, system.sinks[name]) for name in ("a", "b")}
    jobs = {}
    for name in ("a", "b"):
        raw, headers = signed(f"webhook-secret-of-project-{name}", f"lp-{name}")
        resp = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
        assert resp.status_code == 202, resp.text
        jobs[name] = resp.json()["job_id"]
        record = (await http.get(f"/api/jobs/{jobs[name]}")).json()
        assert record["project"] == name

    # One project's secret does not sign for another: the body's project picks the secret.
    raw, headers = signed("webhook-secret-of-project-a", "lp-b")
    resp = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_signature")
    # Nor does the deployment's: lp-a belongs to project a now.
    raw, headers = signed(DEFAULT_SECRET, "lp-a")
    assert (await http.post("/api/webhooks/lovable", content=raw, headers=headers)).status_code == 401

    for name in ("a", "b"):
        sink, other = system.sinks[name], system.sinks["b" if name == "a" else "a"]

        async def called_back(sink: Sink = sink, name: str = name) -> tuple[dict[str, str], bytes]:
            got = [(h, b) for h, b in sink.received if json.loads(b)["jobId"] == jobs[name]]
            assert len(got) == 1
            return got[0]

        headers, body = await eventually(called_back, timeout=30)
        assert json.loads(body)["lovableProjectId"] == f"lp-{name}"
        assert headers["Authorization"] == f"Bearer lovable-api-key-{name}"
        lower = {k.lower(): v for k, v in headers.items()}
        Webhook(created[name]["callback_secret"]).verify(body, lower)  # its own secret verifies
        with pytest.raises(WebhookVerificationError):
            Webhook(created["b" if name == "a" else "a"]["callback_secret"]).verify(body, lower)
        with pytest.raises(WebhookVerificationError):
            Webhook(DEFAULT_SIGNING).verify(body, lower)  # never the deployment's shared secret
        assert all(json.loads(b)["jobId"] != jobs[name] for _, b in other.received)
    assert system.default_sink.received == []


async def test_a_disabled_project_is_answered_and_not_run_until_enabled(system: System) -> None:
    http = system.http
    await _project(http, "a", system.sinks["a"], enabled=False)
    raw, headers = signed("webhook-secret-of-project-a", "lp-a")
    resp = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
    assert resp.status_code == 202, resp.text
    assert (resp.json()["status"], resp.json()["project"]) == ("disabled", "a")
    assert "job_id" not in resp.json()
    listed = (await http.get("/api/jobs", params={"project": "a"})).json()["jobs"]
    assert listed == []

    assert (await http.patch("/api/admin/projects/a", json={"enabled": True})).status_code == 200
    raw, headers = signed("webhook-secret-of-project-a", "lp-a")
    resp = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
    assert resp.status_code == 202 and resp.json()["duplicate"] is False
    job_id = resp.json()["job_id"]

    async def done() -> None:
        assert (await http.get(f"/api/jobs/{job_id}")).json()["status"] == "completed"
        assert [json.loads(b)["jobId"] for _, b in system.sinks["a"].received] == [job_id]

    await eventually(done, timeout=30)


async def test_the_default_project_works_as_before(system: System) -> None:
    """Deployments configured before projects: one secret, one callback URL, any Lovable
    project id; the callback is signed with CALLBACK_SIGNING_SECRETS."""
    raw, headers = signed(DEFAULT_SECRET, "lp-anything")
    resp = await system.http.post("/api/webhooks/lovable", content=raw, headers=headers)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]

    async def called_back() -> tuple[dict[str, str], bytes]:
        got = [(h, b) for h, b in system.default_sink.received if json.loads(b)["jobId"] == job_id]
        assert len(got) == 1
        return got[0]

    headers_seen, body = await eventually(called_back, timeout=30)
    Webhook(DEFAULT_SIGNING).verify(body, {k.lower(): v for k, v in headers_seen.items()})
    assert "Authorization" not in headers_seen
    assert (await system.http.get(f"/api/jobs/{job_id}")).json()["project"] == "default"


async def test_a_sender_asks_its_projects_integration_status(system: System) -> None:
    http = system.http
    await _project(http, "a", system.sinks["a"])
    raw, headers = signed("webhook-secret-of-project-a", "lp-a")
    job_id = (await http.post("/api/webhooks/lovable", content=raw, headers=headers)).json()["job_id"]

    def ask(secret: str, lovable_project: str = "lp-a") -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"project_id": lovable_project}).encode()
        ts = int(time.time())
        return body, {"X-Lovable-Timestamp": str(ts), "X-Lovable-Signature": lovable_sign(secret, ts, body)}

    async def reported() -> dict[str, Any]:
        body, headers = ask("webhook-secret-of-project-a")
        resp = await http.post("/api/webhooks/lovable/status", content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert got["last_callback"] is not None and got["last_callback"]["outcome"] == "delivered"
        assert got["last_webhook_received"] is not None  # each writer merges every 2 s
        return dict(got)

    status = await eventually(reported, timeout=30)
    assert [json.loads(b)["jobId"] for _, b in system.sinks["a"].received] == [job_id]
    assert (status["project"], status["enabled"], status["failures_last_hour"]) == ("a", True, 0)
    assert status["callback_url_configured"] is True
    # Only the project's own secret may ask.
    for secret, project in (("webhook-secret-of-project-b", "lp-a"), (DEFAULT_SECRET, "lp-a")):
        body, headers = ask(secret, project)
        resp = await http.post("/api/webhooks/lovable/status", content=body, headers=headers)
        assert resp.status_code == 401, resp.text


async def test_a_projects_test_send_is_signed_with_its_secret(system: System) -> None:
    http = system.http
    created = await _project(http, "a", system.sinks["a"])
    key = (await http.post("/api/admin/keys", json={"name": "a", "project_id": "a"})).json()["key"]
    resp = await http.post(
        "/api/webhooks/test", json={"url": system.sinks["a"].url}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200 and resp.json()["status"] == "delivered", resp.text
    headers, body = system.sinks["a"].received[-1]
    lower = {k.lower(): v for k, v in headers.items()}
    Webhook(created["callback_secret"]).verify(body, lower)
    with pytest.raises(WebhookVerificationError):
        Webhook(DEFAULT_SIGNING).verify(body, lower)
    assert headers["Authorization"] == "Bearer lovable-api-key-a"
