"""What a running job reports besides its result, driven by a scripted backend through the
seams an LLM backend uses (``job.usage``, ``job.output``), in an in-process executor against
a real nats-server: usage priced into the record, KV ``usage`` and the metrics; a budget
that stops the run (however the backend takes the refusal) or keeps a queued job from
starting; streamed text batched on ``joboutput.<job>`` before the terminal record."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from conveyor.executor import service as executor_service
from conveyor.executor.backends import AgentJob, TransientError
from conveyor.executor.backends.base import BudgetExceeded
from conveyor.executor.config import AgentConfig
from conveyor.executor.service import SPEC
from conveyor.shared.bus.streams import ensure_kv
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import ResultBody, TokenUsage, job_output_decoder, job_record_decoder
from conveyor.shared.domain.usage import PeriodUsage, usage_decoder, usage_key
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually

Script = Callable[[AgentJob], Awaitable[ResultBody]]


class Scripted:
    """Stands in for the builtin backend: runs the test's script for the job."""

    name = "builtin"

    def __init__(self) -> None:
        self.script: Script | None = None
        self.calls = 0

    async def run(self, job: AgentJob) -> ResultBody:
        self.calls += 1
        assert self.script is not None
        return await self.script(job)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Scripted:
    backend = Scripted()
    original = executor_service.make_backends

    def make(settings: Any, client: Any) -> dict[str, Any]:
        return {**original(settings, client), "builtin": backend}

    monkeypatch.setattr(executor_service, "make_backends", make)
    return backend


AGENT = AgentConfig(name="llm", backend="builtin", builtin="sleep", retries=2)


async def usage_of(js: Any, project: str, period: str) -> PeriodUsage:
    kv = (await ensure_kv(js, [subjects.KV_USAGE]))[subjects.KV_USAGE]
    entry = await kv.get(usage_key(project, period, dt.datetime.now(dt.UTC)))  # type: ignore[arg-type]
    return usage_decoder.decode(entry.value or b"")


async def test_usage_is_priced_into_the_record_the_project_totals_and_metrics(
    bus, make_settings, scripted, js
) -> None:
    async def script(job: AgentJob) -> ResultBody:
        job.usage(TokenUsage(model="gpt-4o", input_tokens=1000, output_tokens=200))
        job.usage(TokenUsage(model="claude-sonnet-4-5-20250929", input_tokens=500, output_tokens=100))
        # A priced model's cost is the table's, whatever the backend says; an unpriced one's
        # is what the backend reported, if anything.
        job.usage(TokenUsage(model="gpt-4o", cost_usd=99.0))
        job.usage(TokenUsage(model="via-gateway", input_tokens=1, cost_usd=0.01))
        return ResultBody(summary="ok")

    scripted.script = script
    cost = (1000 * 2.5 + 200 * 10 + 500 * 3 + 100 * 15) / 1e6 + 0.01
    await bus.project("acme")
    async with serve(SPEC, make_settings(AGENT, usage_flush_s=0.1)) as rt:
        job_id = await bus.job("llm", project="acme")
        rec = await bus.until(job_id, "completed")
        assert rec.usage is not None
        assert rec.usage.model == "gpt-4o,claude-sonnet-4-5-20250929,via-gateway"
        assert (rec.usage.input_tokens, rec.usage.output_tokens) == (1501, 300)
        assert rec.usage.cost_usd == pytest.approx(cost)

        async def merged() -> PeriodUsage:
            day = await usage_of(js, "acme", "day")
            assert day.input_tokens == 1501
            return day

        day = await eventually(merged)
        assert day.cost_usd == pytest.approx(cost) and day.agents["llm"].output_tokens == 300
        assert (await usage_of(js, "acme", "month")).cost_usd == pytest.approx(cost)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            text = (await http.get("/metrics")).text
        assert 'project_llm_tokens_total{direction="input",project="acme"} 1501.0' in text
        assert 'agent_llm_tokens_total{agent="llm",direction="output"} 300.0' in text


async def test_a_budget_stops_the_run_without_a_retry_or_a_dead_letter(bus, make_settings, scripted) -> None:
    reached = asyncio.Event()

    async def script(job: AgentJob) -> ResultBody:
        job.usage(TokenUsage(model="gpt-4o", input_tokens=100))  # $0.00025: under $0.001
        job.usage(TokenUsage(model="gpt-4o", input_tokens=1000))  # $0.0025 more: over, raises
        reached.set()
        return ResultBody(summary="must not get here")

    scripted.script = script
    await bus.project("capped", budget_day_usd=0.001)
    async with serve(SPEC, make_settings(AGENT)) as rt:
        job_id = await bus.job("llm", project="capped")
        rec = await bus.until(job_id, "failed")
        assert not reached.is_set()
        assert rec.attempts == 1 and scripted.calls == 1
        assert rec.error is not None and rec.error.startswith(
            "budget_exceeded: project capped spent $0.00275 of its daily budget of $0.001;"
        )
        assert rec.usage is not None and rec.usage.input_tokens == 1100
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and "budget_exceeded" in result.result.summary
        assert await bus.dead_letters("llm") == []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            text = (await http.get("/metrics")).text
        assert 'jobs_stopped_at_budget_total{budget="day"} 1.0' in text


async def test_a_backend_that_turns_the_refusal_into_another_error_still_stops(
    bus, make_settings, scripted
) -> None:
    async def script(job: AgentJob) -> ResultBody:
        try:
            job.usage(TokenUsage(model="gpt-4o", input_tokens=1_000_000))
        except BudgetExceeded as exc:
            raise TransientError("the stream broke") from exc  # would be retried otherwise
        return ResultBody(summary="ok")

    scripted.script = script
    await bus.project("careless", budget_month_usd=1.0)
    async with serve(SPEC, make_settings(AGENT)):
        job_id = await bus.job("llm", project="careless")
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 1 and scripted.calls == 1
        assert rec.error is not None and "monthly budget of $1.00" in rec.error


async def test_a_job_queued_before_the_budget_was_spent_does_not_start(
    bus, make_settings, scripted, js
) -> None:
    async def script(job: AgentJob) -> ResultBody:
        return ResultBody(summary="ran")

    scripted.script = script
    await bus.project("spent", budget_day_usd=2.0)
    kv = (await ensure_kv(js, [subjects.KV_USAGE]))[subjects.KV_USAGE]
    now = dt.datetime.now(dt.UTC)
    day = PeriodUsage(project="spent", period="day", start=now.strftime("%Y-%m-%d"), cost_usd=2.5)
    await kv.put(usage_key("spent", "day", now), msgspec.json.encode(day))
    async with serve(SPEC, make_settings(AGENT)):
        job_id = await bus.job("llm", project="spent")
        rec = await bus.until(job_id, "failed")
        assert scripted.calls == 0
        assert rec.error is not None and rec.error.startswith("budget_exceeded: project spent spent $2.50 ")


async def test_output_is_batched_and_sent_before_the_terminal_record(
    bus, make_settings, scripted, nc: Client
) -> None:
    async def script(job: AgentJob) -> ResultBody:
        for i in range(200):
            job.output(f"{i} ")
            if i % 50 == 0:
                await asyncio.sleep(0.15)  # more than OUTPUT_BATCH_MS: a batch goes out
        return ResultBody(summary="said it")

    scripted.script = script
    arrivals: list[tuple[str, Any]] = []

    async def on_output(msg: Any) -> None:
        arrivals.append(("output", job_output_decoder.decode(msg.data)))

    await bus.project("chatty")
    sub = await nc.subscribe(f"{subjects.JOB_OUTPUT_PREFIX}>", cb=on_output)
    watcher = await bus.jobs.watchall()

    async def records() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                arrivals.append(("record", job_record_decoder.decode(entry.value)))

    reader = asyncio.create_task(records())
    try:
        async with serve(SPEC, make_settings(AGENT)):
            job_id = await bus.job("llm", project="chatty")
            await bus.until(job_id, "completed")

            async def ended() -> None:
                assert any(k == "record" and r.job_id == job_id and r.terminal for k, r in arrivals)

            await eventually(ended)
    finally:
        reader.cancel()
        await sub.unsubscribe()
        await watcher.stop()
    mine = [(k, x) for k, x in arrivals if x.job_id == job_id]
    outputs = [x for k, x in mine if k == "output"]
    assert "".join(o.text for o in outputs) == "".join(f"{i} " for i in range(200))
    assert [o.seq for o in outputs] == list(range(1, len(outputs) + 1))
    assert 4 <= len(outputs) < 20  # batched: not one message per call
    terminal = next(i for i, (k, x) in enumerate(mine) if k == "record" and x.terminal)
    assert all(k == "record" for k, _ in mine[terminal:])  # every batch came before the end


async def test_a_fan_out_parent_shows_its_childrens_usage(bus, make_settings, scripted) -> None:
    async def script(job: AgentJob) -> ResultBody:
        tokens = 100 if job.agent.name == "dev" else 10
        job.usage(TokenUsage(model="gpt-4o-mini", input_tokens=tokens, output_tokens=tokens))
        return ResultBody(summary=f"{job.agent.name} done")

    scripted.script = script
    async with serve(SPEC, make_settings()):
        parent = await bus.event("code.review_requested", {"diff": "+x\n"})
        rec = await bus.until(parent, "completed")
        assert len(rec.children) == 2
        assert rec.usage is not None and rec.usage.model == "gpt-4o-mini"
        assert (rec.usage.input_tokens, rec.usage.output_tokens) == (110, 110)
        assert rec.usage.cost_usd == pytest.approx(110 * (0.15 + 0.60) / 1e6)
