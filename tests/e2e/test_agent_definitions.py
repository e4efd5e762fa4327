"""Agents as data end to end: the receiver and the executor as real processes, the executor's
LLM a local server that follows OpenAI's chat completions format. Definitions are made,
versioned, validated, hidden from other projects, run, delegated to and chained in pipelines
through the API; retries wait 1 s, 2 s, 4 s."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.rawhttp import serve_app

ADMIN = "agents-e2e-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
_TAG = re.compile(r"TAG-[a-z0-9-]+")


@dataclass
class Call:
    at: float
    system: str
    user: str


@dataclass
class FakeLLM:
    """OpenAI chat completions. Behaviour by the agent's system prompt: "FAIL" answers 400
    (not worth a retry), "FLAKY" answers 500 to its first three calls; otherwise a result whose
    summary is "<tag> done" (the TAG-... in the system prompt, else its first sentence)
    and whose suggestions say which tags the agent saw in its input."""

    calls: list[Call] = field(default_factory=list)
    flaky_left: int = 3
    url: str = ""

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
        self.calls.append(Call(time.monotonic(), system, user))
        if "FAIL" in system:
            return web.json_response(
                {"error": {"message": "refused", "type": "invalid_request_error"}}, status=400
            )
        if "FLAKY" in system and self.flaky_left > 0:
            self.flaky_left -= 1
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=500)
        tags = _TAG.findall(system)
        name = tags[0] if tags else system.split(".")[0]
        seen = sorted({t for t in _TAG.findall(user) if t != name})
        answer = {"summary": f"{name} done", "suggestions": [f"saw {t}" for t in seen]}
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-test",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": json.dumps(answer)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    def of(self, tag: str) -> list[Call]:
        return [c for c in self.calls if tag in c.system]


@dataclass
class System:
    http: httpx.AsyncClient
    llm: FakeLLM
    keys: dict[str, dict[str, str]]


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    llm = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm.completions)
    runner, port = await serve_app(app, shutdown_timeout=0.5)
    llm.url = f"http://127.0.0.1:{port}/v1"
    env = service_env(
        nats_server.url,
        ADMIN_API_KEY=ADMIN,
        CONVEYOR_SECRET_KEYS=new_key_setting(),
        OPENAI_BASE_URL=llm.url,
        OPENAI_API_KEY="sk-test",
        OPENAI_MODEL="gpt-test",
        SCHEDULE_MIN_INTERVAL_S="1",  # a schedule of a definition fires within the test
    )
    procs = [ServiceProcess(name, env, tmp_path / f"{name}.log") for name in ("receiver", "executor")]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with httpx.AsyncClient(base_url=procs[0].url, timeout=10, headers=AUTH) as http:
            keys = {}
            for name in ("a", "b"):
                await http.post("/api/admin/orgs", json={"org_id": f"org-{name}", "name": name})
                resp = await http.post(
                    "/api/admin/projects", json={"project_id": name, "org_id": f"org-{name}", "name": name}
                )
                assert resp.status_code == 201, resp.text
                resp = await http.post("/api/admin/keys", json={"name": f"key-{name}", "project_id": name})
                assert resp.status_code == 201, resp.text
                keys[name] = {"Authorization": f"Bearer {resp.json()['key']}"}
            yield System(http, llm, keys)
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        await runner.cleanup()


async def finished(s: System, job_id: str, key: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        rec = (await s.http.get(f"/api/jobs/{job_id}", headers=key)).json()
        assert rec["status"] not in ("queued", "processing"), rec
        return dict(rec)

    return await eventually(check, timeout=timeout, interval=0.25)


def agent(tag: str, **extra: Any) -> dict[str, Any]:
    return {"description": f"the {tag} agent", "system_prompt": f"You are {tag}.", "retries": 0, **extra}


# --- item 1: definitions -----------------------------------------------------------------------


async def test_definitions_are_versioned_and_their_fields_checked(system: System) -> None:
    http, a = system.http, system.keys["a"]
    resp = await http.post("/api/agents", json={"id": "reviewer", **agent("TAG-rev")}, headers=a)
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert (made["id"], made["project"], made["version"], made["read_only"]) == ("reviewer", "a", 1, False)
    assert resp.headers["Location"].endswith("/api/agents/reviewer")

    resp = await http.put("/api/agents/reviewer", json=agent("TAG-rev2", model="gpt-4o"), headers=a)
    assert resp.status_code == 200 and resp.json()["version"] == 2 and resp.json()["model"] == "gpt-4o"
    # Compare-and-set on the version the caller read.
    stale = await http.put("/api/agents/reviewer", json=agent("x"), headers={**a, "If-Match": "1"})
    assert (stale.status_code, stale.json()["error"], stale.json()["version"]) == (412, "version_mismatch", 2)
    resp = await http.put("/api/agents/reviewer", json=agent("TAG-rev3"), headers={**a, "If-Match": "2"})
    assert resp.json()["version"] == 3
    got = (await http.get("/api/agents/reviewer", headers=a)).json()
    assert got["version"] == 3 and got["system_prompt"] == "You are TAG-rev3."
    again = await http.post("/api/agents", json={"id": "reviewer", **agent("x")}, headers=a)
    assert (again.status_code, again.json()["error"], again.json()["field"]) == (409, "agent_exists", "id")

    # Validation names the field; the operator's fields are refused by name.
    bad = {
        "command": {"command": ["rm", "-rf", "/"]},
        "base_url": {"base_url": "http://127.0.0.1:1/"},
        "api_key": {"api_key": "sk-mine"},
        "retries": {"retries": 4},
        "timeout_ms": {"timeout_ms": 5},
        "backend": {"backend": "command"},
        "tools[0]": {"tools": ["shell"]},
        "allowed_hosts": {"tools": [], "allowed_hosts": ["example.com"]},
        "stages": {"kind": "pipeline"},
        "stages[1].agents[0]": {"kind": "pipeline", "stages": [{"agents": ["qa"]}, {"agents": ["ghost"]}]},
        "stages[0].on_failure": {"kind": "pipeline", "stages": [{"agents": ["qa"], "on_failure": "retry"}]},
        "builtin": {"backend": "builtin", "builtin": "nothing"},
    }
    for name, fields in bad.items():
        resp = await http.post("/api/agents", json={"id": "bad", **fields}, headers=a)
        assert resp.status_code == 422, (name, resp.text)
        assert resp.json()["field"] == name, (name, resp.json())
        assert resp.json()["message"].startswith(name.split("[")[0]), resp.json()
    resp = await http.post("/api/agents", json={"id": "no/slash"}, headers=a)
    assert (resp.status_code, resp.json()["field"]) == (422, "id")

    # Built-ins are read-only definitions.
    listed = (await http.get("/api/agents", headers=a)).json()
    shown = {d["id"]: d for d in listed["definitions"]}
    assert (
        shown["qa"]["read_only"]
        and shown["full-pipeline"]["read_only"]
        and not shown["reviewer"]["read_only"]
    )
    assert [s["agents"] for s in shown["full-pipeline"]["stages"]] == [
        ["architect"],
        ["pm", "ux-design-expert"],
        ["dev"],
        ["qa"],
    ]
    assert "reviewer" in listed["agents"]
    for method in ("PUT", "DELETE"):
        for name in ("qa", "full-pipeline"):
            resp = await http.request(method, f"/api/agents/{name}", json=agent("x"), headers=a)
            assert (resp.status_code, resp.json()["error"]) == (409, "read_only_agent"), resp.text
    for taken in ("qa", "full-pipeline", "sleep"):  # sleep: an executor's own agent
        resp = await http.post("/api/agents", json={"id": taken}, headers=a)
        assert (resp.status_code, resp.json()["error"]) == (409, "agent_exists"), taken

    # A read-only key reads, never writes.
    resp = await http.post("/api/admin/keys", json={"name": "ro", "project_id": "a", "read_only": True})
    ro = {"Authorization": f"Bearer {resp.json()['key']}"}
    assert (await http.get("/api/agents/reviewer", headers=ro)).status_code == 200
    assert (await http.put("/api/agents/reviewer", json=agent("x"), headers=ro)).status_code == 403

    gone = await http.delete("/api/agents/reviewer", headers=a)
    assert gone.status_code == 200 and gone.json() == {"id": "reviewer", "version": 3, "deleted": True}
    assert (await http.get("/api/agents/reviewer", headers=a)).status_code == 404


async def test_another_projects_definition_is_a_404_everywhere(system: System) -> None:
    http, a, b = system.http, system.keys["a"], system.keys["b"]
    assert (
        await http.post("/api/agents", json={"id": "secret-sauce", **agent("TAG-a")}, headers=a)
    ).status_code == 201
    for method, path in (
        ("GET", "/api/agents/secret-sauce"),
        ("PUT", "/api/agents/secret-sauce"),
        ("DELETE", "/api/agents/secret-sauce"),
        ("POST", "/api/agents/secret-sauce/run"),
    ):
        body = agent("x") if method == "PUT" else {"prompt": "go"}
        resp = await http.request(method, path, json=body, headers=b)
        assert (resp.status_code, resp.json()["error"]) == (404, "agent_not_found"), (method, resp.text)
    assert "secret-sauce" not in (await http.get("/api/agents", headers=b)).json()["agents"]
    for path, body in (
        ("/api/jobs", {"agent": "secret-sauce", "prompt": "go"}),
        ("/api/agents/delegate", {"agents": ["qa", "secret-sauce"], "prompt": "go"}),
        ("/api/routes", {"routes": {"custom.event": ["secret-sauce"]}}),
    ):
        resp = await http.request("PUT" if path == "/api/routes" else "POST", path, json=body, headers=b)
        assert resp.status_code == 422, (path, resp.text)
    # b may make its own of the same name: a different agent.
    assert (
        await http.post("/api/agents", json={"id": "secret-sauce", **agent("TAG-b")}, headers=b)
    ).status_code == 201
    job = (await http.post("/api/agents/secret-sauce/run", json={"prompt": "go"}, headers=b)).json()["job_id"]
    rec = await finished(system, job, b)
    assert rec["status"] == "completed" and rec["result"]["result"]["summary"] == "TAG-b done"
    assert (await http.get(f"/api/jobs/{job}", headers=a)).status_code == 404


async def test_a_job_records_the_version_it_ran(system: System) -> None:
    http, a = system.http, system.keys["a"]
    await http.post("/api/agents", json={"id": "versioned", **agent("TAG-v1")}, headers=a)
    first = (await http.post("/api/agents/versioned/run", json={"prompt": "go"}, headers=a)).json()
    rec = await finished(system, first["job_id"], a)
    assert (rec["status"], rec["agent"], rec["agent_version"]) == ("completed", "versioned", 1)
    assert rec["result"]["result"]["summary"] == "TAG-v1 done"
    await http.put("/api/agents/versioned", json=agent("TAG-v2"), headers=a)
    # POST /api/jobs runs a definition too.
    second = (await http.post("/api/jobs", json={"agent": "versioned", "prompt": "go"}, headers=a)).json()
    rec = await finished(system, second["job_id"], a)
    assert rec["agent_version"] == 2 and rec["result"]["result"]["summary"] == "TAG-v2 done"
    builtin = (await http.post("/api/agents/qa/run", json={"prompt": "go"}, headers=a)).json()
    rec = await finished(system, builtin["job_id"], a)
    assert rec["status"] == "completed" and rec["agent_version"] is None


async def test_a_schedule_runs_the_projects_definition(system: System) -> None:
    http, a, b = system.http, system.keys["a"], system.keys["b"]
    await http.post("/api/agents", json={"id": "nightly", **agent("TAG-nightly")}, headers=a)
    body = {"agent": "nightly", "every": "1s", "callback_url": "http://127.0.0.1:9/cb", "prompt": "go"}
    resp = await http.post("/api/schedules", json=body, headers=a)
    assert resp.status_code == 201, resp.text
    sid = resp.json()["schedule_id"]
    # Another project has no such agent: refused by name, as POST /api/jobs refuses it.
    refused = await http.post("/api/schedules", json=body, headers=b)
    assert (refused.status_code, refused.json()["field"]) == (422, "agent"), refused.text
    # Nor may a schedule be switched to an agent the project cannot run.
    patched = await http.patch(f"/api/schedules/{sid}", json={"agent": "nobody"}, headers=a)
    assert (patched.status_code, patched.json()["error"]) == (422, "unknown_agent"), patched.text

    async def ran() -> str:
        view = (await http.get(f"/api/schedules/{sid}", headers=a)).json()
        assert view["last_run"] is not None, view
        return str(view["last_run"]["job_id"])

    job = await eventually(ran, timeout=20, interval=0.25)
    rec = await finished(system, job, a)
    assert (rec["status"], rec["agent"], rec["schedule_id"], rec["agent_version"]) == (
        "completed",
        "nightly",
        sid,
        1,
    ), rec
    assert rec["result"]["result"]["summary"] == "TAG-nightly done"
    assert (await http.delete(f"/api/schedules/{sid}", headers=a)).status_code in (200, 204)


async def test_delegate_runs_three_agents_in_parallel_with_one_result(system: System) -> None:
    http, a = system.http, system.keys["a"]
    for tag in ("one", "two"):
        await http.post("/api/agents", json={"id": f"helper-{tag}", **agent(f"TAG-{tag}")}, headers=a)
    body = {"agents": ["helper-one", "helper-two", "qa"], "prompt": "look at TAG-task", "input": {"x": 1}}
    once = {**a, "Idempotency-Key": "delegate-once"}
    resp = await http.post("/api/agents/delegate", json=body, headers=once)
    assert resp.status_code == 202 and not resp.json()["duplicate"], resp.text
    job = resp.json()["job_id"]
    again = await http.post("/api/agents/delegate", json=body, headers=once)
    assert (again.status_code, again.json()["job_id"], again.json()["duplicate"]) == (202, job, True)
    rec = await finished(system, job, a)
    assert rec["status"] == "completed" and rec["backend"] == "fanout"
    assert rec["children"] == [f"{job}-helper-one", f"{job}-helper-two", f"{job}-qa"]
    summary = rec["result"]["result"]["summary"]
    assert summary.startswith(
        "3 agents ran in parallel: helper-one completed, helper-two completed, qa completed."
    )
    assert "- helper-one: TAG-one done" in summary and "- helper-two: TAG-two done" in summary
    # Each child got the task and the caller's input, not the delegation request.
    for tag in ("TAG-one", "TAG-two"):
        [call] = system.llm.of(tag)
        assert "Task: look at TAG-task" in call.user and '{"x":1}' in call.user and "helper-" not in call.user
    resp = await http.post("/api/agents/delegate", json={"agents": ["qa", "qa"], "prompt": "x"}, headers=a)
    assert (resp.status_code, resp.json()["field"]) == (422, "agents")
    resp = await http.post(
        "/api/agents/delegate", json={"agents": ["qa", "nobody"], "prompt": "x"}, headers=a
    )
    assert (resp.status_code, resp.json()["field"]) == (422, "agents[1]")


async def test_project_routes_send_its_events_to_its_agents(system: System) -> None:
    http, a = system.http, system.keys["a"]
    await http.post("/api/agents", json={"id": "router-target", **agent("TAG-routed")}, headers=a)
    resp = await http.put(
        "/api/routes", json={"routes": {"agent.task_requested": ["router-target"]}}, headers=a
    )
    assert resp.status_code == 200 and resp.json()["version"] == 1
    assert (await http.get("/api/routes", headers=a)).json()["routes"] == {
        "agent.task_requested": ["router-target"]
    }
    resp = await http.put("/api/routes", json={"routes": {"x": ["nobody"]}}, headers=a)
    assert (resp.status_code, resp.json()["field"]) == (422, "routes.x[0]")
    resp = await http.delete("/api/agents/router-target", headers=a)
    assert (resp.status_code, resp.json()["error"]) == (409, "agent_in_use")
    assert (await http.get("/api/routes", headers=system.keys["b"])).json()["routes"] == {}


# --- item 2: pipelines -------------------------------------------------------------------------


async def test_a_four_stage_pipeline_whose_last_stage_sees_the_first(system: System) -> None:
    http, a = system.http, system.keys["a"]
    for tag in ("s1", "s2a", "s2b", "s3", "s4"):
        assert (
            await http.post("/api/agents", json={"id": tag, **agent(f"TAG-{tag}")}, headers=a)
        ).status_code == 201
    pipeline = {
        "id": "four",
        "kind": "pipeline",
        "description": "four stages",
        "stages": [{"agents": ["s1"]}, {"agents": ["s2a", "s2b"]}, {"agents": ["s3"]}, {"agents": ["s4"]}],
    }
    assert (await http.post("/api/agents", json=pipeline, headers=a)).status_code == 201
    resp = await http.post(
        "/api/agents/four/run", json={"prompt": "build it", "input": {"k": "v"}}, headers=a
    )
    job = resp.json()["job_id"]
    rec = await finished(system, job, a)
    assert rec["status"] == "completed" and rec["backend"] == "pipeline" and rec["progress"] == 100
    assert rec["agent_version"] == 1 and rec["pipeline"]["stage"] == 3
    assert rec["children"] == [
        f"{job}-s1-s1",
        f"{job}-s2-s2a",
        f"{job}-s2-s2b",
        f"{job}-s3-s3",
        f"{job}-s4-s4",
    ]
    # The last stage's input holds the first stage's result (and the job's own input).
    [last] = system.llm.of("TAG-s4")
    assert "TAG-s1 done" in last.user and '"k":"v"' in last.user and "Task: build it" in last.user
    [first] = system.llm.of("TAG-s1")
    assert "TAG-s" not in first.user  # the first stage saw nothing before it
    result = rec["result"]["result"]
    assert result["summary"].startswith(
        "pipeline four: 4 of 4 stages ran: stage 1 (s1) completed; stage 2 (s2a, s2b) completed; "
        "stage 3 (s3) completed; stage 4 (s4) completed."
    )
    assert "[stage 4 s4] saw TAG-s1" in result["suggestions"]
    # Stages ran in order: each stage's calls after every call of the stage before.
    order = [c.system for c in system.llm.calls]
    assert (
        order.index("You are TAG-s4.")
        > order.index("You are TAG-s3.")
        > max(order.index("You are TAG-s2a."), order.index("You are TAG-s2b."))
        > order.index("You are TAG-s1.")
    )


async def test_an_agent_a_pipeline_runs_may_not_become_a_pipeline(system: System) -> None:
    http, a = system.http, system.keys["a"]
    await http.post("/api/agents", json={"id": "inner", **agent("TAG-inner")}, headers=a)
    outer = {"id": "outer", "kind": "pipeline", "stages": [{"agents": ["inner"]}]}
    assert (await http.post("/api/agents", json=outer, headers=a)).status_code == 201
    resp = await http.put(
        "/api/agents/inner", json={"kind": "pipeline", "stages": [{"agents": ["qa"]}]}, headers=a
    )
    assert (resp.status_code, resp.json()["field"]) == (422, "kind"), resp.text
    nested = {"id": "nested", "kind": "pipeline", "stages": [{"agents": ["outer"]}]}
    resp = await http.post("/api/agents", json=nested, headers=a)
    assert (resp.status_code, resp.json()["field"]) == (422, "stages[0].agents[0]"), resp.text


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
async def test_a_failed_stage_stops_or_goes_on_as_defined(system: System, on_failure: str) -> None:
    http, a = system.http, system.keys["a"]
    await http.post("/api/agents", json={"id": "first", **agent("TAG-first")}, headers=a)
    await http.post("/api/agents", json={"id": "breaks", **agent("TAG-breaks FAIL")}, headers=a)
    await http.post("/api/agents", json={"id": "after", **agent("TAG-after")}, headers=a)
    stages = [{"agents": ["first"]}, {"agents": ["breaks"], "on_failure": on_failure}, {"agents": ["after"]}]
    await http.post("/api/agents", json={"id": "p", "kind": "pipeline", "stages": stages}, headers=a)
    job = (await http.post("/api/agents/p/run", json={"prompt": "go"}, headers=a)).json()["job_id"]
    rec = await finished(system, job, a)
    summary = rec["result"]["result"]["summary"]
    if on_failure == "stop":
        assert rec["status"] == "failed" and rec["children"] == [f"{job}-s1-first", f"{job}-s2-breaks"]
        assert summary.startswith(
            "pipeline p: 2 of 3 stages ran, stopped after stage 2: "
            "stage 1 (first) completed; stage 2 (breaks) failed."
        )
        assert system.llm.of("TAG-after") == []
        assert (await http.get(f"/api/jobs/{job}-s3-after", headers=a)).status_code == 404
    else:
        assert rec["status"] == "completed", rec
        assert rec["children"] == [f"{job}-s1-first", f"{job}-s2-breaks", f"{job}-s3-after"]
        assert summary.startswith(
            "pipeline p: 3 of 3 stages ran: "
            "stage 1 (first) completed; stage 2 (breaks) failed; stage 3 (after) completed."
        )
        [after] = system.llm.of("TAG-after")
        assert '"status":"failed"' in after.user and "TAG-first done" in after.user
    assert "breaks failed" in rec["error"]


async def test_the_built_in_full_pipeline_runs(system: System) -> None:
    http, a = system.http, system.keys["a"]
    job = (await http.post("/api/agents/full-pipeline/run", json={"prompt": "a todo app"}, headers=a)).json()[
        "job_id"
    ]
    rec = await finished(system, job, a, timeout=60)
    assert rec["status"] == "completed", rec
    assert [s["agents"] for s in rec["pipeline"]["stages"]] == [
        ["architect"],
        ["pm", "ux-design-expert"],
        ["dev"],
        ["qa"],
    ]
    # qa (the last stage) was given what the architect answered.
    [qa] = [c for c in system.llm.calls if c.system.startswith("You are a QA engineer")]
    [architect] = [c for c in system.llm.calls if c.system.startswith("You are a software architect")]
    assert "You are a software architect done" not in architect.user
    assert "You are a software architect done" in qa.user


# --- item 8: retries ---------------------------------------------------------------------------


async def test_three_retries_wait_one_two_four_seconds(system: System) -> None:
    http, a = system.http, system.keys["a"]
    resp = await http.post(
        "/api/agents", json={"id": "flaky", **agent("TAG-flaky FLAKY", retries=3)}, headers=a
    )
    assert resp.status_code == 201, resp.text
    job = (await http.post("/api/agents/flaky/run", json={"prompt": "go"}, headers=a)).json()["job_id"]
    rec = await finished(system, job, a, timeout=40)
    assert (rec["status"], rec["attempts"]) == ("completed", 4)
    lines = [ln["message"] for ln in (await http.get(f"/api/jobs/{job}/logs", headers=a)).json()["lines"]]
    waits = [float(m) for ln in lines for m in re.findall(r"retrying in ([0-9.]+) s", ln)]
    assert waits == [1.0, 2.0, 4.0], lines
    assert any("attempt 4 of 4" in ln for ln in lines)
    # The calls were at least that far apart (no upper bound: a slow machine may be later).
    at = [c.at for c in system.llm.of("TAG-flaky")]
    assert len(at) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert all(gap >= want * 0.9 for gap, want in zip(gaps, (1, 2, 4), strict=True)), gaps


# --- item 5: the examples in docs/agents.md ----------------------------------------------------


def doc_examples(section: str) -> list[tuple[str, str, Any]]:
    text = DOC.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    examples = []
    for block in re.findall(r"```sh\n(.*?)```", text[start:end], re.S):
        m = re.search(r"curl -X (\w+) \"\$CONVEYOR(/[^\"]*)\"", block)
        assert m, block
        body = re.search(r"-d '(.*)'", block, re.S)
        examples.append((m.group(1), m.group(2), json.loads(body.group(1)) if body else None))
    return examples


async def test_the_examples_in_docs_agents_md_run(system: System) -> None:
    http, a = system.http, system.keys["a"]
    jobs = []
    for section in ("Defining an agent", "Pipelines"):
        examples = doc_examples(section)
        assert examples, section
        for method, path, body in examples:
            resp = await http.request(method, path, json=body, headers=a)
            assert resp.status_code in (200, 201, 202), (method, path, resp.text)
            if resp.status_code == 202:
                jobs.append(resp.json()["job_id"])
    assert len(jobs) >= 3
    for job in jobs:
        rec = await finished(system, job, a, timeout=60)
        assert rec["status"] == "completed", rec
