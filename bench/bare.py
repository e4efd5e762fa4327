"""The HTTP floor: a bare aiohttp handler that reads the POST body and answers 202.

No signature check, no NATS, no middlewares: whatever the receiver does costs time on top
of this. It runs on the same event loop the services get from the runner (uvloop when
installed, else asyncio's default), with the same access-log setting (off).
"""

from __future__ import annotations

import argparse

from aiohttp import web

from bench import serving

ANSWER = b'{"job_id":"job_00000000000000000000000000000000","duplicate":false}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=ANSWER, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/api/webhooks/{source}", accept)
    await serving.until_signalled(app, port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    port = p.parse_args().port
    serving.run_fast(serve(port))


if __name__ == "__main__":
    main()
