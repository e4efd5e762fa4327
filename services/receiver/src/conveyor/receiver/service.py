"""The receiver's ServiceSpec: streams and buckets it uses, its routes, its NATS-side state."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

from aiohttp import web

from conveyor.receiver import (
    agents_api,
    deadletters_api,
    integrations_api,
    mcp_api,
    projects_api,
    schedules_api,
    sites_api,
)
from conveyor.receiver.apikeys import ApiKeys
from conveyor.receiver.config import Settings, default_project
from conveyor.receiver.handlers import (
    admin,
    health,
    integration,
    jobs,
    send_test_event,
    stream,
    usage,
    webhooks,
)
from conveyor.receiver.job_ids import job_id_key
from conveyor.receiver.listener import listener_for
from conveyor.receiver.metrics import Metrics
from conveyor.receiver.middleware import edge, expect_handler
from conveyor.receiver.openapi import ANY_JSON, SSE, TEXT, Operation, Param, document, job_links, link
from conveyor.receiver.schemas import (
    Accepted,
    AgentHealth,
    CancelAccepted,
    Health,
    Ignored,
    JobCreate,
    JobList,
    JobPending,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyView,
    Live,
    LovableHealth,
    Ready,
    TestSendCreate,
    TestSendOutcome,
)
from conveyor.receiver.sources import build_sources, parse_networks
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared.bus import KvMirror
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import AgentResult, DeliveryLog, JobLog, JobRecord
from conveyor.shared.domain.agentdefs import definition_decoder
from conveyor.shared.domain.integration import IntegrationRecorder
from conveyor.shared.domain.ratelimit import RateLimiter
from conveyor.shared.domain.sealing import Sealer
from conveyor.shared.domain.tenancy import Directory, project_decoder
from conveyor.shared.runtime.runner import Runtime, ServiceSpec
from conveyor.shared.runtime.telemetry import exporting

STREAMS = [
    subjects.EVENTS,
    subjects.JOBS,
    subjects.CONTROL,
    subjects.DEPLOYS,
    subjects.DLQ,
    subjects.JOBINDEX,
]
BUCKETS = [
    subjects.KV_JOBS,
    subjects.KV_CANCELS,
    subjects.KV_APIKEYS,
    subjects.KV_RATELIMITS,
    subjects.KV_DELIVERIES,
    subjects.KV_JOB_LOGS,
    subjects.KV_SITES,
    subjects.KV_DEPLOYMENTS,
    subjects.KV_SECRETS,
    subjects.KV_ORGS,
    subjects.KV_PROJECTS,
    subjects.KV_INTEGRATION,
    subjects.KV_CONNECTIONS,
    subjects.KV_OAUTH_STATES,
    subjects.KV_AGENTS,
    subjects.KV_AGENT_ROUTES,
    subjects.KV_USAGE,
]

E = None  # an error answer: ErrorBody
_KEYED = {401: E, 429: E, 503: E}  # every API-key route can answer these
_WEBHOOK_HEADERS = tuple(
    Param(name, "header", desc)
    for name, desc in (
        ("X-Lovable-Timestamp", "lovable: unix seconds"),
        ("X-Lovable-Signature", 'lovable: "sha256=" + hex HMAC-SHA256 of "{timestamp}.{body}"'),
        ("X-Hub-Signature-256", 'github: "sha256=" + hex HMAC-SHA256 of the body'),
        ("X-GitHub-Event", "github: event name"),
        ("X-GitHub-Delivery", "github: delivery id (a repeat of a signed body is a duplicate under any)"),
        ("webhook-id", "standard: message id"),
        ("webhook-timestamp", "standard: unix seconds"),
        ("webhook-signature", 'standard: space-separated "v1,<base64>" signatures'),
    )
)
_API_KEY_QUERY = (Param("api_key", "query", "The API key, when an Authorization header cannot be sent."),)
_JOB = "/api/jobs/{job_id}"


def _job_reads() -> list[Operation]:
    def read(path: str, handler: Any, summary: str, ok: Any, deprecated: bool = False) -> Operation:
        return Operation(
            "GET",
            path,
            handler,
            summary,
            "jobs",
            # A result: 202 while the job runs, 409 when it ended without one.
            {200: ok, 404: E, **_KEYED, **({202: JobPending, 409: E} if ok is AgentResult else {})},
            auth="read",
            params=_API_KEY_QUERY,
            deprecated=deprecated,
        )

    cancel_responses = {202: CancelAccepted, 403: E, 404: E, 409: E, **_KEYED}
    return [
        read(_JOB, jobs.get, "The job's record", JobRecord),
        read(f"{_JOB}/result", jobs.result, "The callback body (camelCase) once there is one", AgentResult),
        Operation(
            "POST",
            f"{_JOB}/cancel",
            jobs.cancel,
            "Cancel the job (409 when it has finished)",
            "jobs",
            cancel_responses,
            auth="api_key",
            params=_API_KEY_QUERY,
        ),
        Operation(
            "GET",
            f"{_JOB}/stream",
            stream.stream,
            "Status and progress as Server-Sent Events",
            "jobs",
            {200: SSE, 404: E, **_KEYED},
            auth="read",
            params=(*_API_KEY_QUERY, Param("Last-Event-ID", "header", "Resume after this event id.")),
        ),
        read(f"{_JOB}/logs", jobs.logs, "The execution's log lines", JobLog),
        read(f"{_JOB}/deliveries", jobs.deliveries, "Callback delivery attempts", DeliveryLog),
        read(
            "/api/agents/status/{job_id}", jobs.get, "Seed alias of GET /api/jobs/{job_id}", JobRecord, True
        ),
        read(
            "/api/results/{job_id}",
            jobs.result,
            "Seed alias of GET /api/jobs/{job_id}/result",
            AgentResult,
            True,
        ),
        Operation(
            "POST",
            "/api/agents/cancel/{job_id}",
            jobs.cancel,
            "Seed alias of POST /api/jobs/{job_id}/cancel",
            "jobs",
            cancel_responses,
            auth="api_key",
            params=_API_KEY_QUERY,
            deprecated=True,
        ),
    ]


def operations() -> list[Operation]:
    """Every route of the receiver, in registration order (fixed paths before templates)."""
    ops = [
        Operation(
            "POST",
            "/api/webhooks/test",
            send_test_event.create,
            "Send a signed test event to a URL through the deliverer",
            "webhooks",
            {200: TestSendOutcome, 202: TestSendOutcome, 400: E, 403: E, 404: E, 413: E, 422: E, **_KEYED},
            body=TestSendCreate,
            auth="api_key",
            params=_API_KEY_QUERY,
            description="200 with the outcome when the deliverer reports within TEST_SEND_WAIT_S, "
            "else 202 with status pending and a status URL.",
            links={
                s: {"GetTestSend": link("get_api_webhooks_test_test_id", test_id="id")} for s in (200, 202)
            },
        ),
        Operation(
            "GET",
            "/api/webhooks/test/{test_id}",
            send_test_event.status,
            "The outcome of a test send",
            "webhooks",
            {200: TestSendOutcome, 202: TestSendOutcome, 404: E, **_KEYED},
            auth="api_key",
            params=_API_KEY_QUERY,
        ),
        Operation(
            "POST",
            "/api/webhooks/{source}/status",
            integration.status,
            "A project's integration status, asked by its sender",
            "webhooks",
            {200: integration.IntegrationView, 400: E, 401: E, 404: E, 413: E, 422: E, 503: E},
            body=dict,
            auth="webhook",
            params=_WEBHOOK_HEADERS[:2],
            description="Signed like a webhook to the same source (lovable), with a body naming the "
            'project as its webhooks do ({"project_id": ...}): enabled, the last webhook received, '
            "the last callback and its outcome, failed callback attempts in the last hour.",
        ),
        Operation(
            "POST",
            "/api/webhooks/{source}",
            webhooks.receive,
            "Receive a signed webhook",
            "webhooks",
            {
                202: (Accepted, Ignored),
                400: E,
                401: E,
                402: E,
                403: E,
                404: E,
                413: E,
                422: E,
                429: E,
                503: E,
            },
            body=dict,
            auth="webhook",
            params=_WEBHOOK_HEADERS,
            description="Schemes: lovable, github, standard (Standard Webhooks). 202 only after JetStream "
            "acknowledged the event and the job record exists; 402 budget_exceeded when the project's "
            "day or month budget is spent; a repeated delivery (the Lovable body's "
            "id, the signed webhook-id, the same GitHub body) answers the same job with duplicate=true; "
            'a GitHub event no route wants answers status "ignored". A prompt field (prompt, task, '
            "instructions, in data or at the top) over MAX_PROMPT_CHARS answers 422 naming it.",
            links={202: job_links()},
        ),
        Operation(
            "POST",
            "/api/jobs",
            jobs.create,
            "Submit a job to an agent",
            "jobs",
            {202: Accepted, 400: E, 402: E, 403: E, 404: E, 413: E, 422: E, **_KEYED},
            body=JobCreate,
            auth="api_key",
            params=(*_API_KEY_QUERY, Param("Idempotency-Key", "header", "A repeat answers the first job.")),
            links={202: job_links()},
        ),
        Operation(
            "GET",
            "/api/usage",
            usage.get,
            "What the key's project's LLM runs cost today and this month, per agent, and its budgets",
            "jobs",
            {200: usage.UsageView, 404: E, **_KEYED},
            auth="api_key",
            params=(Param("project", "query", "Admin and organisation keys: which project."),),
        ),
        Operation(
            "GET",
            "/api/jobs",
            jobs.list_jobs,
            "Jobs the key's scope sees, oldest first",
            "jobs",
            {200: JobList, 400: E, 404: E, **_KEYED},
            auth="api_key",
            params=(
                Param("project", "query", "Only this project (a project key: its own)."),
                Param("status", "query", "queued, processing, completed, failed, timeout or cancelled."),
                Param("agent", "query", "Only jobs of this agent."),
                Param("since", "query", "Created at or after this ISO 8601 time."),
                Param("until", "query", "Created at or before this ISO 8601 time."),
                Param("limit", "query", "At most this many (1-500, default 50)."),
                Param("cursor", "query", "next_cursor of the previous page."),
            ),
        ),
        *_job_reads(),
        Operation(
            "GET",
            "/api/admin/keys",
            admin.list_keys,
            "List API keys",
            "admin",
            {200: KeyList, 401: E, 403: E, 429: E, 503: E},
            auth="admin",
            params=_API_KEY_QUERY,
        ),
        Operation(
            "POST",
            "/api/admin/keys",
            admin.create_key,
            "Create an API key (shown once)",
            "admin",
            {201: KeyCreated, 400: E, 401: E, 403: E, 404: E, 413: E, 422: E, 429: E, 503: E},
            body=KeyCreate,
            auth="admin",
            params=_API_KEY_QUERY,
            links={201: {"RevokeKey": link("delete_api_admin_keys_key_id", key_id="key_id")}},
        ),
        Operation(
            "DELETE",
            "/api/admin/keys/{key_id}",
            admin.revoke_key,
            "Revoke an API key",
            "admin",
            {200: KeyView, 401: E, 403: E, 404: E, 429: E, 503: E},
            auth="admin",
            params=_API_KEY_QUERY,
        ),
        Operation("GET", "/health", health.health, "Summary health", "health", {200: Health, 503: Health}),
        Operation("GET", "/health/agent", health.agent, "Agent health", "health", {200: AgentHealth, 503: E}),
        Operation(
            "GET", "/health/lovable", health.lovable, "Lovable webhook health", "health", {200: LovableHealth}
        ),
        Operation("GET", "/health/live", None, "Liveness", "health", {200: Live}),
        Operation(
            "GET",
            "/health/ready",
            None,
            "Readiness (503 while NATS is unreachable)",
            "health",
            {200: Ready, 503: Ready},
        ),
        Operation("GET", "/metrics", None, "Prometheus metrics", "health", {200: TEXT}),
        Operation("GET", "/openapi.json", None, "This document", "health", {200: ANY_JSON}),
    ]
    return ops


def routes(rt: Runtime[Any]) -> None:
    settings: Settings = rt.settings
    st = Receiver(
        rt=rt,
        settings=settings,
        sources=build_sources(settings),
        trusted=parse_networks(settings.trusted_proxies),
        keys=ApiKeys(settings, lambda: rt.connected and not rt.stopping.is_set()),
        metrics=Metrics(rt.registry),
        agents=tuple(settings.known_agents),
        directory=Directory(default_project(settings)),
        sealer=Sealer.parse(settings.conveyor_secret_keys),
    )
    st.metrics.preset(list(st.sources))
    # Spans cost ~10% of a webhook's CPU; with no processor (no exporter) they are dropped anyway.
    st.tracing = exporting(rt.tracer)
    rt.app[STATE] = st
    health.install(rt.app)
    ops = [
        *operations(),
        *agents_api.operations(),
        *schedules_api.operations(),
        *projects_api.operations(),
        *deadletters_api.operations(),
        *integrations_api.operations(),
    ]
    expect = expect_handler(settings.max_body_bytes)
    for op in ops:
        if op.handler is not None:
            rt.app.router.add_route(op.method, op.path, op.handler, expect_handler=expect)
    every = [*ops, *sites_api.operations(), *mcp_api.operations()]
    st.query_key_routes = frozenset(op.path for op in every if _streams(op))
    spec = document(
        [op if _streams(op) else _without_query_key(op) for op in every],
        title="Conveyor receiver",
        version=_version(),
    )
    for path, methods in spec["paths"].items():
        for op_doc in methods.values():
            if path not in st.query_key_routes and "security" in op_doc:
                op_doc["security"] = [s for s in op_doc["security"] if "apiKeyQuery" not in s]
            if "requestBody" in op_doc:
                op_doc["responses"].setdefault("408", _BODY_TIMEOUT)
    # What this deployment accepts is known at start: say so in the document.
    for schema in ("JobCreate", "ScheduleCreate", "SchedulePatch"):
        spec["components"]["schemas"][schema]["properties"]["agent"]["enum"] = list(settings.known_agents)
    for param in spec["paths"]["/api/webhooks/{source}"]["post"]["parameters"]:
        if param["name"] == "source" and st.sources:
            param["schema"]["enum"] = sorted(st.sources)
    body = web.json_response(spec).body

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    rt.app.router.add_get("/openapi.json", openapi)
    sites_api.add_routes(rt)
    mcp_api.add_routes(rt)
    integrations_api.add_cleanup(rt)


def _streams(op: Operation) -> bool:
    """A Server-Sent Events route: the only kind that takes ?api_key= (the middleware answers
    400 elsewhere), since EventSource cannot send an Authorization header."""
    # /mcp streams too, but MCP clients send headers.
    return op.responses.get(200) == SSE and op.tag != "mcp"


def _without_query_key(op: Operation) -> Operation:
    params = tuple(p for p in op.params if (p.name, p.where) != ("api_key", "query"))
    return dataclasses.replace(op, params=params)


_BODY_TIMEOUT = {
    "description": "The body did not arrive within BODY_TIMEOUT_S; the connection is closed",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    "headers": {"X-Correlation-ID": {"schema": {"type": "string"}}},
}


def _version() -> str:
    try:
        return metadata.version("conveyor-receiver")
    except metadata.PackageNotFoundError:
        return "0"


@contextlib.asynccontextmanager
async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
    """Once NATS is up: KV handles on a context with the short publish timeout, the limiter,
    the jobs bucket that accepted work creates its records in."""
    st = rt.app[STATE]
    conn = rt.bus
    st.kv = {bucket: await conn.kv(bucket, timeout_s=st.settings.publish_timeout_s) for bucket in BUCKETS}
    st.keys.kv = st.kv[subjects.KV_APIKEYS]
    st.limiter = RateLimiter(st.kv[subjects.KV_RATELIMITS])
    st.job_id_key = await job_id_key(st.kv[subjects.KV_SECRETS], st.settings.job_id_secret)
    st.projects = KvMirror(
        st.kv[subjects.KV_PROJECTS],
        subjects.KV_PROJECTS,
        project_decoder.decode,
        on_change=st.directory.update,
    )
    await st.projects.start()
    st.definitions = KvMirror(
        st.kv[subjects.KV_AGENTS],
        subjects.KV_AGENTS,
        definition_decoder.decode,
        on_change=st.definition_changed,
    )
    await st.definitions.start()
    st.integration = IntegrationRecorder(st.kv[subjects.KV_INTEGRATION])
    st.integration.start()
    st.js = conn  # last: no request is taken before the above are set
    try:
        async with mcp_api.running(rt):
            yield
    finally:
        await st.integration.stop()
        await st.definitions.stop()
        await st.projects.stop()


def _details(rt: Runtime[Any]) -> dict[str, Any]:
    return {"nats_connected": rt.connected, "instance": rt.instance}


SPEC = ServiceSpec(
    name="receiver",
    streams=STREAMS,
    buckets=BUCKETS,
    components=components,
    routes=routes,
    details=_details,
    edge=edge,
    front=lambda rt, server, metrics: listener_for(rt.app[STATE], server, metrics),
)
