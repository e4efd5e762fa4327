"""Backends run one attempt of an agent: openai, anthropic, command, builtin."""

from __future__ import annotations

import httpx

from conveyor.executor.backends.base import AgentError, AgentJob, Backend, MalformedOutput, TransientError
from conveyor.executor.backends.builtin import BuiltinBackend
from conveyor.executor.backends.command import CommandBackend
from conveyor.executor.backends.http_llm import AnthropicBackend, OpenAIBackend
from conveyor.executor.config import Settings


def make_backends(settings: Settings, client: httpx.AsyncClient) -> dict[str, Backend]:
    llm = {
        "connect_timeout_s": settings.llm_connect_timeout_ms / 1000,
        "retry_after_cap_s": settings.retry_after_cap_ms / 1000,
    }
    return {
        "openai": OpenAIBackend(client, **llm),
        "anthropic": AnthropicBackend(client, **llm),
        "command": CommandBackend(settings.command_workdir, settings.max_output_bytes),
        "builtin": BuiltinBackend(),
    }


__all__ = ["AgentError", "AgentJob", "Backend", "MalformedOutput", "TransientError", "make_backends"]
