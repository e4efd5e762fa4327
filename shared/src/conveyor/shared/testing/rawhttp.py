"""HTTP at the byte level for tests of the edge: a client connection that writes exact bytes
and reads HTTP/1.1 answers, and a helper that serves an aiohttp app on a free loopback port."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Self

from aiohttp import web


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # names lower-cased
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Raw:
    """One client connection that writes exact bytes and reads HTTP/1.1 answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, wait_s: float = 10) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), wait_s)
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(lines[0].split(" ")[1]), headers, body)

    async def closed(self, wait_s: float = 10) -> bool:
        """True once the server has closed the connection (without answering anything more)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), wait_s) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


async def serve_app(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """``app`` on 127.0.0.1 at a free port: its runner (``cleanup()`` stops it) and the port."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


class LocalServer:
    """A stand-in for a third party's HTTP API on a free loopback port: a subclass adds its
    routes; ``url`` is its base URL (plus ``base_path``) once started."""

    base_path = ""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        self.routes(app)
        self._runner, port = await serve_app(app, shutdown_timeout=0.5)
        self.url = f"http://127.0.0.1:{port}{self.base_path}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
