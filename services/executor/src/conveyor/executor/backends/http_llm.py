"""The two LLM backends over one httpx client: OpenAI Chat Completions (and every API that
copies it: vLLM, Ollama, llama.cpp server) and the Anthropic Messages API."""

from __future__ import annotations

from typing import Any

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
from conveyor.shared.contracts.events import ResultBody

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


class _HttpBackend:
    name = "http"

    def __init__(
        self, client: httpx.AsyncClient, *, connect_timeout_s: float, retry_after_cap_s: float
    ) -> None:
        self.client = client
        self.connect_timeout_s = connect_timeout_s
        self.retry_after_cap_s = retry_after_cap_s

    async def post(self, job: AgentJob, url: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
        # The agent's own deadline ends a slow answer (status "timeout"); httpx's read timeout sits
        # just past it so it never wins that race. Connecting is bounded separately (transient).
        remaining = job.remaining_s
        timeout = httpx.Timeout(remaining + 1.0, connect=min(self.connect_timeout_s, remaining))
        try:
            resp = await self.client.post(
                url, headers=headers, content=msgspec.json.encode(body), timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"{self.name} API timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{self.name} API unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError as exc:
                raise MalformedOutput(f"{self.name} API answered 200 with a body that is not JSON") from exc
        message, code = _error_text(resp)
        status = resp.status_code
        text = f"{self.name} API answered {status}" + (f" ({code})" if code else "") + f": {message}"
        job.log("warning", text)
        if status == 429 and code in _NOT_RETRYABLE_429:
            raise AgentError(text)
        if status in (408, 409, 429) or status >= 500:
            after = retry_after(resp.headers.get("retry-after"), self.retry_after_cap_s)
            raise TransientError(text, retry_after_s=after, status_code=status)
        raise AgentError(text)


class OpenAIBackend(_HttpBackend):
    """POST {base}/chat/completions; the answer is choices[0].message.content."""

    name = "openai"

    async def run(self, job: AgentJob) -> ResultBody:
        agent = job.agent
        headers = {"content-type": "application/json"}
        if agent.api_key:
            headers["authorization"] = f"Bearer {agent.api_key.reveal()}"
        body: dict[str, Any] = {
            "model": agent.model,
            "messages": [
                {"role": "system", "content": agent.system_prompt},
                {"role": "user", "content": user_message(job)},
            ],
            "max_tokens": agent.max_tokens,
        }
        if agent.temperature is not None:
            body["temperature"] = agent.temperature
        data = await self.post(job, f"{agent.base_url}/chat/completions", headers, body)
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedOutput("openai API answer has no choices[0].message.content") from exc
        if not isinstance(content, str):
            raise MalformedOutput("openai API answer has no text content (refusal or tool call)")
        if choice.get("finish_reason") == "length":
            job.log("warning", "the model stopped at max_tokens; the answer may be cut short")
        return parse_output(content, f"model {agent.model}")


class AnthropicBackend(_HttpBackend):
    """POST {base}/v1/messages; the answer is the concatenated text blocks of content."""

    name = "anthropic"

    async def run(self, job: AgentJob) -> ResultBody:
        agent = job.agent
        assert agent.api_key is not None
        headers = {
            "content-type": "application/json",
            "x-api-key": agent.api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        body: dict[str, Any] = {
            "model": agent.model,
            "max_tokens": agent.max_tokens,
            "system": agent.system_prompt,
            "messages": [{"role": "user", "content": user_message(job)}],
        }
        if agent.temperature is not None:
            body["temperature"] = agent.temperature
        data = await self.post(job, f"{agent.base_url}/v1/messages", headers, body)
        blocks = data.get("content") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            raise MalformedOutput("anthropic API answer has no content blocks")
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        if data.get("stop_reason") == "max_tokens":
            job.log("warning", "the model stopped at max_tokens; the answer may be cut short")
        return parse_output(text, f"model {agent.model}")
