"""A local Slack Web API for tests: chat.postMessage as Slack documents it.

Slack answers HTTP 200 with ``{"ok": false, "error": ...}`` for a missing token
(``not_authed``), a wrong one (``invalid_auth``), an unknown channel (``channel_not_found``)
or no text (``no_text``), and ``{"ok": true, "channel", "ts", "message"}`` for a posted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from conveyor.shared.testing.rawhttp import serve_app


@dataclass
class Message:
    channel: str
    text: str
    headers: dict[str, str]


class FakeSlack:
    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("C0123456789",)) -> None:
        self.token = token
        self.channels = set(channels)
        self.messages: list[Message] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post)
        self._runner, port = await serve_app(app, shutdown_timeout=0.5)
        self.url = f"http://127.0.0.1:{port}/api"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        def fail(error: str) -> web.Response:
            return web.json_response({"ok": False, "error": error})

        auth = request.headers.get("Authorization")
        if not auth:
            return fail("not_authed")
        if auth != f"Bearer {self.token}":
            return fail("invalid_auth")
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return fail("invalid_form_data")
        try:
            body: Any = await request.json()
        except ValueError:
            return fail("invalid_json")
        if not isinstance(body, dict) or body.get("channel") not in self.channels:
            return fail("channel_not_found")
        if not isinstance(body.get("text"), str) or not body["text"]:
            return fail("no_text")
        self.messages.append(Message(body["channel"], body["text"], dict(request.headers)))
        ts = f"1503435956.{len(self.messages):06d}"
        return web.json_response(
            {
                "ok": True,
                "channel": body["channel"],
                "ts": ts,
                "message": {"type": "message", "text": body["text"], "ts": ts, "bot_id": "B0123"},
            }
        )
