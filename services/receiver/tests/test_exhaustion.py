"""Clients that hold the receiver's resources, on both HTTP paths (the lean webhook path and
aiohttp's): a head or a body sent too slowly is dropped, connections past MAX_CONNECTIONS are
refused, and request bodies past MAX_BODY_BYTES_IN_FLIGHT are refused before they are read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from conveyor.receiver.state import STATE
from conveyor.shared.contracts import subjects
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.rawhttp import Raw

PATHS = pytest.mark.parametrize("fast", [True, False], ids=["lean", "aiohttp"])


def head(length: int, headers: dict[str, str] | None = None, path: str = "/api/webhooks/lovable") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sized(lovable: Any, size: int, **over: Any) -> bytes:
    """A Lovable webhook body of exactly ``size`` bytes."""
    body = lovable.body(data={"pad": ""}, **over)
    return lovable.body(data={"pad": "x" * (size - len(body))}, id=json.loads(body)["id"])


@PATHS
async def test_a_half_head_is_dropped_after_the_header_timeout(start_receiver, lovable, fast) -> None:
    async with start_receiver(fast_webhooks=fast, header_timeout_s=0.5) as r:
        port = r.rt.http_port
        half_webhook = await Raw.open(port)
        await half_webhook.send(b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Le")
        half_other = await Raw.open(port)  # another route: aiohttp's parser holds it on either path
        await half_other.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        silent = await Raw.open(port)  # connects and never sends a byte
        # Served, then idle: the next head is due within the same time.
        idle = await Raw.open(port)
        body = lovable.body()
        await idle.send(head(len(body), lovable.headers(body)) + body)
        assert (await idle.answer()).status == 202
        for conn in (half_webhook, half_other, silent, idle):
            assert await conn.closed()
            conn.close()


@PATHS
async def test_a_slow_body_is_answered_408_and_dropped(start_receiver, lovable, bus, fast) -> None:
    async with start_receiver(fast_webhooks=fast, body_timeout_s=0.5) as r:
        body = lovable.body()
        conn = await Raw.open(r.rt.http_port)
        await conn.send(head(len(body), lovable.headers(body)) + body[:10])
        got = await conn.answer()
        status, headers, error = got.status, got.headers, got.json()
        assert status == 408, error
        assert error["error"] == "body_timeout" and "BODY_TIMEOUT_S" in error["message"]
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert await conn.closed()
        conn.close()
        # A body that keeps coming, too slowly, is dropped all the same.
        conn = await Raw.open(r.rt.http_port)
        await conn.send(head(len(body), lovable.headers(body)))
        answered = asyncio.create_task(conn.answer())
        for i in range(len(body) - 1):
            if answered.done():
                break
            await conn.send(body[i : i + 1])
            await asyncio.sleep(0.05)
        got = await answered
        assert (got.status, got.json()["error"]) == (408, "body_timeout")
        assert await conn.closed()
        conn.close()
        await bus.assert_nothing_accepted()


@PATHS
async def test_connections_over_the_cap_are_refused(start_receiver, lovable, fast) -> None:
    async with start_receiver(fast_webhooks=fast, max_connections=3, header_timeout_s=30) as r:
        port = r.rt.http_port
        half = await Raw.open(port)  # a head on its way
        await half.send(b"POST /api/webhooks/lovable HTTP/1.1\r\n")
        webhook = await Raw.open(port)  # answered on the lean path (when on), then idle
        body = lovable.body()
        await webhook.send(head(len(body), lovable.headers(body)) + body)
        assert (await webhook.answer()).status == 202
        other = await Raw.open(port)  # another route: aiohttp's
        await other.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await other.answer()).status == 200
        # Connections are accepted in order: all three are open on the server now.
        extra = await Raw.open(port)
        got = await extra.answer()
        status, headers, error = got.status, got.headers, got.json()
        assert await extra.closed()
        extra.close()
        assert (status, error["error"]) == (503, "too_many_connections"), error
        assert headers["retry-after"] == "5" and headers["connection"] == "close"
        assert "x-correlation-id" in headers
        # One closes: there is room again.
        other.close()

        async def served() -> None:
            again = await Raw.open(port)
            await again.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            status = (await again.answer()).status
            again.close()
            assert status == 200

        await eventually(served)
        for conn in (webhook, half):
            conn.close()


@PATHS
async def test_body_bytes_in_flight_are_capped(start_receiver, lovable, bus, fast) -> None:
    async with start_receiver(
        fast_webhooks=fast, max_body_bytes=1000, max_body_bytes_in_flight=2500, body_timeout_s=30
    ) as r:
        port = r.rt.http_port

        async def free(size: int) -> None:
            budget = r.rt.app[STATE].body_budget
            assert budget.free == size, budget.free

        # Two bodies of 1000 bytes on their way: 2000 of 2500 held.
        bodies = [sized(lovable, 1000) for _ in range(2)]
        holders = []
        for body in bodies:
            conn = await Raw.open(port)
            await conn.send(head(len(body), lovable.headers(body)) + body[:100])
            holders.append(conn)
        # Another request answered after both heads were sent: both are held by now.
        barrier = await Raw.open(port)
        await barrier.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await barrier.answer()).status == 200
        barrier.close()
        # A third 1000 does not fit: refused before its body is read.
        body = sized(lovable, 1000)
        conn = await Raw.open(port)
        await conn.send(head(len(body), lovable.headers(body)))
        got = await conn.answer()
        status, headers, error = got.status, got.headers, got.json()
        assert (status, error["error"]) == (503, "overloaded"), error
        assert "MAX_BODY_BYTES_IN_FLIGHT" in error["message"]
        assert headers["retry-after"] == "5"
        await conn.send(body)  # what it sends anyway is read and dropped
        assert await conn.closed()
        conn.close()
        await free(500)
        # 400 more do fit.
        small = sized(lovable, 400)
        conn = await Raw.open(port)
        await conn.send(head(len(small), lovable.headers(small)) + small)
        assert (await conn.answer()).status == 202
        conn.close()
        # The first body completes: its bytes are given back with its answer.
        await holders[0].send(bodies[0][100:])
        assert (await holders[0].answer()).status == 202
        holders[0].close()
        body = sized(lovable, 1000)
        conn = await Raw.open(port)
        await conn.send(head(len(body), lovable.headers(body)) + body)
        assert (await conn.answer()).status == 202
        conn.close()
        # A client that leaves halfway gives its bytes back too.
        holders[1].close()
        await eventually(lambda: free(2500))
        pair = []
        for _ in range(2):
            b = sized(lovable, 1000)
            c = await Raw.open(port)
            await c.send(head(len(b), lovable.headers(b)) + b[:10])
            pair.append((c, b))
        for c, b in pair:
            await c.send(b[10:])
            got = await c.answer()
            c.close()
            assert got.status == 202, got.body
        assert await bus.count(subjects.EVENTS) == 5
        await eventually(lambda: free(2500))
