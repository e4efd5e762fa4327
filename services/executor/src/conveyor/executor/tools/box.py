"""The toolbox: the tools' definitions as the model sees them, and one place that runs a call,
logs it (name, arguments with secrets hidden, outcome size) and turns its failure into an
error result the model reads."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from conveyor.executor.backends.base import AgentError, AgentJob, BudgetExceeded
from conveyor.executor.tools.errors import ToolError
from conveyor.executor.tools.github import GitHubClient, check_pull
from conveyor.executor.tools.http_fetch import http_fetch
from conveyor.executor.tools.slack import post_message
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.ssrf import AddressPolicy, parse_networks
from conveyor.shared.runtime.urls import redact_text

MAX_RESULT_CHARS = 200_000  # what one tool result may add to the conversation
_SECRET_KEY = re.compile(r"token|secret|password|passwd|authorization|api[_-]?key|credential", re.I)
_SECRET_QUERY = re.compile(
    r"([?&](?:[^=&#\s]*(?:token|secret|password|key|sig|signature|auth)[^=&#\s]*)=)[^&#\s\"']*", re.I
)

Run = Callable[[AgentJob, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str  # the function the model calls
    group: str  # the name an agent's ``tools`` grants it by
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments
    run: Run


@dataclass(frozen=True)
class ToolSettings:
    github_api_url: str = "https://api.github.com"
    github_token: Secret | None = None
    slack_api_url: str = "https://slack.com/api"
    allowed_networks: str = ""
    timeout_s: float = 30.0
    http_fetch_max_bytes: int = 1024 * 1024


def redact(value: Any) -> Any:
    """Arguments as the log shows them: secret-named keys and URL credentials hidden."""
    if isinstance(value, dict):
        return {k: "[hidden]" if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_QUERY.sub(r"\1[hidden]", redact_text(value))
    return value


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_PULL = {
    "repo": {"type": "string", "description": "owner/name of the repository"},
    "number": {"type": "integer", "description": "the pull request's number"},
}


class Toolbox:
    def __init__(self, client: httpx.AsyncClient, settings: ToolSettings) -> None:
        self.client = client
        self.settings = settings
        self.policy = AddressPolicy(
            parse_networks(settings.allowed_networks, "TOOL_ALLOWED_NETWORKS"),
            what="http_fetch",
            setting="TOOL_ALLOWED_NETWORKS",
        )
        self.github = GitHubClient(client, settings.github_api_url, settings.timeout_s, settings.github_token)
        tools = (
            Tool(
                "http_fetch",
                "http_fetch",
                "GET a URL and return its status, content type and body (text, cut off past a size "
                "limit). Only the hosts this agent is allowed can be fetched.",
                _schema({"url": {"type": "string", "description": "an http(s) URL"}}, ["url"]),
                self._http_fetch,
            ),
            Tool(
                "github_pull_request_files",
                "github",
                "List a GitHub pull request's changed files: status, additions, deletions and patch.",
                _schema(_PULL, ["repo", "number"]),
                self._pull_files,
            ),
            Tool(
                "github_pull_request_diff",
                "github",
                "Read a GitHub pull request's unified diff.",
                _schema(_PULL, ["repo", "number"]),
                self._pull_diff,
            ),
            Tool(
                "github_post_comment",
                "github",
                "Post a comment (Markdown) on a GitHub pull request, e.g. your review.",
                _schema(
                    {**_PULL, "body": {"type": "string", "description": "the comment, Markdown"}},
                    ["repo", "number", "body"],
                ),
                self._comment,
            ),
            Tool(
                "slack_post_message",
                "slack",
                "Post a message to a Slack channel.",
                _schema(
                    {
                        "channel": {"type": "string", "description": "channel id (C...) or #name"},
                        "text": {"type": "string", "description": "the message (Slack mrkdwn)"},
                    },
                    ["channel", "text"],
                ),
                self._slack,
            ),
            Tool(
                "delegate",
                "delegate",
                "Run another agent on a task and wait for its result (summary, files, suggestions).",
                _schema(
                    {
                        "agent": {"type": "string", "description": "the agent's name"},
                        "task": {"type": "string", "description": "what the agent should do"},
                    },
                    ["agent", "task"],
                ),
                self._delegate,
            ),
        )
        self.tools = {t.name: t for t in tools}

    def acts(self, name: str) -> bool:
        """Whether a call changes something outside the run, so that repeating it repeats that."""
        return name in ("github_post_comment", "slack_post_message", "delegate")

    def for_agent(self, job: AgentJob) -> list[Tool]:
        granted = set(job.agent.tools)
        return [t for t in self.tools.values() if t.group in granted]

    async def call(self, job: AgentJob, name: str, arguments: Any) -> tuple[str, bool]:
        """Run one call the model asked for: (the result text for the model, is it an error)."""
        tool = self.tools.get(name)
        shown = msgspec.json.encode(redact(arguments)).decode()[:500] if arguments is not None else "{}"
        try:
            if tool is None or tool.group not in job.agent.tools:
                raise ToolError(f"no tool named {name!r} is available to this agent")
            if not isinstance(arguments, dict):
                raise ToolError("the arguments must be a JSON object")
            value = await tool.run(job, arguments)
            text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            if len(text) > MAX_RESULT_CHARS:
                text = text[:MAX_RESULT_CHARS] + "\n... (cut off)"
        except BudgetExceeded:
            raise
        except (ToolError, AgentError) as exc:
            job.log("warning", f"tool {name}({shown}) failed: {redact(str(exc))}")
            return f"error: {exc}", True
        job.log("info", f"tool {name}({shown}) -> {len(text.encode())} bytes")
        return text, False

    # --- the tools ------------------------------------------------------------------------------

    async def _http_fetch(self, job: AgentJob, args: dict[str, Any]) -> Any:
        url = args.get("url")
        if not isinstance(url, str):
            raise ToolError("url must be a string")
        return await http_fetch(
            job,
            url,
            policy=self.policy,
            max_bytes=self.settings.http_fetch_max_bytes,
            timeout_s=self.settings.timeout_s,
        )

    async def _pull_files(self, job: AgentJob, args: dict[str, Any]) -> Any:
        repo, number = check_pull(args.get("repo"), args.get("number"))
        return await self.github.pull_files(job, repo, number, await self.github.token(job))

    async def _pull_diff(self, job: AgentJob, args: dict[str, Any]) -> Any:
        repo, number = check_pull(args.get("repo"), args.get("number"))
        return await self.github.pull_diff(job, repo, number, await self.github.token(job))

    async def _comment(self, job: AgentJob, args: dict[str, Any]) -> Any:
        repo, number = check_pull(args.get("repo"), args.get("number"))
        body = args.get("body")
        if not isinstance(body, str) or not body.strip():
            raise ToolError("body must be the comment's text")
        token = await self.github.token(job)
        if not token:
            job.log(
                "info",
                f"no comment posted on {repo}#{number}: the project has no GitHub integration connected",
            )
            raise ToolError("not posted: this project has no GitHub integration connected")
        url = await self.github.comment(job, repo, number, body, token)
        job.log("info", f"review posted as a comment on {repo}#{number}")
        return {"posted": True, "url": url}

    async def _slack(self, job: AgentJob, args: dict[str, Any]) -> Any:
        s = self.settings
        return await post_message(
            job, self.client, s.slack_api_url, s.timeout_s, args.get("channel"), args.get("text")
        )

    async def _delegate(self, job: AgentJob, args: dict[str, Any]) -> Any:
        agent, task = args.get("agent"), args.get("task")
        if not isinstance(agent, str) or not agent:
            raise ToolError("agent must be an agent's name")
        if not isinstance(task, str) or not task.strip():
            raise ToolError("task must say what the agent should do")
        if agent == job.agent.name:
            raise ToolError("an agent cannot delegate to itself")
        result = await job.delegate(agent, task)
        return msgspec.to_builtins(result)
