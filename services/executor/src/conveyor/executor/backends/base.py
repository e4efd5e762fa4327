"""What every backend shares: the job it is handed, the errors it may raise, and the one place
where model or program output is validated into the result contract."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from conveyor.executor.registry import Agent
from conveyor.shared.contracts.events import NOT_JSON, JobRequest, ResultBody, TokenUsage


class AgentError(Exception):
    """The attempt failed and another attempt would fail the same way (bad input, refused request)."""

    transient = False


class TransientError(AgentError):
    """The attempt failed for a reason that may pass: timeouts, 5xx, 429, dropped connections."""

    transient = True

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status_code = status_code


class MalformedOutput(TransientError):
    """The agent answered, but not with a result we can use; a new attempt may do better."""


class BudgetExceeded(AgentError):
    """The project's token or cost budget is spent: the run stops and is not retried."""


def _no_output(text: str) -> None:
    return None


def _no_usage(usage: TokenUsage) -> None:
    return None


async def _no_credentials(provider: str) -> str | None:
    return None


async def _no_delegate(agent: str, task: str) -> ResultBody:
    raise AgentError("delegation is not available to this run")


@dataclass
class AgentJob:
    """One attempt of one job, as a backend sees it."""

    agent: Agent
    request: JobRequest
    attempt: int
    deadline: float  # time.monotonic() by which the attempt must end
    log: Callable[[str, str], None]  # (level, message) -> the job's log
    progress: Callable[[int], None]
    # Text as the model streams it: output events on the job's SSE stream (and progress
    # callbacks when the project asks for them).
    output: Callable[[str], None] = field(default=_no_output)
    # One LLM response's usage, reported as soon as it is known; raises BudgetExceeded when
    # the project's budget is spent, which ends the run.
    usage: Callable[[TokenUsage], None] = field(default=_no_usage)
    # provider ("github", "slack") -> a token for the job's project, None when not connected.
    credentials: Callable[[str], Awaitable[str | None]] = field(default=_no_credentials)
    # (agent, task) -> run another agent of the job's project on the task and wait for it.
    delegate: Callable[[str, str], Awaitable[ResultBody]] = field(default=_no_delegate)

    @property
    def remaining_s(self) -> float:
        return max(0.001, self.deadline - time.monotonic())


class Backend(Protocol):
    name: str

    async def run(self, job: AgentJob) -> ResultBody: ...


class _Output(msgspec.Struct, kw_only=True):
    summary: str
    files_changed: list[str] = []
    suggestions: list[str] = []
    code_diff: str | None = None


def _candidates(text: str) -> list[str]:
    """The text itself, the inside of a ```json fence, and the outermost {...} span."""
    out = [text.strip()]
    if "```" in text:
        for block in text.split("```")[1::2]:
            out.append(block.removeprefix("json").removeprefix("JSON").strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        out.append(text[start : end + 1])
    return out


def parse_output(text: str | bytes, source: str) -> ResultBody:
    """Validate an agent's answer into the result contract, or raise MalformedOutput saying why."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        raise MalformedOutput(f"{source} returned an empty answer")
    problem = "no JSON object found"
    for candidate in _candidates(text):
        try:
            value = msgspec.json.decode(candidate)
        except NOT_JSON:
            continue
        if isinstance(value, dict) and isinstance(value.get("result"), dict) and "summary" not in value:
            value = value["result"]  # {"result": {...}}: the contract's own nesting
        try:
            body = msgspec.convert(value, _Output)
        except msgspec.ValidationError as exc:
            problem = f"does not match the result contract: {exc}"
            continue
        if not body.summary.strip():
            problem = "has an empty summary"
            continue
        if body.code_diff:
            return ResultBody(
                summary=body.summary,
                files_changed=body.files_changed,
                suggestions=body.suggestions,
                code_diff=body.code_diff,
            )
        return ResultBody(
            summary=body.summary, files_changed=body.files_changed, suggestions=body.suggestions
        )
    snippet = text.strip().replace("\n", " ")[:200]
    raise MalformedOutput(f"{source} output {problem}: {snippet!r}")


def retry_after(value: str | None, cap_s: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(0.0, seconds), cap_s)


def user_message(job: AgentJob) -> str:
    """The job as the model reads it: the task, where it came from, and its input."""
    req = job.request
    task = req.prompt or f"Do the work of the {job.agent.name} agent on the input below."
    where = f"event {req.event_type} from {req.source}" if req.event_type else f"request from {req.source}"
    project = f", project {req.project_id}" if req.project_id else ""
    raw = bytes(req.input)
    if len(raw) > 200_000:
        raw = raw[:200_000] + b"... (truncated)"
    return f"Task: {task}\nContext: {where}{project}\nInput (JSON):\n{raw.decode('utf-8', errors='replace')}"


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    task.cancel()
    try:
        await task
    except BaseException:
        pass
