"""Receiver test support: a receiver in-process on a real nats-server, signing helpers, and a
look at what reached JetStream."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from conveyor.receiver.config import Settings
from conveyor.receiver.service import SPEC
from conveyor.receiver.state import STATE
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.runner import Runtime, serve

LOVABLE_SECRET = "lovable-test-secret"
ADMIN_KEY = "admin-test-key"
SEALING_KEYS = new_key_setting()  # one per test run: project secrets sealed at rest


@dataclass
class Receiver:
    rt: Runtime[Settings]
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rt.http_port}"

    def job_id(self, source: str, dedupe_key: str) -> str:
        """The job id this receiver gives a webhook (its key is a secret of the receiver's)."""
        return ids.job_id_for_delivery(self.rt.app[STATE].job_id_key, source, dedupe_key)


Start = Callable[..., contextlib.AbstractAsyncContextManager[Receiver]]


@pytest.fixture
def start_receiver(nats_url: str) -> Start:
    """``async with start_receiver(**settings) as r``: a receiver on this test's nats-server."""

    @contextlib.asynccontextmanager
    async def start(*, span_exporter: Any = None, **overrides: Any) -> AsyncIterator[Receiver]:
        values: dict[str, Any] = {
            "nats_url": nats_url,
            "port": 0,
            "lovable_webhook_secret": Secret(LOVABLE_SECRET),
            "admin_api_key": Secret(ADMIN_KEY),
            "conveyor_secret_keys": Secret(SEALING_KEYS),
            "shutdown_grace_s": 1.0,
            **overrides,
        }
        settings = Settings(**values)
        async with serve(SPEC, settings, registry=CollectorRegistry(), span_exporter=span_exporter) as rt:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=15) as http:
                yield Receiver(rt, http)

    return start


@pytest.fixture
async def receiver(start_receiver: Start) -> AsyncIterator[Receiver]:
    async with start_receiver() as r:
        yield r


class Lovable:
    """Builds Lovable webhooks and signs them the way the sender does (HMAC-SHA256 of
    "{timestamp}.{body}", computed here with hmac directly)."""

    def __init__(self, secret: str = LOVABLE_SECRET) -> None:
        self.secret = secret

    def body(self, event_type: str = "project.created", **over: Any) -> bytes:
        payload = {
            "id": over.pop("id", f"evt_{uuid.uuid4().hex}"),
            "type": event_type,
            "project_id": over.pop("project_id", "proj_1"),
            "data": over.pop("data", {"name": "demo"}),
            "created_at": "2026-01-01T00:00:00Z",
            **over,
        }
        return json.dumps(payload).encode()

    def headers(
        self, body: bytes, *, timestamp: int | None = None, secret: str | None = None
    ) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        key = (secret or self.secret).encode()
        digest = hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        return {
            "Content-Type": "application/json",
            "X-Lovable-Timestamp": str(ts),
            "X-Lovable-Signature": f"sha256={digest}",
        }


@pytest.fixture
def lovable() -> Lovable:
    return Lovable()


class Bus:
    """What reached JetStream: stream message counts and job records."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def count(self, stream: str) -> int:
        try:
            return int((await self.js.stream_info(stream)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0

    async def job_keys(self) -> list[str]:
        try:
            kv = await self.js.key_value(subjects.KV_JOBS)
            return await kv.keys()
        except (nats.js.errors.NoKeysError, nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
            return []

    async def assert_nothing_accepted(self) -> None:
        assert await self.count(subjects.EVENTS) == 0
        assert await self.count(subjects.JOBS) == 0
        assert await self.job_keys() == []


@pytest.fixture
def bus(js: JetStreamContext) -> Bus:
    return Bus(js)


async def admin_key(r: Receiver, **limits: Any) -> str:
    resp = await r.http.post(
        "/api/admin/keys", json={"name": "test", **limits}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


@pytest.fixture
def new_key() -> Callable[..., Any]:
    """``await new_key(receiver, per_minute=3)``: a fresh API key made through the admin API."""
    return admin_key


def _admin(r: Receiver) -> dict[str, str]:
    key = r.rt.settings.admin_api_key
    assert key is not None
    return {"Authorization": f"Bearer {key.reveal()}"}


async def _make_project(
    r: Receiver, project_id: str, org_id: str = "default", **fields: Any
) -> dict[str, Any]:
    """A project made through the admin API (its organisation made first when it is new)."""
    admin = _admin(r)
    if org_id != "default":
        resp = await r.http.post("/api/admin/orgs", json={"org_id": org_id, "name": org_id}, headers=admin)
        assert resp.status_code in (201, 409), resp.text
    body = {"project_id": project_id, "org_id": org_id, "name": project_id, **fields}
    resp = await r.http.post("/api/admin/projects", json=body, headers=admin)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _project_key(r: Receiver, project_id: str, **fields: Any) -> dict[str, str]:
    """Authorization headers of a new key of ``project_id``."""
    resp = await r.http.post(
        "/api/admin/keys",
        json={"name": f"key-{project_id}", "project_id": project_id, **fields},
        headers=_admin(r),
    )
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"Bearer {resp.json()['key']}"}


@pytest.fixture
def make_project() -> Callable[..., Any]:
    """``await make_project(receiver, "alpha", org_id=..., **fields)``."""
    return _make_project


@pytest.fixture
def project_key() -> Callable[..., Any]:
    """``await project_key(receiver, "alpha", read_only=True)``: Authorization headers."""
    return _project_key
