"""The openai and anthropic backends against local servers that follow each API's documented
request and response formats: success, 429 with Retry-After, 500, a hang past the timeout,
malformed output, and a cancel that aborts the request in flight."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from conveyor.executor.config import AgentConfig
from conveyor.executor.service import SPEC
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.rawhttp import serve_app

ANSWER = {"summary": "Looks good", "files_changed": ["a.py"], "suggestions": ["add a test"]}


@dataclass
class Call:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLLM:
    """Answers each request with the next scripted step: "ok", "malformed", "hang", 429, 500."""

    script: list[Any] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    hung: list[web.Request] = field(default_factory=list)
    url: str = ""

    def step(self) -> Any:
        return self.script.pop(0) if self.script else "ok"

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "openai")

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "anthropic")

    async def _answer(self, request: web.Request, api: str) -> web.StreamResponse:
        self.calls.append(Call(time.monotonic(), dict(request.headers), await request.json()))
        step = self.step()
        if step == "hang":
            self.hung.append(request)
            await asyncio.sleep(3600)
        if step == 429:
            kind = {"type": "rate_limit_error"} if api == "anthropic" else {"code": "rate_limit_exceeded"}
            return web.json_response(
                {"type": "error", "error": {**kind, "message": "Rate limit reached"}},
                status=429,
                headers={"retry-after": "1"},
            )
        if step == 500:
            return web.json_response(
                {"error": {"message": "The server had an error", "type": "server_error"}}, status=500
            )
        text = (
            "Sure! Here is my review, no JSON, sorry."
            if step == "malformed"
            else "```json\n" + json.dumps(ANSWER) + "\n```"
        )
        if api == "openai":
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        )


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.openai)
    app.router.add_post("/v1/messages", fake.anthropic)
    runner, port = await serve_app(app, shutdown_timeout=0.5)
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def gpt(llm: FakeLLM, **kw: Any) -> AgentConfig:
    options: dict[str, Any] = {
        "base_url": llm.url + "/v1",
        "api_key": Secret("sk-test"),
        "model": "gpt-test",
        **kw,
    }
    return AgentConfig(name="gpt", backend="openai", **options)


def claude(llm: FakeLLM, **kw: Any) -> AgentConfig:
    return AgentConfig(
        name="claude", backend="anthropic", base_url=llm.url, api_key=Secret("ak-test"), model="c", **kw
    )


async def test_openai_retries_429_honouring_retry_after_and_500_then_completes(
    bus, make_settings, llm
) -> None:
    llm.script = [429, 500, "ok"]
    async with serve(SPEC, make_settings(gpt(llm))) as rt:
        job_id = await bus.job("gpt", {"diff": "+x"}, prompt="Review this")
        rec = await bus.until(job_id, "completed")
        assert rec.attempts == 3 and rec.backend == "openai"
        result = (await bus.one_result(job_id)).result
        assert result.result.summary == "Looks good" and result.result.files_changed == ["a.py"]
        first, second, _ = llm.calls
        assert second.at - first.at >= 0.9  # Retry-After: 1 was honoured
        assert first.headers["Authorization"] == "Bearer sk-test"
        assert first.body["model"] == "gpt-test" and first.body["messages"][0]["role"] == "system"
        assert "Review this" in first.body["messages"][1]["content"]
        lines = " ".join(await bus.log_lines(job_id))
        assert "openai API answered 429" in lines and "openai API answered 500" in lines
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            assert 'job_retries_total{agent="gpt"} 2.0' in (await http.get("/metrics")).text


async def test_anthropic_messages_request_and_answer(bus, make_settings, llm) -> None:
    async with serve(SPEC, make_settings(claude(llm))):
        job_id = await bus.job("claude", {"files": {"a.py": "x = 1\n"}})
        await bus.until(job_id, "completed")
        assert (await bus.one_result(job_id)).result.result.suggestions == ["add a test"]
        [call] = llm.calls
        assert call.headers["x-api-key"] == "ak-test" and call.headers["anthropic-version"] == "2023-06-01"
        assert call.body["max_tokens"] == 4096 and "JSON" in call.body["system"]
        assert call.body["messages"][0]["role"] == "user"


async def test_malformed_model_output_is_a_failed_attempt_with_a_clear_error(bus, make_settings, llm) -> None:
    llm.script = ["malformed"]
    async with serve(SPEC, make_settings(claude(llm, retries=0))):
        job_id = await bus.job("claude", {})
        rec = await bus.until(job_id, "failed")
        assert rec.error is not None and "model c output no JSON object found" in rec.error
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and "no JSON object found" in result.result.summary
        assert len(await bus.dead_letters("claude")) == 1


async def test_persistent_500_fails_after_three_attempts_with_dlq_copy(bus, make_settings, llm) -> None:
    llm.script = [500, 500, 500]
    async with serve(SPEC, make_settings(gpt(llm))):
        job_id = await bus.job("gpt", {})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 3 and len(llm.calls) == 3
        [dead] = await bus.dead_letters("gpt")
        assert dead.headers["Conveyor-Original-Subject"] == "jobs.run.gpt"
        assert "answered 500" in dead.headers["Conveyor-Error"] and dead.headers["Conveyor-Failed-At"]
        assert (await bus.one_result(job_id)).result.status == "failed"


async def test_bad_request_fails_at_once_without_retry(bus, make_settings, llm) -> None:
    async with serve(SPEC, make_settings(gpt(llm, base_url=llm.url + "/nowhere"))):
        job_id = await bus.job("gpt", {})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 1 and "answered 404" in (rec.error or "")


async def test_hang_past_the_timeout_ends_in_timeout(bus, make_settings, llm) -> None:
    llm.script = ["hang"]
    async with serve(SPEC, make_settings(gpt(llm, timeout_ms=1000))):
        job_id = await bus.job("gpt", {})
        rec = await bus.until(job_id, "timeout")
        assert rec.attempts == 1
        result = (await bus.one_result(job_id)).result
        assert result.status == "timeout" and "did not finish within 1 s" in result.result.summary


async def test_cancel_aborts_the_request_in_flight(bus, make_settings, llm) -> None:
    llm.script = ["hang"]
    async with serve(SPEC, make_settings(gpt(llm))):
        job_id = await bus.job("gpt", {})
        await eventually(lambda: _assert(llm.hung))
        await bus.cancel(job_id)
        await bus.until(job_id, "cancelled", timeout=5)

        async def aborted() -> None:
            transport = llm.hung[0].transport
            assert transport is None or transport.is_closing()

        await eventually(aborted, timeout=5)


async def _assert(value: Any) -> None:
    assert value
