"""Serve one aiohttp request with an ASGI application (the MCP SDK's Streamable HTTP manager).

The request body goes in as ``http.request`` messages as it arrives; the response goes out
as aiohttp writes it, unbuffered, so a Server-Sent Events answer reaches the client event by
event. Once the body is read, ``receive`` answers ``http.disconnect`` when the client has gone
(its transport closing) or the response is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

from conveyor.shared.runtime.http import HTTPError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_CHUNK = 64 * 1024
_POLL_S = 0.5  # how often a finished-body receive() looks for a gone client


def scope_of(request: web.Request) -> Scope:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
        "state": {},
    }


async def serve(request: web.Request, app: App) -> web.StreamResponse:
    """Run ``app`` for ``request``; its answer, already sent (prepared). An app that ended
    without answering is the server's failure: HTTPError 503, which the edge answers as JSON."""
    done = asyncio.Event()
    body_done = False
    resp: web.StreamResponse | None = None

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            chunk = await request.content.read(_CHUNK)
            if chunk and not request.content.at_eof():
                return {"type": "http.request", "body": chunk, "more_body": True}
            body_done = True
            return {"type": "http.request", "body": chunk, "more_body": False}
        while not done.is_set():
            if request.transport is None or request.transport.is_closing():
                break
            try:
                await asyncio.wait_for(done.wait(), _POLL_S)
            except TimeoutError:
                continue
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal resp
        kind = message["type"]
        if kind == "http.response.start":
            resp = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", ()):
                resp.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            await resp.prepare(request)
        elif kind == "http.response.body":
            if resp is None:
                raise RuntimeError("http.response.body before http.response.start")
            body = message.get("body", b"")
            if body:
                await resp.write(body)
            if not message.get("more_body", False):
                await resp.write_eof()
                done.set()

    try:
        await app(scope_of(request), receive, send)
    finally:
        done.set()
    if resp is None:
        raise HTTPError(503, "unavailable", "the handler ended without an answer; retry")
    return resp
