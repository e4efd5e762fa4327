"""A local Slack Web API for tests: chat.postMessage as Slack documents it.

Slack answers HTTP 200 with ``{"ok": false, "error": ...}`` for a missing token
(``not_authed``), a wrong one (``invalid_auth``), an unknown channel (``channel_not_found``)
or no text (``no_text``), and ``{"ok": true, "channel", "ts", "message"}`` for a posted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from conveyor.shared.testing.rawhttp import LocalServer


@dataclass
class Message:
    channel: str
    text: str
    headers: dict[str, str]


class FakeSlack(LocalServer):
    base_path = "/api"

    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("C0123456789",)) -> None:
        super().__init__()
        self.token = token
        self.channels = set(channels)
        self.messages: list[Message] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat.postMessage", self._post)

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
