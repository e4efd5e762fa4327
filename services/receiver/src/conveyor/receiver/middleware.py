"""The edge middleware: correlation id in and out, a server span per request, JSON errors
that keep our headers (correlation id, rate-limit figures, Retry-After), request metrics."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import _default_expect_handler
from opentelemetry import context, propagate, trace

from conveyor.receiver.state import CORRELATION_ID, RATE_LIMIT, STATE
from conveyor.shared.runtime import logs
from conveyor.shared.runtime.http import HTTPError, HttpMetrics, error_answer, json_error, route_name

_CORRELATION = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}\Z")


def correlation_for(given: str) -> str:
    """The caller's X-Correlation-ID when it is a plain token, else a fresh one."""
    return given if given and _CORRELATION.match(given) else os.urandom(16).hex()


def undecodable_header(headers: Mapping[str, str]) -> str | None:
    """The first header whose value is not UTF-8. aiohttp keeps such bytes as lone surrogates,
    which no encoder, hash or comparison downstream accepts."""
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return str(name)  # a plain str: istr does not encode
    return None


async def _bad_header(request: web.Request) -> web.StreamResponse:
    name = undecodable_header(request.headers)
    raise HTTPError(400, "invalid_header", f"header {name} is not valid UTF-8", field=name)


async def _key_in_query(request: web.Request) -> web.StreamResponse:
    raise HTTPError(
        400,
        "api_key_in_query",
        "api_key is accepted in the query string only by Server-Sent Event routes (EventSource "
        "cannot send headers): URLs end up in logs and histories. Send Authorization: Bearer <key>",
        field="api_key",
    )


def key_in_query(request: web.Request, allowed: frozenset[str]) -> bool:
    """Whether ``request`` carries ?api_key= on a route that must not take it."""
    if request.match_info.http_exception is not None:
        return False  # no route takes this method or path: its 404 or 405 says so first
    return "?" in request.raw_path and "api_key" in request.query and route_name(request) not in allowed


def edge(metrics: HttpMetrics) -> Middleware:
    """The receiver's one middleware, in place of the runner's error and metrics pair: one
    coroutine per request instead of three on a route that answers thousands a second."""

    @web.middleware
    async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        correlation = correlation_for(request.headers.get("X-Correlation-ID", ""))
        request[CORRELATION_ID] = correlation
        st = request.app[STATE]
        status = 500
        token = logs.correlation_id.set(correlation)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            handler = st.preflight
        elif undecodable_header(request.headers) is not None:
            handler = _bad_header
        elif key_in_query(request, st.query_key_routes):
            handler = _key_in_query
        try:
            if st.tracing:
                resp = await _traced(request, handler, st.rt.tracer)
            elif "traceparent" in request.headers:
                # No exporter here, but the caller's trace still continues downstream.
                ctx = context.attach(propagate.extract(request.headers))
                try:
                    resp = await _answer(request, handler)
                finally:
                    context.detach(ctx)
            else:
                try:
                    resp = await handler(request)
                except Exception as exc:
                    resp = error_answer(request, exc)
            status = resp.status
        except web.HTTPException as exc:  # a redirect, passed on as aiohttp raised it
            status = exc.status
            raise
        finally:
            st.release_body(request)
            logs.correlation_id.reset(token)
            metrics.observe(request.method, route_name(request), status, time.perf_counter() - started)
        if not resp.prepared:
            resp.headers["X-Correlation-ID"] = correlation
            if (decision := request.get(RATE_LIMIT)) is not None:
                resp.headers.update(decision.headers())
            if "Origin" in request.headers:
                resp.headers.update(st.cors_headers(request))
        return resp

    return edge_middleware


async def _traced(request: web.Request, handler: Handler, tracer: trace.Tracer) -> web.StreamResponse:
    route = route_name(request)
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
    except Exception as exc:
        return error_answer(request, exc)


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
