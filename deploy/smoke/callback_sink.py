"""Callback endpoint for `make smoke`: checks the Standard Webhooks signature of each callback
and prints one JSON line per callback (scripts/smoke.sh reads them from the container log)."""

from __future__ import annotations

import json
import os
import sys

from aiohttp import web

from conveyor.shared.domain.signing import SignatureError, standard_verify

SECRETS = [s.strip() for s in os.environ["CALLBACK_SIGNING_SECRETS"].split(",") if s.strip()]


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        standard_verify(SECRETS, body, request.headers)
        verified, reason = True, ""
    except SignatureError as exc:
        verified, reason = False, exc.reason
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"raw": body.decode(errors="replace")}
    line = {"callback": doc, "path": request.path, "verified": verified, "reason": reason}
    print(json.dumps(line), flush=True)
    return web.json_response({"ok": verified}, status=200 if verified else 401)


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/{tail:.*}", receive)
    print("callback sink listening on :8090", file=sys.stderr, flush=True)
    web.run_app(app, host="0.0.0.0", port=8090, print=None, access_log=None)


if __name__ == "__main__":
    main()
