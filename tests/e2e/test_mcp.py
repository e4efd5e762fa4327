"""The MCP server end to end, with the SDK's own client, every service a real process: over
Streamable HTTP (the receiver's /mcp) and over stdio (`conveyor mcp` as a subprocess). The
same scenario runs on both: the tools are listed; the qa agent runs and is waited for, with
progress notifications before the result; a running job is cancelled; one project's key
cannot see another's job; a bad argument is a tool error and the session goes on; a REST
error arrives as a tool error with the REST API's own code and message. A client subscribed to a
job resource hears of each change until the job ends, and nothing after unsubscribing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import ResourceUpdatedNotification

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env

ADMIN = "mcp-e2e-admin-key"
# qa runs the builtin sleep here: a prompt of digits is its length in ms, so a job lasts long
# enough to be seen processing, waited for and cancelled.
AGENTS = json.dumps([{"name": "qa", "backend": "builtin", "builtin": "sleep"}])
TOOLS = {
    "list_agents",
    "run_agent",
    "run_agents",
    "get_job",
    "wait_for_job",
    "cancel_job",
    "list_jobs",
    "get_usage",
    "create_schedule",
    "list_schedules",
    "delete_schedule",
    "save_site_draft",
    "publish_site",
    "list_dead_letters",
    "replay_dead_letter",
}

Connect = Callable[..., contextlib.AbstractAsyncContextManager[Client]]


class System:
    def __init__(self, url: str, http: httpx.AsyncClient, keys: dict[str, str]) -> None:
        self.url, self.http, self.keys = url, http, keys


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    env = service_env(
        nats_server.url,
        ADMIN_API_KEY=ADMIN,
        CONVEYOR_SECRET_KEYS=new_key_setting(),
        AGENTS=AGENTS,
        MCP_MAX_SESSIONS_PER_KEY="2",
        # One job at a time: a job can be held queued behind another.
        CONCURRENCY="1",
    )
    procs = [ServiceProcess(name, env, tmp_path / f"{name}.log") for name in ("receiver", "executor")]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=procs[0].url, timeout=10, headers=auth) as http:
            keys = {}
            for name in ("a", "b"):
                resp = await http.post("/api/admin/orgs", json={"org_id": f"org-{name}", "name": name})
                assert resp.status_code == 201, resp.text
                resp = await http.post(
                    "/api/admin/projects", json={"project_id": name, "org_id": f"org-{name}", "name": name}
                )
                assert resp.status_code == 201, resp.text
                resp = await http.post("/api/admin/keys", json={"name": f"key-{name}", "project_id": name})
                assert resp.status_code == 201, resp.text
                keys[name] = resp.json()["key"]
            yield System(procs[0].url, http, keys)
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


def over_http(system: System) -> Connect:
    @contextlib.asynccontextmanager
    async def connect(key: str, **kw: Any) -> AsyncIterator[Client]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        transport = streamable_http_client(f"{system.url}/mcp", http_client=http)
        async with http, Client(transport, **kw) as client:
            yield client

    return connect


def over_stdio(system: System) -> Connect:
    @contextlib.asynccontextmanager
    async def connect(key: str, **kw: Any) -> AsyncIterator[Client]:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "conveyor.cli", "mcp", "--url", system.url, "--key", key]
        )
        async with Client(params, **kw) as client:
            yield client

    return connect


def error_of(result: Any) -> dict[str, Any]:
    """The REST error body a tool error carries."""
    assert result.is_error, result
    text = result.content[0].text
    return dict(json.loads(text[text.index("{") :]))


@pytest.mark.parametrize("transport", [over_http, over_stdio], ids=["streamable-http", "stdio"])
async def test_mcp_tools_against_the_running_system(system: System, transport: Any) -> None:
    connect = transport(system)
    async with connect(system.keys["a"]) as a, connect(system.keys["b"]) as b:
        listed = await a.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(t.description for t in listed.tools)
        agents = await a.call_tool("list_agents", {})
        assert not agents.is_error and "qa" in agents.structured_content["agents"]
        assert agents.structured_content["project"] == "a"  # the key's own project

        # Run qa and wait: progress notifications arrive before the result.
        started = await a.call_tool("run_agent", {"agent": "qa", "prompt": "1500"})
        assert not started.is_error, started
        job_id = started.structured_content["job_id"]
        progress: list[tuple[float, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))

        done = await a.call_tool("wait_for_job", {"job_id": job_id}, progress_callback=on_progress)
        seen_at_result = list(progress)
        assert not done.is_error, done
        assert done.structured_content["status"] == "completed"
        assert "slept 1500 ms" in done.structured_content["result"]["result"]["summary"]
        assert len(seen_at_result) >= 2, seen_at_result
        assert seen_at_result[-1] == (100.0, "completed")
        assert "processing" in {m for _, m in seen_at_result}

        # The job as a resource.
        read = await a.read_resource(f"conveyor://jobs/{job_id}")
        assert json.loads(read.contents[0].text)["status"] == "completed"

        # One project's key cannot see the other's job: the REST API's 404, as a tool error.
        hidden = await b.call_tool("get_job", {"job_id": job_id})
        rest = await system.http.get(
            f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {system.keys['b']}"}
        )
        assert rest.status_code == 404
        assert error_of(hidden) == {"status": 404, **rest.json()}
        assert error_of(await b.call_tool("cancel_job", {"job_id": job_id}))["status"] == 404
        listed_b = await b.call_tool("list_jobs", {})
        assert job_id not in {j["job_id"] for j in listed_b.structured_content["jobs"]}

        # Cancel a running job.
        long = await a.call_tool("run_agent", {"agent": "qa", "prompt": "60000"})
        long_id = long.structured_content["job_id"]

        async def processing() -> bool:
            got = await a.call_tool("get_job", {"job_id": long_id})
            return got.structured_content["status"] == "processing"

        await eventually(processing, timeout=20)
        # A wait the client abandons leaves the job running.
        with anyio.move_on_after(1.0) as abandoned:
            await a.call_tool("wait_for_job", {"job_id": long_id})
        assert abandoned.cancelled_caught
        await asyncio.sleep(0.5)
        assert await processing()
        cancelled = await a.call_tool("cancel_job", {"job_id": long_id})
        assert not cancelled.is_error, cancelled
        ended = await a.call_tool("wait_for_job", {"job_id": long_id, "timeout_s": 30})
        assert ended.structured_content["status"] == "cancelled"

        # A bad argument is a tool error, and the session goes on.
        bad = await a.call_tool("get_job", {})
        assert bad.is_error and "job_id" in bad.content[0].text
        bad = await a.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": "soon"})
        assert bad.is_error and "timeout_s" in bad.content[0].text
        # A REST error keeps its code and message.
        unknown = await a.call_tool("run_agent", {"agent": "nobody", "prompt": "x"})
        rest = await system.http.post(
            "/api/jobs",
            json={"agent": "nobody", "prompt": "x", "input": {}},
            headers={"Authorization": f"Bearer {system.keys['a']}"},
        )
        assert error_of(unknown) == {"status": 422, **rest.json()}
        assert (await a.call_tool("get_job", {"job_id": job_id})).structured_content["status"] == "completed"

        # Usage is what GET /api/usage answers for the key's project; another project's is a 404.
        usage = await a.call_tool("get_usage", {})
        assert not usage.is_error, usage
        rest = await system.http.get("/api/usage", headers={"Authorization": f"Bearer {system.keys['a']}"})
        assert usage.structured_content["project"] == "a" == rest.json()["project"]
        assert usage.structured_content["day"]["cost_usd"] == rest.json()["day"]["cost_usd"]
        assert error_of(await b.call_tool("get_usage", {"project": "a"}))["status"] == 404


async def subscribe(client: Client, uri: str, *, on: bool = True) -> None:
    # resources/subscribe is the handshake era's (mode="legacy"); the SDK flags it as removed
    # at 2026-07-28, which is not the protocol these sessions speak.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await (client.subscribe_resource(uri) if on else client.unsubscribe_resource(uri))


@pytest.mark.parametrize("transport", [over_http, over_stdio], ids=["streamable-http", "stdio"])
async def test_job_resource_subscriptions(system: System, transport: Any) -> None:
    connect = transport(system)
    updated: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updated.append(message.params.uri)

    async with (
        connect(system.keys["a"], mode="legacy", message_handler=on_message) as a,
        connect(system.keys["b"], mode="legacy") as b,
    ):
        caps = a.server_capabilities.resources
        assert caps is not None and caps.subscribe

        # A ~1.5 s job, subscribed to while it waits behind another (so it has changes ahead
        # of it for sure): an update for each, and once the last has come it is completed.
        blocker = (await a.call_tool("run_agent", {"agent": "qa", "prompt": "60000"})).structured_content

        async def blocking() -> None:
            got = await a.call_tool("get_job", {"job_id": blocker["job_id"]})
            assert got.structured_content["status"] == "processing"

        await eventually(blocking, timeout=20)
        started = await a.call_tool("run_agent", {"agent": "qa", "prompt": "1500"})
        job_id = started.structured_content["job_id"]
        uri = f"conveyor://jobs/{job_id}"
        await subscribe(a, uri)
        assert json.loads((await a.read_resource(uri)).contents[0].text)["status"] == "queued"
        assert not (await a.call_tool("cancel_job", {"job_id": blocker["job_id"]})).is_error
        status = None
        while status != "completed":
            seen = updated.count(uri)

            async def another(seen: int = seen) -> None:
                assert updated.count(uri) > seen

            await eventually(another, timeout=30)
            read = await a.read_resource(uri)
            status = json.loads(read.contents[0].text)["status"]
        assert updated.count(uri) >= 2, updated
        assert set(updated) == {uri}

        # Another project's job: the REST API's 404 as an error, and no subscription.
        with pytest.raises(MCPError) as hidden:
            await subscribe(b, uri)
        assert hidden.value.code == -32002 and hidden.value.data["status"] == 404
        with pytest.raises(MCPError) as not_a_job:
            await subscribe(a, "conveyor://schedules/x")
        assert "only jobs" in not_a_job.value.message

        # Unsubscribed: the job's cancellation (a change) is not told.
        long = await a.call_tool("run_agent", {"agent": "qa", "prompt": "60000"})
        long_id = long.structured_content["job_id"]
        long_uri = f"conveyor://jobs/{long_id}"
        await subscribe(a, long_uri)
        await subscribe(a, long_uri, on=False)
        assert not (await a.call_tool("cancel_job", {"job_id": long_id})).is_error
        ended = await a.call_tool("wait_for_job", {"job_id": long_id, "timeout_s": 30})
        assert ended.structured_content["status"] == "cancelled"
        # Still subscribed, another job's change is told after the cancellation's would be.
        third = await a.call_tool("run_agent", {"agent": "qa", "prompt": "300"})
        third_uri = f"conveyor://jobs/{third.structured_content['job_id']}"
        await subscribe(a, third_uri)

        async def third_told() -> None:
            assert third_uri in updated

        await eventually(third_told, timeout=30)
        assert long_uri not in updated, updated


async def test_mcp_endpoint_needs_a_key_and_counts_tool_calls(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.url, timeout=10) as anon:
        resp = await anon.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert resp.status_code == 401 and resp.json()["error"] == "missing_api_key"
        resp = await anon.post("/mcp", json={}, headers={"Authorization": "Bearer nope"})
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_api_key"
    async with over_http(system)(system.keys["a"]) as a:
        assert not (await a.call_tool("list_agents", {})).is_error
        assert (await a.call_tool("get_job", {"job_id": "missing"})).is_error
        metrics = (await system.http.get("/metrics")).text
    assert 'mcp_tool_calls_total{outcome="ok",tool="list_agents"} 1.0' in metrics
    assert 'mcp_tool_calls_total{outcome="error",tool="get_job"} 1.0' in metrics
    assert 'mcp_tool_duration_seconds_count{tool="list_agents"} 1.0' in metrics
    assert "mcp_sessions " in metrics


async def test_sessions_per_key_are_limited(system: System) -> None:
    key = system.keys["a"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=system.url, timeout=10, headers=headers) as http:
        opened = []
        for _ in range(2):
            resp = await http.post("/mcp", json=initialize)
            assert resp.status_code == 200, resp.text
            opened.append(resp.headers["mcp-session-id"])
        resp = await http.post("/mcp", json=initialize)
        assert (resp.status_code, resp.json()["error"]) == (429, "too_many_sessions")
        # Another key's sessions are its own; another key cannot use this key's session.
        other = {"Authorization": f"Bearer {system.keys['b']}", "mcp-session-id": opened[0]}
        resp = await http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=other
        )
        assert resp.status_code == 404
        metrics = (await system.http.get("/metrics")).text
        assert "mcp_sessions 2.0" in metrics
        # Ending one makes room.
        resp = await http.delete(
            "/mcp", headers={"mcp-session-id": opened[0], "mcp-protocol-version": "2025-06-18"}
        )
        assert resp.status_code == 200, resp.text
        resp = await http.post("/mcp", json=initialize)
        assert resp.status_code == 200, resp.text
