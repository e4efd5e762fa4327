"""The builtin backend: the offline analyses in ``conveyor.executor.builtin``, plus ``sleep``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from conveyor.executor.backends.base import AgentError, AgentJob
from conveyor.executor.builtin import ANALYSES, Payload
from conveyor.shared.contracts.events import NOT_JSON, ResultBody

if TYPE_CHECKING:
    from conveyor.executor.tools.box import Toolbox

# Payloads above this are analysed in a thread so a big upload never stalls other jobs.
INLINE_BYTES = 64 * 1024
MAX_SLEEP_MS = 24 * 3600 * 1000


def sleep_ms(payload: Payload) -> int:
    for key in ("ms", "sleep_ms", "duration_ms"):
        v = payload.data.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not 0 <= v <= MAX_SLEEP_MS:
                raise AgentError(f"sleep: {key} must be between 0 and {MAX_SLEEP_MS}")
            return int(v)
    text = (payload.prompt or "").strip()
    if text.isascii() and text.isdigit():
        if len(text) > 9 or int(text) > MAX_SLEEP_MS:
            raise AgentError(f"sleep: the prompt must be a number of milliseconds up to {MAX_SLEEP_MS}")
        return int(text)
    return 1000


class BuiltinBackend:
    name = "builtin"

    def __init__(self, tools: Toolbox | None = None) -> None:
        self.tools = tools

    async def run(self, job: AgentJob) -> ResultBody:
        name = job.agent.builtin
        if name == "noop":
            return ResultBody(summary=f"{job.agent.name}: nothing to do (noop agent)")
        if name == "pr-review":
            if self.tools is None:
                raise AgentError("pr-review needs the GitHub client, which this backend was built without")
            # Imported here: the tools are built on this package's base module.
            from conveyor.executor.tools.review import review_pull_request

            return await review_pull_request(job, self.tools.github)
        raw = bytes(job.request.input)
        try:
            value = msgspec.json.decode(raw) if raw else {}
        except NOT_JSON as exc:
            raise AgentError(f"input is not JSON: {exc}") from exc
        payload = Payload.of(value, job.request.prompt)
        if name == "sleep":
            ms = sleep_ms(payload)
            await asyncio.sleep(ms / 1000)
            return ResultBody(summary=f"{job.agent.name}: slept {ms} ms")
        analysis = ANALYSES.get(name)
        if analysis is None:
            raise AgentError(f"no builtin analysis named {name!r}")
        if len(raw) > INLINE_BYTES:
            return await asyncio.to_thread(analysis, payload, job.agent.name)
        return analysis(payload, job.agent.name)
