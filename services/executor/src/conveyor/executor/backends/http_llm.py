"""The two LLM backends over one httpx client: OpenAI Chat Completions (and every API that
copies it: vLLM, Ollama, llama.cpp server) and the Anthropic Messages API.

An agent with ``tools`` gets them in the API's documented tool-calling format; the run is a
loop (ask, run the calls the model made, give it the results, ask again) until the model
answers without a tool call, bounded by the agent's max_tool_calls and max_run_tokens and by
the run's deadline. With ``stream`` the answer is read as server-sent events and each text
delta goes to ``job.output`` as it arrives. Every response's usage goes to ``job.usage``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from conveyor.executor.backends.base import (
    AgentError,
    AgentJob,
    MalformedOutput,
    TransientError,
    parse_output,
    retry_after,
    user_message,
)
from conveyor.shared.contracts.events import NOT_JSON, ResultBody, TokenUsage

if TYPE_CHECKING:
    from conveyor.executor.tools.box import Toolbox

ANTHROPIC_VERSION = "2023-06-01"
# Quota or spend exhausted: a 429 that waiting a few seconds does not cure.
_NOT_RETRYABLE_429 = ("insufficient_quota", "billing_hard_limit_reached", "enforced_spend_limit_reached")


def _error_text(resp: httpx.Response) -> tuple[str, str]:
    """(message, code) from either API's error body, tolerant of anything else."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300], ""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        code = str(err.get("code") or details.get("error_code") or err.get("type") or "")
        return str(err.get("message") or err)[:300], code
    return str(body)[:300], ""


class _Limits:
    """One run's tool calls and tokens, against the agent's max_tool_calls and max_run_tokens."""

    def __init__(self, job: AgentJob) -> None:
        self.job = job
        self.tool_calls = 0
        self.tokens = 0
        self.acted: list[str] = []  # calls that changed something outside (a comment, a message)

    def usage(self, usage: Any) -> None:
        """Report one response's usage (BudgetExceeded from the callback ends the run)."""
        if not isinstance(usage, dict):
            return
        agent = self.job.agent
        # OpenAI: prompt/completion_tokens; Anthropic: input/output_tokens.
        inp = usage.get("prompt_tokens", usage.get("input_tokens"))
        out = usage.get("completion_tokens", usage.get("output_tokens"))
        inp = inp if isinstance(inp, int) else 0
        out = out if isinstance(out, int) else 0
        self.job.usage(TokenUsage(model=agent.model or "", input_tokens=inp, output_tokens=out))
        self.tokens += inp + out
        cap = agent.max_run_tokens
        if cap is not None and self.tokens > cap:
            raise AgentError(f"stopped: the run used {self.tokens} tokens, over its max_run_tokens ({cap})")

    def calls(self, n: int) -> None:
        cap = self.job.agent.max_tool_calls
        if self.tool_calls + n > cap:
            raise AgentError(
                f"stopped: the model asked for {self.tool_calls + n} tool calls, "
                f"over its max_tool_calls ({cap})"
            )
        self.tool_calls += n


class _HttpBackend:
    name = "http"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        connect_timeout_s: float,
        retry_after_cap_s: float,
        tools: Toolbox | None = None,
    ) -> None:
        self.client = client
        self.connect_timeout_s = connect_timeout_s
        self.retry_after_cap_s = retry_after_cap_s
        self.tools = tools

    def _timeout(self, job: AgentJob) -> httpx.Timeout:
        # The agent's own deadline ends a slow answer (status "timeout"); httpx's read timeout sits
        # just past it so it never wins that race. Connecting is bounded separately (transient).
        remaining = job.remaining_s
        return httpx.Timeout(remaining + 1.0, connect=min(self.connect_timeout_s, remaining))

    def _refused(self, job: AgentJob, resp: httpx.Response) -> AgentError:
        message, code = _error_text(resp)
        status = resp.status_code
        text = f"{self.name} API answered {status}" + (f" ({code})" if code else "") + f": {message}"
        job.log("warning", text)
        if status == 429 and code in _NOT_RETRYABLE_429:
            return AgentError(text)
        if status in (408, 409, 429) or status >= 500:
            after = retry_after(resp.headers.get("retry-after"), self.retry_after_cap_s)
            return TransientError(text, retry_after_s=after, status_code=status)
        return AgentError(text)

    def _transport(self, exc: httpx.HTTPError) -> TransientError:
        if isinstance(exc, httpx.TimeoutException):
            return TransientError(f"{self.name} API timed out ({type(exc).__name__})")
        return TransientError(f"{self.name} API unreachable: {type(exc).__name__}: {exc}")

    async def post(self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
        try:
            resp = await self.client.post(
                url, headers=headers, content=msgspec.json.encode(body), timeout=self._timeout(job)
            )
        except httpx.TransportError as exc:
            raise self._transport(exc) from exc
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError as exc:
                raise MalformedOutput(f"{self.name} API answered 200 with a body that is not JSON") from exc
        raise self._refused(job, resp)

    async def events(
        self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any]
    ) -> AsyncIterator[tuple[str, Any]]:
        """POST with ``stream: true``: the answer's server-sent events as (event, data), data
        decoded from JSON ("[DONE]" as it is)."""
        try:
            async with self.client.stream(
                "POST", url, headers=headers, content=msgspec.json.encode(body), timeout=self._timeout(job)
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._refused(job, resp)
                event, data = "", []
                async for line in resp.aiter_lines():
                    if line:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            event = value
                        elif field == "data":
                            data.append(value)
                        continue  # comments (":") and other fields are ignored, as SSE says
                    if data:
                        text = "\n".join(data)
                        if text == "[DONE]":
                            yield event, text
                            return
                        try:
                            yield event, msgspec.json.decode(text)
                        except NOT_JSON as exc:
                            raise MalformedOutput(
                                f"{self.name} API streamed an event that is not JSON"
                            ) from exc
                    event, data = "", []
        except httpx.TransportError as exc:
            raise self._transport(exc) from exc

    def toolset(self, job: AgentJob) -> list[Any]:
        return self.tools.for_agent(job) if self.tools is not None and job.agent.tools else []

    async def call_tool(self, job: AgentJob, limits: _Limits, name: Any, arguments: Any) -> tuple[str, bool]:
        if self.tools is None:
            raise MalformedOutput(f"the model called a tool ({name!r}) but this agent has none")
        text, failed = await self.tools.call(job, str(name), arguments)
        if not failed and self.tools.acts(str(name)):
            limits.acted.append(str(name))
        return text, failed

    async def run(self, job: AgentJob) -> ResultBody:
        limits = _Limits(job)
        try:
            return await self.converse(job, limits)
        except TransientError as exc:
            # Another attempt would post the comment or the message again: not retried.
            if limits.acted:
                done = ", ".join(dict.fromkeys(limits.acted))
                raise AgentError(f"{exc} (not retried: this attempt already called {done})") from exc
            raise

    async def converse(self, job: AgentJob, limits: _Limits) -> ResultBody:
        raise NotImplementedError


class OpenAIBackend(_HttpBackend):
    """POST {base}/chat/completions; the answer is choices[0].message.content, after any
    rounds of ``tool_calls`` answered with ``role: "tool"`` messages."""

    name = "openai"

    async def converse(self, job: AgentJob, limits: _Limits) -> ResultBody:
        agent = job.agent
        headers = {"content-type": "application/json"}
        if agent.api_key:
            headers["authorization"] = f"Bearer {agent.api_key.reveal()}"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": agent.system_prompt},
            {"role": "user", "content": user_message(job)},
        ]
        body: dict[str, Any] = {"model": agent.model, "messages": messages, "max_tokens": agent.max_tokens}
        if agent.temperature is not None:
            body["temperature"] = agent.temperature
        if tools := self.toolset(job):
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
        if agent.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        url = f"{agent.base_url}/chat/completions"
        while True:
            if agent.stream:
                message, finish = await self._streamed(job, url, headers, body, limits)
            else:
                message, finish = await self._answered(job, url, headers, body, limits)
            calls = message.get("tool_calls")
            if not calls:
                content = message.get("content")
                if not isinstance(content, str):
                    raise MalformedOutput("openai API answer has no text content (refusal or tool call)")
                if finish == "length":
                    job.log("warning", "the model stopped at max_tokens; the answer may be cut short")
                return parse_output(content, f"model {agent.model}")
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise MalformedOutput("openai API answer has tool_calls that are not a list of objects")
            limits.calls(len(calls))
            messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
            for call in calls:
                fn = call.get("function") if isinstance(call.get("function"), dict) else {}
                raw = fn.get("arguments") or "{}"
                try:
                    arguments = msgspec.json.decode(raw) if isinstance(raw, str) else raw
                except NOT_JSON:
                    arguments = raw  # the toolbox answers that the arguments are not an object
                text, _ = await self.call_tool(job, limits, fn.get("name"), arguments)
                messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": text})

    async def _answered(
        self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any], limits: _Limits
    ) -> tuple[dict[str, Any], str | None]:
        data = await self.post(job, url, headers, body)
        if isinstance(data, dict):
            limits.usage(data.get("usage"))
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedOutput("openai API answer has no choices[0].message") from exc
        if not isinstance(message, dict):
            raise MalformedOutput("openai API answer's choices[0].message is not an object")
        return message, choice.get("finish_reason")

    async def _streamed(
        self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any], limits: _Limits
    ) -> tuple[dict[str, Any], str | None]:
        """Chunks of ``chat.completion.chunk``: text in choices[0].delta.content, tool calls in
        pieces under delta.tool_calls[].index, usage in the last chunk (include_usage)."""
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: Any = None
        async with contextlib.aclosing(self.events(job, url, headers, body)) as events:
            async for _, chunk in events:
                if chunk == "[DONE]":
                    break
                if not isinstance(chunk, dict):
                    continue
                if isinstance(chunk.get("error"), dict):
                    message = str(chunk["error"].get("message"))[:300]
                    raise TransientError(f"openai API stream failed: {message}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if isinstance(text := delta.get("content"), str) and text:
                        content.append(text)
                        job.output(text)
                    for piece in delta.get("tool_calls") or []:
                        index = piece.get("index", 0)
                        call = calls.setdefault(
                            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                        )
                        call["id"] = piece.get("id") or call["id"]
                        fn = piece.get("function") or {}
                        call["function"]["name"] += fn.get("name") or ""
                        call["function"]["arguments"] += fn.get("arguments") or ""
                    finish = choice.get("finish_reason") or finish
        limits.usage(usage)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(content) if content or not calls else None,
        }
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return message, finish


class AnthropicBackend(_HttpBackend):
    """POST {base}/v1/messages; the answer is the concatenated text blocks of content, after
    any rounds of ``tool_use`` blocks answered with ``tool_result`` blocks in a user message."""

    name = "anthropic"

    async def converse(self, job: AgentJob, limits: _Limits) -> ResultBody:
        agent = job.agent
        assert agent.api_key is not None
        headers = {
            "content-type": "application/json",
            "x-api-key": agent.api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        messages: list[dict[str, Any]] = [{"role": "user", "content": user_message(job)}]
        body: dict[str, Any] = {
            "model": agent.model,
            "max_tokens": agent.max_tokens,
            "system": agent.system_prompt,
            "messages": messages,
        }
        if agent.temperature is not None:
            body["temperature"] = agent.temperature
        if tools := self.toolset(job):
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
            ]
        if agent.stream:
            body["stream"] = True
        url = f"{agent.base_url}/v1/messages"
        while True:
            if agent.stream:
                blocks, stop = await self._streamed(job, url, headers, body, limits)
            else:
                blocks, stop = await self._answered(job, url, headers, body, limits)
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            if not uses:
                text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
                if stop == "max_tokens":
                    job.log("warning", "the model stopped at max_tokens; the answer may be cut short")
                return parse_output(text, f"model {agent.model}")
            limits.calls(len(uses))
            messages.append({"role": "assistant", "content": blocks})
            results: list[dict[str, Any]] = []
            for use in uses:
                text, failed = await self.call_tool(job, limits, use.get("name"), use.get("input"))
                result: dict[str, Any] = {
                    "type": "tool_result",
                    "tool_use_id": use.get("id"),
                    "content": text,
                }
                if failed:
                    result["is_error"] = True
                results.append(result)
            messages.append({"role": "user", "content": results})

    async def _answered(
        self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any], limits: _Limits
    ) -> tuple[list[dict[str, Any]], str | None]:
        data = await self.post(job, url, headers, body)
        blocks = data.get("content") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            raise MalformedOutput("anthropic API answer has no content blocks")
        limits.usage(data.get("usage"))
        return [b for b in blocks if isinstance(b, dict)], data.get("stop_reason")

    async def _streamed(
        self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any], limits: _Limits
    ) -> tuple[list[dict[str, Any]], str | None]:
        """message_start (input usage), content_block_start/delta/stop (text_delta,
        input_json_delta), message_delta (stop_reason, output usage), message_stop."""
        blocks: dict[int, dict[str, Any]] = {}
        json_parts: dict[int, list[str]] = {}
        usage: dict[str, Any] = {}
        stop: str | None = None
        async with contextlib.aclosing(self.events(job, url, headers, body)) as events:
            async for event, data in events:
                if not isinstance(data, dict):
                    continue
                kind = data.get("type") or event
                index = data.get("index", 0)
                if kind == "message_start":
                    usage.update((data.get("message") or {}).get("usage") or {})
                elif kind == "content_block_start":
                    block = dict(data.get("content_block") or {})
                    if block.get("type") == "tool_use":
                        json_parts[index] = []
                    blocks[index] = block
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    block = blocks.setdefault(index, {"type": "text", "text": ""})
                    if delta.get("type") == "text_delta" and isinstance(text := delta.get("text"), str):
                        block["text"] = str(block.get("text", "")) + text
                        job.output(text)
                    elif delta.get("type") == "input_json_delta":
                        json_parts.setdefault(index, []).append(str(delta.get("partial_json", "")))
                elif kind == "content_block_stop" and index in json_parts:
                    raw = "".join(json_parts.pop(index)) or "{}"
                    try:
                        blocks[index]["input"] = msgspec.json.decode(raw)
                    except NOT_JSON:
                        blocks[index]["input"] = {}  # the tool answers that arguments are missing
                elif kind == "message_delta":
                    stop = (data.get("delta") or {}).get("stop_reason") or stop
                    usage.update(data.get("usage") or {})  # output_tokens there are cumulative
                elif kind == "message_stop":
                    break
                elif kind == "error":
                    err = data.get("error") or {}
                    text = f"anthropic API stream failed ({err.get('type')}): {str(err.get('message'))[:300]}"
                    job.log("warning", text)
                    if err.get("type") in ("overloaded_error", "api_error", "rate_limit_error"):
                        raise TransientError(text)
                    raise AgentError(text)
        limits.usage(usage or None)
        return [blocks[i] for i in sorted(blocks)], stop
