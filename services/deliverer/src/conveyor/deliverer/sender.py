"""One HTTP client per process, and one callback attempt with its outcome classified.

Outcomes: ``ok`` (2xx), ``retry`` (connection error, timeout, 408, 429, 5xx), ``final``
(any other answer: 3xx is not followed, 4xx will not change by retrying) and ``refused``
(the URL is invalid or the SSRF guard refused its address).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpcore
import httpx

from conveyor.deliverer.ssrf import AddressPolicy, BlockedAddressError, GuardedBackend

Kind = Literal["ok", "retry", "final", "refused"]

USER_AGENT = "Conveyor-Deliverer/0.1"
RETRYABLE_STATUS = frozenset({408, 429})
# What we read of an answer: enough for an error message; the connection is dropped past it.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    kind: Kind
    status_code: int | None
    latency_s: float
    error: str | None = None
    retry_after_s: float | None = None


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool dialling through the SSRF guard."""

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx has no parameter for the network backend, so build the pool it would build,
        # with ours. No proxy: a proxy would dial for us and the guard would check the proxy.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(policy),
        )


def build_client(policy: AddressPolicy, *, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=30.0
    )
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, limits),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a callback URL, or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"invalid callback URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return f"invalid callback URL: scheme {parsed.scheme!r} (want http or https)"
    if not parsed.host:
        return "invalid callback URL: no host"
    return None


def endpoint_of(url: str) -> str:
    """The circuit-breaker key: scheme://host:port (a host that is down is down for all paths)."""
    try:
        u = httpx.URL(url)
        return f"{u.scheme}://{u.host}:{u.port or (443 if u.scheme == 'https' else 80)}"
    except (httpx.InvalidURL, TypeError):
        return url


def _snippet(data: bytes) -> str:
    text = data[:200].decode(errors="replace").replace("\r", " ").replace("\n", " ").strip()
    return f": {text}" if text else ""


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
) -> Attempt:
    """POST once; never raises for anything the endpoint or the network did."""
    started = time.perf_counter()

    def took() -> float:
        return time.perf_counter() - started

    if (problem := check_url(url)) is not None:
        return Attempt("refused", None, took(), problem)
    try:
        # httpx's timeout is per phase; this bounds the whole attempt, so AckWait can exceed it.
        async with asyncio.timeout(timeout_s):
            request = client.build_request("POST", url, content=body, headers=headers)
            response = await client.send(request, stream=True)
            try:
                head = b""
                read = 0
                async for chunk in response.aiter_raw():
                    if len(head) < 200:
                        head += chunk[: 200 - len(head)]
                    read += len(chunk)
                    if read > MAX_ANSWER_BYTES:
                        break
            finally:
                await response.aclose()
    except BlockedAddressError as exc:
        return Attempt("refused", None, took(), str(exc))
    except (TimeoutError, httpx.TimeoutException):
        return Attempt("retry", None, took(), f"timed out after {timeout_s:g}s")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return Attempt("refused", None, took(), f"invalid callback URL: {exc}")
    except httpx.HTTPError as exc:
        return Attempt(
            "retry", None, took(), f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )

    status = response.status_code
    latency = took()
    if 200 <= status < 300:
        return Attempt("ok", status, latency)
    if status in RETRYABLE_STATUS or status >= 500:
        return Attempt(
            "retry",
            status,
            latency,
            f"HTTP {status}{_snippet(head)}",
            parse_retry_after(response.headers.get("retry-after")),
        )
    if 300 <= status < 400:
        where = response.headers.get("location", "")
        return Attempt("final", status, latency, f"HTTP {status} redirect to {where!r} not followed")
    return Attempt("final", status, latency, f"HTTP {status}{_snippet(head)}")
