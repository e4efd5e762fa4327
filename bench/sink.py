"""The callback sink: an aiohttp endpoint in its own process that records every callback.

It verifies the Standard Webhooks signature (as a real receiver of callbacks would), notes
the arrival time (CLOCK_MONOTONIC, comparable with the driver's send times) and the jobId,
and answers 200. ``GET /stats`` gives counts; ``GET /arrivals`` the (jobId, time) pairs;
``POST /reset`` forgets everything between phases.
"""

from __future__ import annotations

import argparse
import time

import msgspec
from aiohttp import web

from bench import serving
from conveyor.shared.signing import SignatureError, standard_verify


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
        self.peers: set[object] = set()  # client (address, port) pairs: connections opened

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        try:
            cb = self.decoder.decode(body)
        except msgspec.DecodeError:
            self.bad_body += 1
            return web.json_response({"error": "not a callback body"}, status=400)
        if self.secrets:
            try:
                standard_verify(self.secrets, body, request.headers)
            except SignatureError:
                self.bad_signature += 1
        if cb.status != "completed":
            self.not_completed += 1
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        self.jobs.append(cb.job_id)
        self.times.append(now)
        self.seen.add(cb.job_id)
        return web.Response(status=200, body=b'{"ok":true}', content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
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
        )

    async def arrivals(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": self.jobs, "times": self.times})

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


async def serve(port: int, secrets: list[str]) -> None:
    sink = Sink(secrets)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/stats", sink.stats)
    app.router.add_get("/arrivals", sink.arrivals)
    app.router.add_post("/reset", sink.do_reset)
    app.router.add_post("/{tail:.*}", sink.receive)
    await serving.until_signalled(app, port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secrets", default="", help="comma-separated whsec_ secrets; empty = do not verify")
    args = p.parse_args()
    serving.run_fast(serve(args.port, [s for s in args.secrets.split(",") if s]))


if __name__ == "__main__":
    main()
