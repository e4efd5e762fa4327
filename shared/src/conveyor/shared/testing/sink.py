"""A real HTTP callback endpoint for tests: records every request it receives."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from conveyor.shared.testing.rawhttp import serve_app


class CallbackSink:
    """POST /callback on 127.0.0.1:<free port>; ``received`` keeps (headers, raw body) pairs."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> CallbackSink:
        async def receive(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/callback", receive)
        self.runner, port = await serve_app(app)
        self.port = port
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.received]

    def job_ids(self) -> list[str]:
        return [str(b["jobId"]) for b in self.bodies]
