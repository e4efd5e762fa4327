"""A local LLM API that follows OpenAI's Chat Completions and Anthropic's Messages formats,
tool calls and streaming included, for tests.

It answers each request with the next scripted :class:`Turn` (text, or tool calls), and
refuses, as the real APIs do, a request without its auth headers (401) or whose tool results
do not answer the previous turn's tool calls (400). With ``stream: true`` it sends the
documented server-sent events; ``hold`` makes it stop after the first text delta until the
test sets it, so a test can see deltas arrive before the answer ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from conveyor.shared.testing.rawhttp import LocalServer


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Turn:
    """One answer: text, or tool calls (with optional text before them)."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20


Step = Turn | Callable[[dict[str, Any]], Turn]  # a callable sees the request body


@dataclass
class Request:
    api: str  # openai | anthropic
    headers: dict[str, str]
    body: dict[str, Any]


def _bad_request(api: str, message: str) -> web.Response:
    if api == "anthropic":
        err = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    else:
        err = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(err, status=400)


def _unauthorized(api: str) -> web.Response:
    if api == "anthropic":
        err = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    else:
        err = {
            "error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    return web.json_response(err, status=401)


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results in a request's last message(s), in either format, as text."""
    out: list[str] = []
    messages = body.get("messages") or []
    for m in reversed(messages):
        if m.get("role") == "tool":
            out.insert(0, str(m.get("content")))
            continue
        if m.get("role") == "user" and isinstance(m.get("content"), list):
            out = [str(b.get("content")) for b in m["content"] if b.get("type") == "tool_result"] + out
        break
    return out


def _openai_problem(body: dict[str, Any]) -> str | None:
    """What the real API would refuse in a request's messages and tools (400)."""
    for i, tool in enumerate(body.get("tools") or []):
        fn = tool.get("function") or {}
        if tool.get("type") != "function" or not fn.get("name") or not isinstance(fn.get("parameters"), dict):
            return f"tools[{i}]: expected {{type: function, function: {{name, parameters}}}}"
    messages = body.get("messages") or []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or not m.get("tool_calls"):
            continue
        ids = [c.get("id") for c in m["tool_calls"]]
        following = [
            x.get("tool_call_id") for x in messages[i + 1 : i + 1 + len(ids)] if x.get("role") == "tool"
        ]
        if following != ids:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages responding "
                f"to each 'tool_call_id'. (messages[{i}])"
            )
        for c in m["tool_calls"]:
            try:
                json.loads(c["function"]["arguments"])
            except (KeyError, TypeError, ValueError):
                return f"messages[{i}].tool_calls: function.arguments must be a JSON string"
    return None


def _anthropic_problem(body: dict[str, Any]) -> str | None:
    for i, tool in enumerate(body.get("tools") or []):
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}: expected {{name, description, input_schema}}"
    messages = body.get("messages") or []
    if messages and messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("role") != "assistant" or not isinstance(content, list):
            continue
        ids = [b.get("id") for b in content if b.get("type") == "tool_use"]
        if not ids:
            continue
        nxt = messages[i + 1] if i + 1 < len(messages) else {}
        answered = [
            b.get("tool_use_id")
            for b in nxt.get("content") or []
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if nxt.get("role") != "user" or answered != ids:
            return (
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately after"
            )
    return None


class FakeLLM(LocalServer):
    def __init__(self, script: list[Step] | None = None) -> None:
        super().__init__()
        self.script: list[Step] = list(script or [])
        self.requests: list[Request] = []
        self.hold: asyncio.Event | None = None  # set: a held stream goes on
        self.api_key = "sk-test"
        self._ids = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)

    def _next(self, body: dict[str, Any]) -> Turn:
        step = self.script.pop(0) if self.script else Turn(text='{"summary": "done"}')
        return step(body) if callable(step) else step

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:04d}"

    @staticmethod
    def _pieces(text: str) -> list[str]:
        """Text as a model streams it: a few characters at a time."""
        return [text[i : i + 7] for i in range(0, len(text), 7)]

    # --- OpenAI Chat Completions -------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Request("openai", dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _unauthorized("openai")
        if (problem := _openai_problem(body)) is not None:
            return _bad_request("openai", problem)
        turn = self._next(body)
        calls = [
            {
                "id": self._id("call_"),
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in turn.tool_calls
        ]
        finish = "tool_calls" if calls else "stop"
        usage = {
            "prompt_tokens": turn.input_tokens,
            "completion_tokens": turn.output_tokens,
            "total_tokens": turn.input_tokens + turn.output_tokens,
        }
        model = body.get("model")
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            return web.json_response(
                {
                    "id": self._id("chatcmpl-"),
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        resp = await self._sse(request)
        cid = self._id("chatcmpl-")

        async def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")

        await chunk({"role": "assistant", "content": ""})
        for n, piece in enumerate(self._pieces(turn.text)):
            await chunk({"content": piece})
            if n == 0 and self.hold is not None:
                await self.hold.wait()
        for index, call in enumerate(calls):
            args = call["function"]["arguments"]
            half = len(args) // 2
            await chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for part in (args[:half], args[half:]):
                await chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        await chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # --- Anthropic Messages ------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Request("anthropic", dict(request.headers), body))
        if request.headers.get("x-api-key") != self.api_key:
            return _unauthorized("anthropic")
        if not request.headers.get("anthropic-version"):
            return _bad_request("anthropic", "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            return _bad_request("anthropic", "max_tokens: Field required")
        if (problem := _anthropic_problem(body)) is not None:
            return _bad_request("anthropic", problem)
        turn = self._next(body)
        blocks: list[dict[str, Any]] = []
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        for c in turn.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": self._id("toolu_"), "name": c.name, "input": c.arguments}
            )
        stop = "tool_use" if turn.tool_calls else "end_turn"
        mid = self._id("msg_")
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model"),
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens},
                }
            )
        resp = await self._sse(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": turn.input_tokens, "output_tokens": 1},
                },
            },
        )
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            await event(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
            )
            if index == 0:
                await event("ping", {"type": "ping"})
            if block["type"] == "text":
                for n, piece in enumerate(self._pieces(block["text"])):
                    await event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                    if n == 0 and self.hold is not None:
                        await self.hold.wait()
            else:
                args = json.dumps(block["input"])
                half = len(args) // 2
                for part in (args[:half], args[half:]):
                    await event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part},
                        },
                    )
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": turn.output_tokens},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        return resp

    @staticmethod
    async def _sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp
