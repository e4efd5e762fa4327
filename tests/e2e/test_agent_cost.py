"""Token cost, budgets, streamed output and progress callbacks end to end, every service a real
process: a command agent (a real subprocess) reports model usage and streams text through its
stderr lines, as a coding-agent CLI would. The settings and bodies come from the examples in
docs/agents.md ("Token cost and budgets", "Streaming and progress callbacks")."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.domain.signing import lovable_sign
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink as Sink

ADMIN = "agent-cost-e2e-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "agents.md"

# The agent: runs the steps its prompt lists (JSON), then answers a result.
AGENT = r"""
import json, os, sys, time
job = json.load(sys.stdin)
steps = json.loads(job["prompt"])
for kind, value in steps:
    if kind == "wait_for":
        deadline = time.monotonic() + 30
        while not os.path.exists(value) and time.monotonic() < deadline:
            time.sleep(0.02)
    elif kind == "sleep":
        time.sleep(value)
    else:
        print(f"{kind}: {value}", file=sys.stderr, flush=True)
print(json.dumps({"summary": "done"}))
"""


def example(name: str) -> str:
    """The fenced block after ``<!-- example: name -->`` in docs/agents.md."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", DOCS.read_text(), re.S)
    assert found, f"docs/agents.md has no example {name!r}"
    return found.group(1)


class System:
    def __init__(self, http: httpx.AsyncClient, sink: Sink, executor: ServiceProcess, tmp: Path) -> None:
        self.http = http
        self.sink = sink
        self.executor = executor
        self.tmp = tmp

    async def project(self, name: str, **extra: Any) -> dict[str, Any]:
        await self.http.post("/api/admin/orgs", json={"org_id": f"org-{name}", "name": name})
        resp = await self.http.post(
            "/api/admin/projects",
            json={
                "project_id": name,
                "org_id": f"org-{name}",
                "name": name,
                "external_ids": [f"lovable:lp-{name}"],
                "webhook_secrets": {"lovable": [f"webhook-secret-{name}"]},
                "callback_url": self.sink.url,
                **extra,
            },
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def run(self, project: str, steps: list[list[Any]]) -> httpx.Response:
        return await self.http.post(
            "/api/jobs",
            json={"agent": "metered", "prompt": json.dumps(steps), "project": project},
        )

    async def ended(self, job_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any]:
            record = (await self.http.get(f"/api/jobs/{job_id}")).json()
            assert record["status"] in ("completed", "failed", "timeout", "cancelled"), record["status"]
            return dict(record)

        return await eventually(check, timeout=30)

    def callbacks(self, job_id: str) -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        """The job's callbacks in the order they arrived: (headers, body, raw body)."""
        out = []
        for headers, raw in list(self.sink.received):
            body = json.loads(raw)
            if job_id in (body.get("jobId"), body.get("job_id")):
                out.append(({k.lower(): v for k, v in headers.items()}, body, raw))
        return out


@pytest.fixture
async def system(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    sink = await Sink().start()
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agents = json.dumps(
        [{"name": "metered", "backend": "command", "command": [sys.executable, str(script)], "retries": 2}]
    )
    env = service_env(
        nats_server.url,
        LOVABLE_WEBHOOK_SECRET="default-webhook-secret",
        CALLBACK_SIGNING_SECRETS="whsec_ZGVmYXVsdC1wcm9qZWN0LWNhbGxiYWNrLWtleQ==",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        ADMIN_API_KEY=ADMIN,
        CONVEYOR_SECRET_KEYS=new_key_setting(),
        AGENTS=agents,
        PRICES=example("prices"),
        RETRY_BASE_MS="50",
    )
    procs = {
        name: ServiceProcess(name, env, tmp_path / f"{name}.log")
        for name in ("receiver", "executor", "deliverer")
    }
    try:
        # A shared machine may be slow to start three services: the wait is for readiness only.
        await asyncio.gather(*(p.start(timeout=60) for p in procs.values()))
        async with httpx.AsyncClient(base_url=procs["receiver"].url, timeout=10, headers=AUTH) as http:
            yield System(http, sink, procs["executor"], tmp_path)
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))
        await sink.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        if got == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels}")


async def test_usage_is_counted_in_the_job_the_project_and_prometheus(system: System) -> None:
    http = system.http
    await system.project("shop", **json.loads(example("budget")) | {"budget_day_usd": 5.0})
    steps = [
        ["usage", "gpt-4o-mini-2024-07-18 1000 500"],  # a dated name: priced as gpt-4o-mini
        ["usage", "house-model 100 50"],  # priced by PRICES (the docs' example)
        ["usage", "mystery-model 7 3"],  # no price: 0 USD, tokens counted
    ]
    resp = await system.run("shop", steps)
    assert resp.status_code == 202, resp.text
    record = await system.ended(resp.json()["job_id"])
    assert record["status"] == "completed", record
    cost = (1000 * 0.15 + 500 * 0.60 + 100 * 2.0 + 50 * 4.0) / 1e6
    usage = record["usage"]
    assert usage["model"] == "gpt-4o-mini-2024-07-18,house-model,mystery-model"
    assert (usage["input_tokens"], usage["output_tokens"]) == (1107, 553)
    assert usage["cost_usd"] == pytest.approx(cost)

    async def totals() -> dict[str, Any]:
        body = (await http.get("/api/usage", params={"project": "shop"})).json()
        assert body["month"]["input_tokens"] == 1107, body
        return dict(body)

    body = await eventually(totals)
    documented = json.loads(example("usage-answer"))
    assert set(body) == set(documented) and set(body["day"]) == set(documented["day"])
    today = dt.datetime.now(dt.UTC)
    for period, start in (("day", today.strftime("%Y-%m-%d")), ("month", today.strftime("%Y-%m"))):
        p = body[period]
        assert p["start"] == start
        assert (p["input_tokens"], p["output_tokens"]) == (1107, 553)
        assert p["cost_usd"] == pytest.approx(cost)
        assert p["agents"]["metered"]["cost_usd"] == pytest.approx(cost)
    assert body["day"]["budget_usd"] == 5.0 and body["month"]["budget_usd"] == 100.0
    tomorrow = (today + dt.timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert body["day"]["resets_at"] == tomorrow

    text = (await httpx.AsyncClient().get(f"{system.executor.url}/metrics")).text
    assert metric(text, "project_llm_tokens_total", direction="input", project="shop") == 1107
    assert metric(text, "project_llm_tokens_total", direction="output", project="shop") == 553
    assert metric(text, "project_llm_cost_usd_total", project="shop") == pytest.approx(cost)
    assert metric(text, "agent_llm_cost_usd_total", agent="metered") == pytest.approx(cost)
    assert metric(text, "agent_llm_tokens_total", agent="metered", direction="input") == 1107
    # The model without a price is logged, once.
    assert system.executor.log_path.read_text().count("no price for model 'mystery-model'") == 1

    # Another project's key does not see this project's usage.
    key = (await http.post("/api/admin/keys", json={"name": "other", "project_id": "default"})).json()["key"]
    other = await http.get(
        "/api/usage", params={"project": "shop"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert other.status_code == 404


async def test_a_budget_stops_a_running_job_and_refuses_the_next_run(system: System) -> None:
    http = system.http
    created = await system.project("tight", **json.loads(example("budget")))
    assert created["budget_day_usd"] == 0.1
    # 1M input tokens of gpt-4o-mini cost $0.15: over the day's $0.10 at the first report. The
    # program would go on for a minute; the budget ends it.
    steps = [
        ["progress", 20],
        ["usage", "gpt-4o-mini 1000000 0"],
        ["sleep", 60],
        ["usage", "gpt-4o-mini 1 1"],
    ]
    resp = await system.run("tight", steps)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    record = await system.ended(job_id)
    assert record["status"] == "failed"
    assert record["error"].startswith(
        "budget_exceeded: project tight spent $0.15 of its daily budget of $0.10"
    )
    assert record["attempts"] == 1  # not retried (the agent has retries)
    assert record["usage"]["input_tokens"] == 1_000_000

    async def called_back() -> dict[str, Any]:
        (got,) = [b for _, b, _ in system.callbacks(job_id) if "jobId" in b]
        return got

    result = await eventually(called_back, timeout=30)
    assert result["status"] == "failed"
    assert "budget_exceeded" in result["result"]["summary"]

    # New work is refused: the API (once the totals are merged and read), and a webhook.
    async def refused() -> httpx.Response:
        r = await system.run("tight", [])
        assert r.status_code == 402, r.text
        return r

    answer = await eventually(refused, timeout=15)
    body = answer.json()
    documented = json.loads(example("budget-refusal"))
    assert set(body) == set(documented)
    assert body["error"] == "budget_exceeded" and body["budget"] == "day"
    assert body["spent_usd"] == pytest.approx(0.15) and body["limit_usd"] == 0.1
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert body["resets_at"] == tomorrow.strftime("%Y-%m-%dT00:00:00Z")
    assert 0 < int(answer.headers["Retry-After"]) <= 86_400
    assert "daily budget" in body["message"] and "nothing was accepted" in body["message"]

    raw = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "agent.task_requested",
            "project_id": "lp-tight",
            "data": {"agent": "metered", "prompt": "[]"},
            "created_at": "2026-12-01T10:00:00Z",
        }
    ).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Lovable-Timestamp": str(ts),
        "X-Lovable-Signature": lovable_sign("webhook-secret-tight", ts, raw),
    }
    hook = await http.post("/api/webhooks/lovable", content=raw, headers=headers)
    assert hook.status_code == 402 and hook.json()["budget"] == "day", hook.text

    # A higher budget lets work in again.
    raised = await http.patch("/api/admin/projects/tight", json={"budget_day_usd": 1.0})
    assert raised.status_code == 200, raised.text
    assert (await system.run("tight", [])).status_code == 202


async def test_budget_fields_are_validated_by_name(system: System) -> None:
    await system.project("checked")
    for field, value in (("budget_day_usd", -1), ("budget_month_usd", "lots"), ("progress_callbacks", "yes")):
        resp = await system.http.patch("/api/admin/projects/checked", json={field: value})
        assert resp.status_code == 422, resp.text
        assert field in resp.json()["message"], resp.json()


async def test_streamed_output_reaches_the_sse_stream_before_the_end(system: System) -> None:
    await system.project("live")
    flag = system.tmp / f"go-{uuid.uuid4().hex}"
    steps = [
        ["wait_for", str(flag)],
        ["output", "hello"],
        ["output", "world"],
        ["sleep", 0.3],
        ["output", "bye"],
    ]
    resp = await system.run("live", steps)
    assert resp.status_code == 202, resp.text
    frames: list[tuple[str, dict[str, Any]]] = []
    job_id = resp.json()["job_id"]
    async with system.http.stream("GET", f"/api/jobs/{job_id}/stream", timeout=30) as stream:
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                assert event is not None
                frames.append((event, json.loads(line[6:])))
                flag.touch()  # the stream is open: the agent may start talking
    outputs = [d for e, d in frames if e == "output"]
    assert "".join(d["text"] for d in outputs) == "hello\nworld\nbye\n"
    assert [d["seq"] for d in outputs] == list(range(1, len(outputs) + 1))
    assert frames[-1][0] == "status" and frames[-1][1]["status"] == "completed"
    assert all(e != "output" for e, _ in frames[:1])  # the record's frame came first
    assert example("sse").count("event: output") == 2  # the documented shape, checked above


async def test_progress_callbacks_are_signed_and_come_before_the_result(system: System) -> None:
    created = await system.project("watched", **json.loads(example("progress-setting")))
    assert created["progress_callbacks"] is True
    steps = [
        ["progress", 30],
        ["output", "step one"],
        ["sleep", 1.2],
        ["progress", 60],
        ["output", "step two"],
        ["sleep", 1.2],
    ]
    resp = await system.run("watched", steps)
    job_id = resp.json()["job_id"]

    async def result_came() -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        got = system.callbacks(job_id)
        assert any("jobId" in b for _, b, _ in got)
        return got

    got = await eventually(result_came, timeout=30)
    final = next(i for i, (_, b, _) in enumerate(got) if "jobId" in b)
    progress = got[:final]
    assert progress, got  # at least one progress callback, all before the result
    assert all("jobId" not in b for _, b, _ in got[final + 1 :])
    documented = json.loads(example("progress-callback"))
    verifier = Webhook(created["callback_secret"])
    for headers, body, raw in progress:
        assert set(body) == set(documented)
        assert body["job_id"] == job_id and body["status"] == "processing"
        assert headers["webhook-id"].startswith(f"progress-{job_id}-")
        verifier.verify(raw, headers)  # the project's own secret signs them
    assert "step one" in "".join(b["output"] for _, b, _ in progress)
    assert max(b["progress"] for _, b, _ in progress) >= 30
    assert got[final][1]["status"] == "completed"
