"""Conveyor's MCP tools, one implementation for both transports.

Every tool is a call to the receiver's REST API with the caller's own key, so scope, rate
limits, body limits, validation and error codes are exactly the REST API's. A REST error
becomes an MCP tool error whose text is the REST error body (``{"status", "error",
"message", ...}``); the session goes on. Over stdio the key is the one given on the command
line; over Streamable HTTP (the receiver's /mcp) it is the MCP request's own bearer key.

A job resource (``conveyor://jobs/{id}``) can be subscribed to (``resources/subscribe``, the
handshake-era protocol): one follower task per (session, job) reads the job's REST event stream
with the subscriber's key and sends ``notifications/resources/updated`` each time its status or
progress moves, until the job ends, the client unsubscribes or the session ends.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import httpx
from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams
from mcp_types.jsonrpc import INVALID_PARAMS, INVALID_REQUEST
from pydantic import Field

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError

TERMINAL = frozenset({"completed", "failed", "timeout", "cancelled"})
DEPLOY_TERMINAL = frozenset({"live", "failed", "cancelled", "superseded", "rolled_back"})

JobId = Annotated[str, Field(min_length=1, max_length=200, description="The job's id (job_id).")]
Prompt = Annotated[str, Field(min_length=1, max_length=5000, description="What the agent should do.")]
Project = Annotated[str | None, Field(description="Conveyor project (admin and organisation keys only).")]

# (tool, outcome "ok" | "error", seconds): the receiver counts these in /metrics.
Observer = Callable[[str, str, float], None]

JOB_URI = "conveyor://jobs/"
# Per session: each subscription holds a task and an open REST stream.
MAX_SUBSCRIPTIONS = 20
# The MCP spec's "resource not found" error code.
RESOURCE_NOT_FOUND = -32002

INSTRUCTIONS = (
    "Conveyor runs AI agents (architect, dev, pm, ux-design-expert, qa) as jobs. Start one with "
    "run_agent (or several with run_agents), then wait_for_job to follow it to its result. Jobs "
    "keep running when a wait is abandoned; cancel_job stops one."
)


class RestError(ToolError):
    """A REST error answer, carried as the tool error's text."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = {"status": status, **body}
        super().__init__(json.dumps(self.body))


def bearer(headers: Any) -> str | None:
    auth = (headers or {}).get("authorization", "") if headers is not None else ""
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


class Api:
    """The REST API as seen by one key."""

    def __init__(self, http: httpx.AsyncClient, base: str, key: str | None) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def call(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> tuple[int, Any]:
        try:
            resp = await self.http.request(method, self.base + path, headers=self.headers, **kw)
        except httpx.HTTPError as exc:
            raise RestError(
                503, {"error": "unavailable", "message": f"receiver unreachable: {exc}"}
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": "bad_response", "message": resp.text[:500]}
        if resp.status_code not in ok:
            raise RestError(resp.status_code, body if isinstance(body, dict) else {"error": str(body)})
        return resp.status_code, body

    async def events(self, path: str, last_id: str | None) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
        """(id, event, data) of a Server-Sent Events route until it closes."""
        headers = dict(self.headers)
        if last_id:
            headers["Last-Event-ID"] = last_id
        timeout = httpx.Timeout(10.0, read=None)
        try:
            async with self.http.stream("GET", self.base + path, headers=headers, timeout=timeout) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise RestError(resp.status_code, resp.json())
                ev_id, kind, data = "", "message", ""
                async for line in resp.aiter_lines():
                    if line.startswith("id:"):
                        ev_id = line[3:].strip()
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line == "" and data:
                        yield ev_id, kind, json.loads(data)
                        kind, data = "message", ""
        except httpx.HTTPError as exc:
            raise RestError(
                503, {"error": "unavailable", "message": f"receiver unreachable: {exc}"}
            ) from None


class Subscriptions:
    """Job followers by MCP session id (None over stdio: one session per process)."""

    def __init__(self, per_session: int = MAX_SUBSCRIPTIONS) -> None:
        self.per_session = per_session
        self.followers: dict[str | None, dict[str, asyncio.Task[None]]] = {}

    def count(self, session: str | None) -> int:
        return len(self.followers.get(session, {}))

    def add(self, session: str | None, uri: str, follower: asyncio.Task[None]) -> None:
        self.followers.setdefault(session, {})[uri] = follower
        follower.add_done_callback(lambda done: self._done(session, uri, done))

    def _done(self, session: str | None, uri: str, task: asyncio.Task[None]) -> None:
        mine = self.followers.get(session, {})
        if mine.get(uri) is task:
            del mine[uri]
            if not mine:
                self.followers.pop(session, None)

    def remove(self, session: str | None, uri: str) -> None:
        task = self.followers.get(session, {}).get(uri)
        if task is not None:
            task.cancel()

    def end(self, session: str | None) -> None:
        """The session is gone: stop its followers."""
        for task in list(self.followers.pop(session, {}).values()):
            task.cancel()


def build(
    base_url: str | Callable[[], str],
    *,
    key: str | None = None,
    observe: Observer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    subscriptions: Subscriptions | None = None,
) -> MCPServer:
    """The MCP server calling the REST API at ``base_url`` (a callable: known once the
    receiver listens). ``key`` fixed (stdio) or None: each request's bearer key (HTTP).
    ``subscriptions``: the job followers, given by a host that ends sessions (the receiver)."""
    http = httpx.AsyncClient(timeout=30.0, transport=transport)
    base = base_url if callable(base_url) else lambda: base_url
    subs = subscriptions if subscriptions is not None else Subscriptions()
    # subscriptions=False: no subscriptions/listen (2026-07-28 era); job subscriptions are the
    # handshake era's resources/subscribe, registered below.
    server: MCPServer = MCPServer(
        name="conveyor", title="Conveyor", instructions=INSTRUCTIONS, subscriptions=False
    )

    def api(ctx: Context) -> Api:
        return Api(http, base(), key if key is not None else bearer(ctx.headers))

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Registered under its name, its docstring the description; timed for /metrics."""
        name = fn.__name__

        @functools.wraps(fn)
        async def timed(*args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await fn(*args, **kw)
                outcome = "ok"
                return result
            finally:
                if observe is not None:
                    observe(name, outcome, time.perf_counter() - started)

        server.tool(name=name, description=inspect.cleandoc(fn.__doc__ or ""))(timed)
        return fn

    @tool
    async def list_agents(ctx: Context, project: Project = None) -> dict[str, Any]:
        """List the agents this key may run (architect, dev, pm, ux-design-expert, qa and any
        configured ones, less those its project does not allow). Admin and organisation keys
        name the project; others get their own."""
        _, listed = await api(ctx).call(
            "GET", "/api/agents", params={"project": project} if project else None
        )
        return dict(listed)

    @tool
    async def run_agent(
        ctx: Context,
        agent: Annotated[str, Field(min_length=1, max_length=128, description="Agent name, e.g. qa.")],
        prompt: Prompt,
        files: Annotated[dict[str, str] | None, Field(description="Input files: path -> content.")] = None,
        diff: Annotated[str | None, Field(description="A unified diff to review or apply.")] = None,
        callback_url: Annotated[
            str | None, Field(description="Also POST the signed result here when the job ends.")
        ] = None,
        timeout_ms: Annotated[int | None, Field(ge=1000, le=86_400_000)] = None,
        project: Project = None,
    ) -> dict[str, Any]:
        """Start one agent on a task and return its job (job_id, status, URLs) at once; the
        job runs in the background. Follow it with wait_for_job."""
        return await _submit(api(ctx), agent, prompt, files, diff, callback_url, timeout_ms, project)

    @tool
    async def run_agents(
        ctx: Context,
        agents: Annotated[list[str], Field(min_length=1, max_length=10, description="Agent names.")],
        prompt: Prompt,
        files: Annotated[dict[str, str] | None, Field(description="Input files: path -> content.")] = None,
        diff: Annotated[str | None, Field(description="A unified diff.")] = None,
        project: Project = None,
    ) -> dict[str, Any]:
        """Run several agents on the same task in parallel (a pipeline): one job per agent,
        all started now. Returns the jobs; wait_for_job on each for its result."""
        a = api(ctx)
        jobs = [await _submit(a, agent, prompt, files, diff, None, None, project) for agent in agents]
        return {"jobs": jobs}

    @tool
    async def get_job(ctx: Context, job_id: JobId) -> dict[str, Any]:
        """A job's current record: status (queued, processing, completed, failed, timeout,
        cancelled), progress 0-100, error, and the result once it has one."""
        _, record = await api(ctx).call("GET", f"/api/jobs/{_seg(job_id)}")
        return dict(record)

    @tool
    async def wait_for_job(
        ctx: Context,
        job_id: JobId,
        timeout_s: Annotated[float, Field(gt=0, le=3600, description="Give up waiting after this.")] = 600,
    ) -> dict[str, Any]:
        """Wait until a job ends, reporting its status and progress as MCP progress
        notifications, and return its final record with the result. Abandoning the wait does
        not cancel the job (cancel_job does)."""
        a = api(ctx)
        deadline = time.monotonic() + timeout_s
        last_id: str | None = None
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            async for ev_id, kind, data in a.events(f"/api/jobs/{_seg(job_id)}/stream", last_id):
                last_id = ev_id or last_id
                if kind == "deleted":
                    raise RestError(404, {"error": "not_found", "message": f"job {job_id} was deleted"})
                if kind == "error":
                    raise RestError(503, data)
                record = data
                status = str(data.get("status"))
                await ctx.report_progress(float(data.get("progress", 0)), 100.0, status)
                if status in TERMINAL:
                    _, full = await a.call("GET", f"/api/jobs/{_seg(job_id)}")
                    return dict(full)
                if time.monotonic() >= deadline:
                    break
        return {**record, "waiting": "timed out; the job goes on (call wait_for_job again)"}

    @tool
    async def cancel_job(ctx: Context, job_id: JobId) -> dict[str, Any]:
        """Cancel a queued or running job (a finished one answers 409 conflict)."""
        _, body = await api(ctx).call("POST", f"/api/jobs/{_seg(job_id)}/cancel", ok=(202,))
        return dict(body)

    @tool
    async def list_jobs(
        ctx: Context,
        status: Annotated[
            str | None, Field(description="queued, processing, completed, failed, timeout or cancelled.")
        ] = None,
        agent: str | None = None,
        project: Project = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page.")] = None,
    ) -> dict[str, Any]:
        """The jobs this key can see, oldest first, optionally filtered; page with cursor."""
        params = {"status": status, "agent": agent, "project": project, "limit": limit, "cursor": cursor}
        _, body = await api(ctx).call(
            "GET", "/api/jobs", params={k: v for k, v in params.items() if v is not None}
        )
        return dict(body)

    @tool
    async def get_usage(ctx: Context, project: Project = None) -> dict[str, Any]:
        """What the project's LLM runs cost today and this month (UTC): tokens and US dollars,
        in all and per agent, with the day and month budgets and what is left of them. Over a
        budget, new runs are refused (budget_exceeded) until the period turns."""
        _, body = await api(ctx).call("GET", "/api/usage", params={"project": project} if project else None)
        return dict(body)

    @tool
    async def create_schedule(
        ctx: Context,
        agent: str,
        callback_url: Annotated[str, Field(description="Where each run's signed result is sent.")],
        prompt: str | None = None,
        every: Annotated[str | None, Field(description="An interval such as 15m or 1h.")] = None,
        cron: Annotated[str | None, Field(description="A cron expression (instead of every).")] = None,
        timezone: Annotated[str | None, Field(description="IANA zone for cron, e.g. Europe/Paris.")] = None,
        paused: bool = False,
        project: Project = None,
    ) -> dict[str, Any]:
        """Run an agent on a schedule (every interval or cron). Returns the schedule."""
        body = {
            "agent": agent,
            "callback_url": callback_url,
            "prompt": prompt,
            "every": every,
            "cron": cron,
            "timezone": timezone,
            "paused": paused,
            "project": project,
        }
        _, out = await api(ctx).call(
            "POST", "/api/schedules", ok=(201,), json={k: v for k, v in body.items() if v is not None}
        )
        return dict(out)

    @tool
    async def list_schedules(ctx: Context) -> dict[str, Any]:
        """The schedules this key can see."""
        _, body = await api(ctx).call("GET", "/api/schedules")
        return dict(body)

    @tool
    async def delete_schedule(
        ctx: Context, schedule_id: Annotated[str, Field(min_length=1, max_length=200)]
    ) -> dict[str, Any]:
        """Delete a schedule (jobs it already started go on)."""
        _, body = await api(ctx).call("DELETE", f"/api/schedules/{_seg(schedule_id)}")
        return dict(body)

    @tool
    async def save_site_draft(
        ctx: Context,
        config: Annotated[dict[str, Any], Field(description="The site configuration (see the API docs).")],
        callback_url: str | None = None,
        project: Project = None,
    ) -> dict[str, Any]:
        """Create a site or replace its draft configuration. Returns the site."""
        body = {"config": config, "callback_url": callback_url, "project": project}
        _, out = await api(ctx).call(
            "POST", "/api/sites", ok=(200, 201), json={k: v for k, v in body.items() if v is not None}
        )
        return dict(out)

    @tool
    async def publish_site(
        ctx: Context,
        site_id: Annotated[str, Field(min_length=1, max_length=200)],
        timeout_s: Annotated[float, Field(gt=0, le=3600)] = 600,
    ) -> dict[str, Any]:
        """Publish a site's draft and follow the deployment to its end, reporting progress;
        returns the deployment with its live URL."""
        a = api(ctx)
        _, accepted = await a.call("POST", f"/api/sites/{_seg(site_id)}/publish", ok=(200, 202))
        dep = f"/api/deployments/{_seg(str(accepted['deployment_id']))}"
        deadline = time.monotonic() + timeout_s
        last_id: str | None = None
        step = 0
        while time.monotonic() < deadline:
            async for ev_id, _kind, data in a.events(f"{dep}/stream", last_id):
                last_id = ev_id or last_id
                step += 1
                status = str(data.get("status"))
                await ctx.report_progress(float(step), None, status)
                if status in DEPLOY_TERMINAL:
                    return dict(data)
                if time.monotonic() >= deadline:
                    break
        _, now = await a.call("GET", dep)
        return dict(now)

    @tool
    async def list_dead_letters(
        ctx: Context, limit: Annotated[int, Field(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        """Messages that failed for good (dead letters) this key can see."""
        _, body = await api(ctx).call("GET", "/api/dead-letters", params={"limit": limit})
        return dict(body)

    @tool
    async def replay_dead_letter(ctx: Context, seq: Annotated[int, Field(ge=1)]) -> dict[str, Any]:
        """Send a dead letter (by its seq) through again."""
        _, body = await api(ctx).call("POST", f"/api/dead-letters/{seq}/replay", ok=(200, 202))
        return dict(body)

    @server.resource(
        "conveyor://jobs/{job_id}",
        name="job",
        description="A job's record with its result once it has one.",
        mime_type="application/json",
    )
    async def job_resource(job_id: str, ctx: Context) -> str:
        _, record = await api(ctx).call("GET", f"/api/jobs/{_seg(job_id)}")
        return json.dumps(record)

    def session_of(ctx: ServerRequestContext[Any, Any]) -> tuple[str | None, Api]:
        headers = getattr(ctx.request, "headers", None)
        session = headers.get("mcp-session-id") if headers is not None else None
        return session, Api(http, base(), key if key is not None else bearer(headers))

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        if not uri.startswith(JOB_URI) or len(uri) == len(JOB_URI):
            raise MCPError(INVALID_PARAMS, f"only jobs can be subscribed to ({JOB_URI}{{job_id}}), not {uri}")
        session, a = session_of(ctx)
        job = f"/api/jobs/{_seg(uri[len(JOB_URI) :])}"
        if uri in subs.followers.get(session, {}):
            return EmptyResult()
        if subs.count(session) >= subs.per_session:
            raise MCPError(
                INVALID_REQUEST,
                f"this session has {subs.per_session} subscriptions; unsubscribe from one first",
            )
        try:
            _, record = await a.call("GET", job)
        except RestError as exc:
            # What the key may not see is not found, exactly as over REST.
            code = RESOURCE_NOT_FOUND if exc.status == 404 else INVALID_PARAMS
            raise MCPError(code, json.dumps(exc.body), exc.body) from None
        if record.get("status") not in TERMINAL:
            follower = follow(ctx.session, a, job, uri, (record.get("status"), record.get("progress")))
            subs.add(session, uri, asyncio.create_task(follower, name=f"mcp-follow {uri}"))
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        session, _ = session_of(ctx)
        subs.remove(session, str(params.uri))
        return EmptyResult()

    # MCPServer has no decorator for these; its low-level server's add_request_handler is the
    # SDK's way to serve a spec method it leaves out.
    server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    server._lowlevel_server.add_request_handler(
        "resources/unsubscribe", UnsubscribeRequestParams, unsubscribe
    )

    return server


async def follow(session: ServerSession, a: Api, job: str, uri: str, seen: tuple[Any, Any]) -> None:
    """Tell the subscriber each time the job's status or progress moves, until it ends."""
    last_id: str | None = None
    try:
        while True:
            async for ev_id, kind, data in a.events(f"{job}/stream", last_id):
                last_id = ev_id or last_id
                if kind == "error":
                    return
                now = (data.get("status"), data.get("progress"))
                if kind == "deleted" or now != seen:
                    seen = now
                    await session.send_resource_updated(uri)
                if kind == "deleted" or now[0] in TERMINAL:
                    return
    except (RestError, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return  # the job, the receiver or the session went: nothing more to tell


async def _submit(
    a: Api,
    agent: str,
    prompt: str,
    files: dict[str, str] | None,
    diff: str | None,
    callback_url: str | None,
    timeout_ms: int | None,
    project: str | None,
) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if files:
        inputs["files"] = files
    if diff:
        inputs["diff"] = diff
    body: dict[str, Any] = {"agent": agent, "prompt": prompt, "input": inputs}
    for k, v in (("callback_url", callback_url), ("timeout_ms", timeout_ms), ("project", project)):
        if v is not None:
            body[k] = v
    _, out = await a.call("POST", "/api/jobs", ok=(202,), json=body)
    return dict(out)


def _seg(value: str) -> str:
    """One path segment: a slash in an id must not reach another route."""
    return quote(value, safe="")
