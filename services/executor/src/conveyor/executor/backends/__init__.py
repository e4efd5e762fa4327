"""Backends run one attempt of an agent: openai, anthropic, command, builtin."""

from __future__ import annotations

import httpx

from conveyor.executor.backends.base import AgentError, AgentJob, Backend, MalformedOutput, TransientError
from conveyor.executor.backends.builtin import BuiltinBackend
from conveyor.executor.backends.command import CommandBackend
from conveyor.executor.backends.http_llm import AnthropicBackend, OpenAIBackend
from conveyor.executor.config import Settings


def make_backends(settings: Settings, client: httpx.AsyncClient) -> dict[str, Backend]:
    # Imported here: the tools are built on this package's base module.
    from conveyor.executor.tools.box import Toolbox, ToolSettings

    tools = Toolbox(
        client,
        ToolSettings(
            github_api_url=settings.github_api_url,
            github_token=settings.github_token,
            slack_api_url=settings.slack_api_url,
            allowed_networks=settings.tool_allowed_networks,
            timeout_s=settings.tool_timeout_s,
            http_fetch_max_bytes=settings.http_fetch_max_bytes,
        ),
    )
    llm = {
        "connect_timeout_s": settings.llm_connect_timeout_ms / 1000,
        "retry_after_cap_s": settings.retry_after_cap_ms / 1000,
        "tools": tools,
    }
    return {
        "openai": OpenAIBackend(client, **llm),
        "anthropic": AnthropicBackend(client, **llm),
        "command": CommandBackend(settings.command_workdir, settings.max_output_bytes),
        "builtin": BuiltinBackend(tools),
    }


__all__ = ["AgentError", "AgentJob", "Backend", "MalformedOutput", "TransientError", "make_backends"]
