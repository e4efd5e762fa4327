"""The edge middleware: correlation id in and out, a server span per request, JSON errors
that keep our headers (correlation id, rate-limit figures, Retry-After)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import _default_expect_handler
from opentelemetry import context, propagate, trace

from conveyor.receiver.state import CORRELATION_ID, RATE_LIMIT, STATE
from conveyor.shared import logs
from conveyor.shared.http import ERROR_CODES, HTTPError, json_error

log = logging.getLogger(__name__)

_CORRELATION = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_KEEP = ("Allow", "Retry-After", "WWW-Authenticate")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Correlation-ID", "")
    correlation = given if _CORRELATION.match(given) else uuid.uuid4().hex
    request[CORRELATION_ID] = correlation
    st = request.app[STATE]
    with logs.bound(correlation=correlation):
        if st.tracing:
            resp = await _traced(request, handler, st.rt.tracer)
        elif "traceparent" in request.headers:
            # No exporter here, but the caller's trace still continues downstream.
            token = context.attach(propagate.extract(request.headers))
            try:
                resp = await _answer(request, handler)
            finally:
                context.detach(token)
        else:
            resp = await _answer(request, handler)
    if not resp.prepared:
        resp.headers["X-Correlation-ID"] = correlation
        if (decision := request.get(RATE_LIMIT)) is not None:
            resp.headers.update(decision.headers())
    return resp


async def _traced(request: web.Request, handler: Handler, tracer: trace.Tracer) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    with tracer.start_as_current_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
    ) as span:
        resp = await _answer(request, handler)
        span.set_attribute("http.response.status_code", resp.status)
        return resp


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        resp = exc.response()
        if exc.status == 413:
            resp.force_close()  # the rest of the body is not read; the connection cannot be reused
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = exc.text or ""
        message = exc.reason if not text or text.startswith(f"{exc.status}:") else text
        resp = json_error(exc.status, ERROR_CODES.get(exc.status, "error"), message)
        for key in _KEEP:
            if key in exc.headers:
                resp.headers[key] = exc.headers[key]
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal", "internal error")


def expect_handler(limit: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """``Expect: 100-continue`` with a Content-Length over the limit gets its 413 before the
    client sends the body (curl asks this for bodies over 1 MB); otherwise aiohttp's usual
    "100 Continue"."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        length = request.content_length
        if (
            request.headers.get("Expect", "").lower() == "100-continue"
            and length is not None
            and length > limit
        ):
            resp = json_error(413, "payload_too_large", f"body is larger than {limit} bytes", limit=limit)
            resp.force_close()
            return resp
        await _default_expect_handler(request)
        return None

    return handle
