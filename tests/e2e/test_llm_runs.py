"""An LLM agent end to end, every Conveyor service a real process and the model a local server
that speaks OpenAI's and Anthropic's documented streaming formats (shared/testing/fake_llm.py):
the model's tokens reach the job's SSE stream while the job still runs, and the usage each
answer reports is priced and stops the job at the project's budget, after which the project's
next run is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.testing.fake_llm import FakeLLM, Turn
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink as Sink

ADMIN = "llm-runs-e2e-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
# A price high enough that one answer of 100 + 20 tokens spends a budget of 0.01 USD.
PRICES = {"house-model": {"input_per_mtok_usd": 100.0, "output_per_mtok_usd": 500.0}}
ANSWER = '{"summary": "the change is small and safe", "suggestions": ["add a test"]}'


@pytest.fixture(params=["openai", "anthropic"])
async def system(
    request: pytest.FixtureRequest, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeLLM]]:
    api = request.param
    llm = await FakeLLM().start()
    sink = await Sink().start()
    agents = [{"name": "writer", "backend": api, "model": "house-model", "stream": True, "retries": 0}]
    llm_env = (
        {"OPENAI_BASE_URL": f"{llm.url}/v1", "OPENAI_API_KEY": llm.api_key}
        if api == "openai"
        else {"ANTHROPIC_BASE_URL": llm.url, "ANTHROPIC_API_KEY": llm.api_key}
    )
    env = service_env(
        nats_server.url,
        LOVABLE_WEBHOOK_SECRET="default-webhook-secret",
        CALLBACK_SIGNING_SECRETS="whsec_ZGVmYXVsdC1wcm9qZWN0LWNhbGxiYWNrLWtleQ==",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        ADMIN_API_KEY=ADMIN,
        CONVEYOR_SECRET_KEYS=new_key_setting(),
        AGENTS=json.dumps(agents),
        PRICES=json.dumps(PRICES),
        **llm_env,
    )
    procs = {n: ServiceProcess(n, env, tmp_path / f"{n}.log") for n in ("receiver", "executor", "deliverer")}
    try:
        await asyncio.gather(*(p.start(timeout=60) for p in procs.values()))
        async with httpx.AsyncClient(base_url=procs["receiver"].url, timeout=10, headers=AUTH) as http:
            for name, extra in (("live", {}), ("capped", {"budget_day_usd": 0.01})):
                await http.post("/api/admin/orgs", json={"org_id": f"org-{name}", "name": name})
                resp = await http.post(
                    "/api/admin/projects",
                    json={"project_id": name, "org_id": f"org-{name}", "name": name, **extra},
                )
                assert resp.status_code == 201, resp.text
            yield http, llm
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))
        await sink.stop()
        await llm.stop()


async def _run(http: httpx.AsyncClient, project: str) -> httpx.Response:
    return await http.post("/api/jobs", json={"agent": "writer", "prompt": "review", "project": project})


async def test_streamed_tokens_reach_the_sse_stream_before_the_job_ends(
    system: tuple[httpx.AsyncClient, FakeLLM],
) -> None:
    http, llm = system
    llm.hold = asyncio.Event()  # the model stops after its first piece of text until released
    llm.script = [Turn(text=ANSWER)]
    resp = await _run(http, "live")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    frames: list[tuple[str, dict[str, Any]]] = []
    async with http.stream("GET", f"/api/jobs/{job_id}/stream", timeout=30) as stream:
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                assert event is not None
                frames.append((event, json.loads(line[6:])))
                if event == "output" and not llm.hold.is_set():
                    # The first token is here while the model still holds the rest: the job runs.
                    record = (await http.get(f"/api/jobs/{job_id}")).json()
                    assert record["status"] == "processing", record
                    llm.hold.set()
    outputs = [d["text"] for e, d in frames if e == "output"]
    assert outputs and "".join(outputs) == ANSWER
    assert frames[-1][0] == "status" and frames[-1][1]["status"] == "completed"
    record = (await http.get(f"/api/jobs/{job_id}")).json()
    assert record["result"]["result"]["summary"] == "the change is small and safe"
    assert record["usage"]["input_tokens"] == 100 and record["usage"]["output_tokens"] == 20
    assert llm.requests[0].body["stream"] is True


async def test_the_budget_stops_a_running_llm_job_and_refuses_the_next(
    system: tuple[httpx.AsyncClient, FakeLLM],
) -> None:
    http, llm = system
    llm.script = [Turn(text=ANSWER)]  # 100 in + 20 out at the price above: 0.02 USD
    resp = await _run(http, "capped")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]

    async def ended() -> dict[str, Any]:
        record = (await http.get(f"/api/jobs/{job_id}")).json()
        assert record["status"] in ("completed", "failed", "timeout", "cancelled"), record["status"]
        return dict(record)

    record = await eventually(ended, timeout=30)
    assert record["status"] == "failed" and record["error"].startswith("budget_exceeded"), record
    assert record["attempts"] == 1  # not retried
    assert abs(record["usage"]["cost_usd"] - 0.02) < 1e-9

    async def refused() -> None:
        again = await _run(http, "capped")
        assert again.status_code == 402, again.text
        assert again.json()["error"] == "budget_exceeded"

    await eventually(refused, timeout=15)  # once the executor's totals are merged (about 1 s)
    assert len(llm.requests) == 1  # the refused run never reached the model
