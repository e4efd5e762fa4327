"""Slack's chat.postMessage with the project's bot token.

Slack answers HTTP 200 for most failures and says so in the body: ``{"ok": false, "error":
"channel_not_found"}``; only ``ok: true`` is a posted message.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from conveyor.executor.backends.base import AgentJob, TransientError
from conveyor.executor.tools.errors import ToolError


async def post_message(
    job: AgentJob, client: httpx.AsyncClient, base_url: str, timeout_s: float, channel: Any, text: Any
) -> dict[str, Any]:
    if not isinstance(channel, str) or not channel.strip():
        raise ToolError("channel must be a channel id or name")
    if not isinstance(text, str) or not text.strip():
        raise ToolError("text must be the message to post")
    token = await job.credentials("slack")
    if not token:
        job.log("info", "no Slack message posted: the project has no Slack integration connected")
        raise ToolError("not posted: this project has no Slack integration connected")
    try:
        resp = await client.post(
            base_url.rstrip("/") + "/chat.postMessage",
            headers={"authorization": f"Bearer {token}", "content-type": "application/json; charset=utf-8"},
            content=msgspec.json.encode({"channel": channel, "text": text[:40_000]}),
            timeout=httpx.Timeout(min(timeout_s, job.remaining_s)),
        )
    except httpx.TransportError as exc:
        raise TransientError(f"Slack API unreachable: {type(exc).__name__}") from exc
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientError(f"Slack API answered {resp.status_code}", status_code=resp.status_code)
    try:
        answer = resp.json()
    except ValueError:
        raise ToolError(f"Slack API answered {resp.status_code} with a body that is not JSON") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ToolError(f"Slack refused the message: {error or f'HTTP {resp.status_code}'}")
    return {"ok": True, "channel": answer.get("channel"), "ts": answer.get("ts")}
