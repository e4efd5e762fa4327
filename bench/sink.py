"""The callback sink: an HTTP/1.1 endpoint in its own process that records every callback.

It verifies the Standard Webhooks signature (as a real receiver of callbacks would), notes
the arrival time (CLOCK_MONOTONIC, comparable with the driver's send times) and the jobId,
and answers 200. ``GET /stats`` gives counts; ``GET /arrivals`` the (jobId, time) pairs;
``POST /reset`` forgets everything between phases.

It is a bare asyncio protocol, not an aiohttp app, for the reason the load driver is wrk: it
shares two cores with the system under test, and every microsecond it spends per callback
is taken from the pipeline being measured (Conveyor's and the baseline's alike). aiohttp
cost 49 us of CPU per callback here, this 20 us (20,000 signed callbacks, 64 in flight). It speaks only what
both pipelines send: keep-alive requests with a Content-Length body (anything else gets a
400 and the connection is closed, which shows as failed callbacks, never as a silent loss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import msgspec

from bench import serving
from conveyor.shared.domain.signing import SignatureError, standard_verify

MAX_REQUEST = 4 * 1024 * 1024


class Callback(msgspec.Struct, rename="camel"):
    job_id: str
    status: str = ""


class Sink:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self.decoder = msgspec.json.Decoder(Callback)
        self.reset()

    def reset(self) -> None:
        self.jobs: list[str] = []
        self.times: list[float] = []
        self.seen: set[str] = set()
        self.bad_signature = 0
        self.bad_body = 0
        self.not_completed = 0
        self.peers: set[object] = set()  # client (address, port) pairs that sent callbacks

    def callback(self, peer: object, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        now = time.monotonic()
        try:
            cb = self.decoder.decode(body)
        except msgspec.DecodeError:
            self.bad_body += 1
            return 400, b'{"error":"not a callback body"}'
        if self.secrets:
            try:
                standard_verify(self.secrets, body, headers)
            except SignatureError:
                self.bad_signature += 1
        if cb.status != "completed":
            self.not_completed += 1
        self.peers.add(peer)
        self.jobs.append(cb.job_id)
        self.times.append(now)
        self.seen.add(cb.job_id)
        return 200, b'{"ok":true}'

    def route(
        self, peer: object, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if method == "POST" and path == "/reset":
            self.reset()
            return 200, b'{"ok":true}'
        if method == "GET" and path == "/stats":
            return 200, json.dumps(
                {
                    "count": len(self.jobs),
                    "unique": len(self.seen),
                    "bad_signature": self.bad_signature,
                    "bad_body": self.bad_body,
                    "not_completed": self.not_completed,
                    "connections": len(self.peers),
                    "last_at": self.times[-1] if self.times else None,
                    "now": time.monotonic(),
                }
            ).encode()
        if method == "GET" and path == "/arrivals":
            return 200, json.dumps({"jobs": self.jobs, "times": self.times}).encode()
        if method == "POST":
            return self.callback(peer, headers, body)
        return 405, b'{"error":"method not allowed"}'


_REASONS = {200: b"OK", 400: b"Bad Request", 405: b"Method Not Allowed"}


class _Connection(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length", "0")
            if len(parts) != 3 or "transfer-encoding" in headers or not length.isdigit():
                out.append(_answer(400, b'{"error":"want a Content-Length body"}', close=True))
                self._send(out, close=True)
                return
            if int(length) > MAX_REQUEST:
                self._send([_answer(400, b'{"error":"too large"}', close=True)], close=True)
                return
            total = end + 4 + int(length)
            if len(self.buf) < total:
                break
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            status, answer = self.sink.route(self.peer, parts[0], parts[1], headers, body)
            out.append(_answer(status, answer))
        if out:
            self._send(out)

    def _send(self, out: list[bytes], close: bool = False) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(out))
        if close:
            self.transport.close()


def _answer(status: int, body: bytes, close: bool = False) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
        b"Connection: close\r\n" if close else b"",
        body,
    )


async def serve(port: int, secrets: list[str]) -> None:
    sink = Sink(secrets)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(sink), "127.0.0.1", port, backlog=1024)
    await serving.ready_until_signalled()
    server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secrets", default="", help="comma-separated whsec_ secrets; empty = do not verify")
    args = p.parse_args()
    serving.run_fast(serve(args.port, [s for s in args.secrets.split(",") if s]))


if __name__ == "__main__":
    main()
