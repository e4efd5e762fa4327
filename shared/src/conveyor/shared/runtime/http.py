"""HTTP pieces every service shares: health, metrics, JSON errors, request metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

log = logging.getLogger(__name__)


def error_body(error: str, message: str, **extra: Any) -> bytes:
    """A JSON error body: ``{"error": <code>, "message": <human text>, ...}``."""
    return msgspec.json.encode({"error": error, "message": message, **extra})


def json_error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return web.Response(
        body=error_body(error, message, **extra), status=status, content_type="application/json"
    )


class HTTPError(Exception):
    """Raise from a handler to answer with a JSON error; the middleware turns it into a response."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.close = close  # the connection is closed after the answer (its body was not read)
        self.extra = extra

    def body(self) -> bytes:
        return error_body(self.error, self.message, **self.extra)

    def response(self) -> web.Response:
        resp = json_error(self.status, self.error, self.message, **self.extra)
        resp.headers.update(self.headers)
        return resp


ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    503: "unavailable",
}


_KEEP = ("Allow", "Retry-After", "WWW-Authenticate")  # headers of aiohttp's errors kept in ours


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for what a handler raised: an HTTPError as it says, aiohttp's own HTTP
    errors (404, 405, 413, ...) with their status and the headers that matter, anything else a
    logged 500 without detail. A redirect is raised again.

    The answered exception's traceback is dropped. aiohttp answers an unknown path (404) or
    method (405) by raising an exception its route object holds, so exception -> traceback ->
    frame -> route -> exception is a cycle that only the garbage collector frees, the request
    with it: about 25 objects per such request. A flood of them made a 10 ms collection every
    700 or so requests, and now and then a full one of 30-100 ms, stalling every request in
    flight."""
    resp = _error_response(request, exc)
    exc.__traceback__ = None
    return resp


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, HTTPError):
        resp = exc.response()
        if exc.close or exc.status in (408, 413):
            resp.force_close()  # the rest of the body is not read; the connection cannot be reused
        return resp
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        text = exc.text or ""
        message = exc.reason if not text or text.startswith(f"{exc.status}:") else text
        resp = json_error(exc.status, ERROR_CODES.get(exc.status, "error"), message)
        for key in _KEEP:
            if key in exc.headers:
                resp.headers[key] = exc.headers[key]
        return resp
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal", "internal error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON (:func:`error_answer`)."""
    try:
        return await handler(request)
    except Exception as exc:
        return error_answer(request, exc)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests, by method, route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration, by method and route.",
            ["method", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its duration (label children looked up once per combination)."""
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)


def route_name(request: web.Request) -> str:
    """The route's pattern (``/api/jobs/{job_id}``), or "unmatched": a bounded metric label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(metrics: HttpMetrics) -> Callable[..., Any]:
    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe(request.method, route_name(request), status, time.perf_counter() - started)

    return mw


def health_routes(
    app: web.Application,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    details: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """/health/live (the loop answers), /health/ready (NATS connected, not stopping), /metrics."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        body = {"status": "ready" if is_ready() else "not_ready", **(details() if details else {})}
        return web.json_response(
            body, status=200 if is_ready() else 503, dumps=lambda o: json.dumps(o, default=str)
        )

    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
