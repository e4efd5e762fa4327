"""/mcp: the Model Context Protocol over Streamable HTTP, on the receiver's own port.

The tools (conveyor.mcp.server) call this receiver's REST API over loopback with the MCP
request's own bearer key, so what a key may see and do, and the errors it gets, are the REST
API's. Here: the key is checked (401) and rate-limited like any REST request before the SDK
sees the request, bodies over MAX_BODY_BYTES get 413, at most MCP_MAX_SESSIONS sessions are
open at once, MCP_MAX_SESSIONS_PER_KEY per key (429 past either).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import Counter, Gauge, Histogram

from conveyor.mcp.server import Subscriptions, build
from conveyor.receiver import asgi
from conveyor.receiver.openapi import ANY_JSON, SSE, Operation
from conveyor.receiver.state import STATE
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.runner import Runtime

PATH = "/mcp"
_SESSION = "mcp-session-id"
MANAGER: web.AppKey[StreamableHTTPSessionManager] = web.AppKey("mcp_manager", StreamableHTTPSessionManager)


class McpMetrics:
    def __init__(self, registry: Any) -> None:
        self.sessions = Gauge("mcp_sessions", "Open MCP sessions on /mcp.", registry=registry)
        self.calls = Counter(
            "mcp_tool_calls",
            "MCP tool calls, by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "mcp_tool_duration_seconds", "MCP tool call durations, by tool.", ["tool"], registry=registry
        )

    def observe(self, tool: str, outcome: str, seconds: float) -> None:
        self.calls.labels(tool, outcome).inc()
        self.duration.labels(tool).observe(seconds)


class Sessions:
    """Which key opened each session, for the per-key limit and so that a session is used by
    its own key only. A session idle past the SDK's idle timeout is gone there: forgotten here."""

    def __init__(self, per_key: int, idle_s: float, metrics: McpMetrics, subs: Subscriptions) -> None:
        self.per_key, self.idle_s, self.metrics, self.subs = per_key, idle_s, metrics, subs
        self.owner: dict[str, tuple[str, float]] = {}

    def key_of(self, session: str) -> str | None:
        entry = self.owner.get(session)
        return entry[0] if entry is not None else None

    def count(self, key_id: str) -> int:
        now = time.monotonic()
        for session, (_, seen) in list(self.owner.items()):
            if now - seen > self.idle_s:
                self.closed(session)
        return sum(1 for k, _ in self.owner.values() if k == key_id)

    def used(self, session: str, key_id: str) -> None:
        self.owner[session] = (key_id, time.monotonic())
        self.metrics.sessions.set(len(self.owner))

    def closed(self, session: str) -> None:
        if self.owner.pop(session, None) is not None:
            self.metrics.sessions.set(len(self.owner))
        self.subs.end(session)  # its job followers stop with it


def operations() -> list[Operation]:
    # 401 and 429 are ours (ErrorBody); the SDK answers the rest with JSON-RPC error bodies.
    rpc = ANY_JSON
    keyed = {401: None, 413: rpc, 429: None, 503: rpc}
    desc = "Model Context Protocol (Streamable HTTP), see docs/mcp.md; Authorization: Bearer <API key>."
    return [
        Operation(
            "POST",
            PATH,
            None,
            "MCP messages",
            "mcp",
            {200: SSE, 202: ANY_JSON, 400: rpc, 404: rpc, **keyed},
            body=dict,
            auth="api_key",
            description=desc,
        ),
        Operation(
            "GET",
            PATH,
            None,
            "MCP server-to-client stream",
            "mcp",
            {200: SSE, 400: rpc, 404: rpc, 405: rpc, **keyed},
            auth="api_key",
            description=desc,
        ),
        Operation(
            "DELETE",
            PATH,
            None,
            "End an MCP session",
            "mcp",
            {200: ANY_JSON, 400: rpc, 404: rpc, **keyed},
            auth="api_key",
            description=desc,
        ),
    ]


def add_routes(rt: Runtime[Any]) -> None:
    st = rt.app[STATE]
    settings = st.settings
    metrics = McpMetrics(rt.registry)
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    subs = Subscriptions()
    server = build(lambda: f"http://{host}:{rt.http_port}", observe=metrics.observe, subscriptions=subs)
    # The app is not served (aiohttp is): it is made for the session manager it sets up.
    server.streamable_http_app(
        streamable_http_path=PATH,
        max_request_body_size=settings.max_body_bytes,
        max_sessions=settings.mcp_max_sessions,
        session_idle_timeout=settings.mcp_session_idle_s,
        # Bearer keys, not cookies, authenticate here; CORS is the edge middleware's.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    rt.app[MANAGER] = manager
    sessions = Sessions(settings.mcp_max_sessions_per_key, settings.mcp_session_idle_s, metrics, subs)

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = await st.authenticate(request)
        if not principal.admin:
            await st.limit_key(request, principal)
        session = request.headers.get(_SESSION)
        if session is not None and sessions.key_of(session) not in (None, principal.key_id):
            raise HTTPError(404, "not_found", "no such MCP session for this key")
        if (
            session is None
            and request.method == "POST"
            and sessions.count(principal.key_id) >= sessions.per_key
        ):
            raise HTTPError(
                429,
                "too_many_sessions",
                f"this key has {sessions.per_key} MCP sessions open (MCP_MAX_SESSIONS_PER_KEY); "
                "end one (DELETE /mcp) or retry later",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        resp = await asgi.serve(request, manager.handle_request)
        if session is not None and (request.method == "DELETE" or resp.status == 404):
            sessions.closed(session)
        elif (current := resp.headers.get(_SESSION, session)) is not None and resp.status < 400:
            sessions.used(current, principal.key_id)
        return resp

    for method in ("GET", "POST", "DELETE"):
        rt.app.router.add_route(method, PATH, handle)


@contextlib.asynccontextmanager
async def running(rt: Runtime[Any]) -> AsyncIterator[None]:
    """The session manager's task group, for the receiver's lifetime. It lives in a task of
    its own: an anyio task group is left in the task that entered it, and the runner may
    leave its components from another."""
    manager = rt.app[MANAGER]
    started, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with manager.run():
            started.set()
            await stop.wait()

    task = asyncio.create_task(hold(), name="mcp-sessions")
    await asyncio.wait([task, asyncio.ensure_future(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed to start: say why
    try:
        yield
    finally:
        stop.set()
        await task
