"""One callback attempt with its outcome classified, over the process's one HTTP client.

Outcomes: ``ok`` (2xx), ``retry`` (connection error, timeout, malformed answer, 408, 429,
5xx), ``final`` (any other answer: 3xx is not followed, 4xx will not change by retrying) and
``refused`` (the URL is invalid or the SSRF guard refused its address).

What the endpoint answered beyond its status (the start of a body, a redirect's Location) is in
``Attempt.answer``, for the log line only: ``error`` is stored in the attempt log and the DLQ,
which API callers read, and echoing answers there would let anyone who can submit a callback
URL read back what the deliverer can reach.

The client is ``http_client.CallbackClient`` (why not aiohttp's or httpx: see that module
and the README).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from conveyor.deliverer.http_client import CallbackClient, ProtocolError, Target, UnsendableHeader
from conveyor.shared.runtime.ssrf import AddressPolicy, BlockedAddressError
from conveyor.shared.runtime.urls import InvalidCallbackURL, check_callback_url, redact_url

Kind = Literal["ok", "retry", "final", "refused"]

USER_AGENT = "Conveyor-Deliverer/0.1"
RETRYABLE_STATUS = frozenset({408, 429})
# What we read of an answer: enough for a log line; the connection is dropped past it.
MAX_ANSWER_BYTES = 64 * 1024
LOGGED_ANSWER_BYTES = 200  # of a failed answer's body, in the log line


@dataclass(frozen=True, slots=True)
class Attempt:
    kind: Kind
    status_code: int | None
    latency_s: float
    error: str | None = None  # stored and shown: never anything the endpoint wrote
    retry_after_s: float | None = None
    answer: str | None = None  # the start of the body, or a redirect's Location: logged only


def build_client(policy: AddressPolicy, *, max_connections: int) -> CallbackClient:
    """Pooled keep-alive connections; every new one passes the SSRF guard."""
    return CallbackClient(
        policy, max_connections=max_connections, user_agent=USER_AGENT, max_answer=MAX_ANSWER_BYTES
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


@functools.lru_cache(maxsize=4096)
def _parse(url: str) -> Target | str:
    """Where the URL's POST goes, or why it cannot be a callback URL (conveyor.shared.runtime.urls, the
    receiver's check too). Cached: most results go to a few URLs, and parsing one costs about as
    much as signing the body."""
    try:
        parsed = check_callback_url(url)
    except InvalidCallbackURL as exc:
        return f"invalid callback URL: {exc}"
    host, port, host_header = parsed.raw_host, parsed.port, parsed.host_port_subcomponent
    if not host or port is None or not host_header:
        return "invalid callback URL: no host"
    auth = None
    if parsed.user is not None:
        pair = f"{parsed.user}:{parsed.password or ''}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Target(parsed.scheme, host, port, parsed.raw_path_qs or "/", host_header, auth)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a callback URL, or None."""
    parsed = _parse(url)
    return parsed if isinstance(parsed, str) else None


def endpoint_of(url: str) -> str:
    """The circuit-breaker key: scheme://host:port (a host that is down is down for all paths).
    It is logged: no user info, and an invalid URL's is redacted."""
    parsed = _parse(url)
    return redact_url(url) if isinstance(parsed, str) else f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def _logged(text: str) -> str | None:
    """Something the endpoint sent, fit for one log line: at most LOGGED_ANSWER_BYTES, no
    control characters."""
    text = "".join(c if c.isprintable() else " " for c in text[:LOGGED_ANSWER_BYTES]).strip()
    return text or None


async def post(
    client: CallbackClient, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
) -> Attempt:
    """POST once, redirects not followed; never raises for anything the endpoint or the network did."""
    started = time.perf_counter()

    def took() -> float:
        return time.perf_counter() - started

    target = _parse(url)
    if isinstance(target, str):
        return Attempt("refused", None, took(), target)
    try:
        # The whole attempt (DNS, connect, send, answer), so AckWait can stay above it.
        async with asyncio.timeout(timeout_s):
            answer = await client.post(target, body, headers)
    except BlockedAddressError as exc:
        return Attempt("refused", None, took(), str(exc))
    except TimeoutError:
        return Attempt("retry", None, took(), f"timed out after {timeout_s:g}s")
    except UnsendableHeader as exc:  # retrying will not help
        return Attempt("refused", None, took(), f"cannot send: {exc}")
    except (ProtocolError, OSError) as exc:
        return Attempt(
            "retry", None, took(), f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )

    latency = took()
    status = answer.status
    if 200 <= status < 300:
        return Attempt("ok", status, latency)
    body = _logged(answer.body[:LOGGED_ANSWER_BYTES].decode(errors="replace"))
    if status in RETRYABLE_STATUS or status >= 500:
        return Attempt(
            "retry",
            status,
            latency,
            f"HTTP {status}",
            parse_retry_after(answer.headers.get("retry-after")),
            body,
        )
    if 300 <= status < 400:
        location = _logged(f"Location: {answer.headers.get('location', '')}")
        return Attempt("final", status, latency, f"HTTP {status}: redirect not followed", answer=location)
    return Attempt("final", status, latency, f"HTTP {status}", answer=body)
