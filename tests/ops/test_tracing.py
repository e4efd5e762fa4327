"""One job, one trace: the four services run as real processes exporting OTLP/HTTP (the
standard OTEL_* variables) to a collector served here; a signed webhook's trace covers the
receiver, both executor hops and the deliverer, and their JSON log lines carry its ids."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conveyor.shared.domain.signing import lovable_sign
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.rawhttp import serve_app

from .conftest import SERVICES

SECRET = "trace-webhook-secret"
SIGNING = "whsec_dHJhY2UtY2FsbGJhY2stc2lnbmluZy1rZXk="


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


@dataclass
class Server:
    """A small HTTP server on 127.0.0.1:0 for the test's side of the wire."""

    app: web.Application
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        self.runner, port = await serve_app(self.app)
        self.port = port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    spans: list[Span] = field(default_factory=list)

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            service=attrs.get("service.name", ""),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: a.value for a in s.attributes},
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/traces", self.export)
        return app


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, Server]]:
    c = Collector()
    server = Server(c.app())
    await server.start()
    yield c, server
    await server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[list[tuple[dict[str, str], dict[str, Any]]], Server]]:
    received: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/callback", receive)
    server = Server(app)
    await server.start()
    yield received, server
    await server.stop()


@pytest.fixture
async def system(
    nats_server: NatsServer,
    collector: tuple[Collector, Server],
    sink: tuple[list[Any], Server],
    tmp_path: Path,
) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = service_env(
        nats_server.url,
        LOVABLE_WEBHOOK_SECRET=SECRET,
        LOVABLE_CALLBACK_URL=f"{sink[1].url}/callback",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_SIGNING_SECRETS=SIGNING,
        ADMIN_API_KEY="trace-admin-key",
        DATA_DIR=str(tmp_path / "deployer"),
        SHUTDOWN_GRACE_S="2",
        LOG_FORMAT="json",
        # Per-job lines of a successful job are DEBUG (kept off the hot path at INFO).
        LOG_LEVEL="DEBUG",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector[1].url,
        # Export each batch quickly: the test waits for spans, not for the default 5 s.
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    procs = {svc: ServiceProcess(svc, env, tmp_path / "logs" / f"{svc}.log") for svc in SERVICES}
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


async def test_one_trace_from_webhook_to_callback(
    system: dict[str, ServiceProcess],
    collector: tuple[Collector, Server],
    sink: tuple[list[tuple[dict[str, str], dict[str, Any]]], Server],
) -> None:
    spans = collector[0].spans
    received = sink[0]
    raw = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "agent.task_requested",
            "project_id": "proj-trace",
            "data": {"agent": "architect", "prompt": "Summarise", "files": {"a.py": "X = 1\n"}},
            "created_at": "2026-01-01T00:00:00Z",
        }
    ).encode()
    ts = int(time.time())
    correlation = f"corr-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=system["receiver"].url, timeout=10) as http:
        r = await http.post(
            "/api/webhooks/lovable",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-Lovable-Timestamp": str(ts),
                "X-Lovable-Signature": lovable_sign(SECRET, ts, raw),
                "X-Correlation-ID": correlation,
            },
        )
    assert r.status_code == 202, r.text
    assert r.headers["X-Correlation-ID"] == correlation
    job_id = r.json()["job_id"]

    async def delivered() -> tuple[dict[str, str], dict[str, Any]]:
        (hit,) = [(h, b) for h, b in received if b.get("jobId") == job_id]
        return hit

    headers, body = await eventually(delivered, timeout=30)
    assert body["status"] == "completed"

    # The receiver's server span is the root of the job's trace.
    webhook_span = "POST /api/webhooks/{source}"

    async def root_exported() -> Span:
        roots = [s for s in spans if s.name == webhook_span and not s.parent_id]
        (span,) = [s for s in roots if s.service == "conveyor-receiver"]
        return span

    trace_id = (await eventually(root_exported, timeout=10)).trace_id
    hops = {
        "conveyor-executor": {"events.* process", "jobs.run.* process"},
        "conveyor-deliverer": {"results.* process"},
    }

    async def all_hops_exported() -> list[Span]:
        in_trace = [s for s in spans if s.trace_id == trace_id]
        names = {(s.service, s.name) for s in in_trace}
        missing = {(svc, n) for svc, wanted in hops.items() for n in wanted} - names
        assert not missing, f"spans missing from the trace: {sorted(missing)}; have {sorted(names)}"
        return in_trace

    in_trace = await eventually(all_hops_exported, timeout=15)
    # One tree: every span's parent is in the trace, and only the receiver's span is a root.
    ids = {s.span_id for s in in_trace}
    assert [s.name for s in in_trace if not s.parent_id] == [webhook_span]
    orphans = [(s.service, s.name) for s in in_trace if s.parent_id and s.parent_id not in ids]
    assert orphans == []
    # Each hop continues the previous one: consumer spans hang under the publisher's context.
    by_name = {s.name: s for s in in_trace}
    chain = ["events.* process", "jobs.run.* process", "results.* process"]
    for name in chain:
        assert by_name[name].kind == 5, name  # SPAN_KIND_CONSUMER
    # The callback carries the same trace onward to the receiving system.
    assert trace_id in headers.get("traceparent", headers.get("Traceparent", "")), headers

    # JSON log lines about this job carry its job id, the trace id and the caller's correlation
    # id. At DEBUG the executor and the deliverer log each job; the receiver logs only
    # failures, so its lines are checked only where it writes some.
    async def logged() -> None:
        for svc in ("receiver", "executor", "deliverer"):
            lines = [d for d in json_lines(system[svc].log_path) if d.get("job_id") == job_id]
            if svc != "receiver":
                assert lines, f"{svc}: no JSON log line with job_id {job_id}"
            assert all(d.get("trace_id") == trace_id for d in lines), (svc, lines)
            assert all(d.get("correlation_id") == correlation for d in lines), (svc, lines)

    await eventually(logged, timeout=10)


async def test_one_trace_from_publish_request_to_deployment(
    system: dict[str, ServiceProcess], collector: tuple[Collector, Server]
) -> None:
    spans = collector[0].spans
    site = {
        "name": "Trace Bakery",
        "slug": f"trace-{uuid.uuid4().hex[:8]}",
        "theme": {"preset": "light", "primary_color": "#b45309"},
        "sections": {"hero": {"headline": "Fresh bread", "cta_text": "Visit", "cta_url": "#contact"}},
    }
    auth = {"Authorization": "Bearer trace-admin-key"}
    async with httpx.AsyncClient(base_url=system["receiver"].url, timeout=10, headers=auth) as http:
        r = await http.post("/api/sites", json={"config": site})
        assert r.status_code == 201, r.text
        site_id = r.json()["site"]["site_id"]
        r = await http.post(f"/api/sites/{site_id}/publish")
        assert r.status_code == 202, r.text

    publish_span = "POST /api/sites/{site_id}/publish"

    async def deployment_in_trace() -> None:
        (root,) = [s for s in spans if s.service == "conveyor-receiver" and s.name == publish_span]
        names = {(s.service, s.name) for s in spans if s.trace_id == root.trace_id}
        assert ("conveyor-deployer", "deploys.requested.* process") in names, sorted(names)

    await eventually(deployment_in_trace, timeout=5)
