"""The receiver's listening socket: webhook POSTs answered on a lean HTTP/1.1 path, every
other connection handed to aiohttp.

aiohttp spends about 45 us of CPU on a request before and after the handler (request and
response objects, router, middleware chain): on the route that takes thousands of webhooks a
second, a third of the receiver's cost per webhook. This path reads only the plainest form
of that one request: ``POST /api/webhooks/<source> HTTP/1.1``, printable ASCII headers, one
Content-Length within MAX_BODY_BYTES, and no Transfer-Encoding, Expect, Upgrade or trace
context. It runs the same code as aiohttp's route (``webhooks.take``) and answers with the
same status, body and headers, in order, one request at a time per connection.

Anything else, or anything this path is unsure of, is neither answered nor refused here: the
connection, with every byte read so far, goes to aiohttp's own protocol, which serves it
from then on. So every framing question (chunked bodies, 100-continue, malformed or
ambiguous requests, oversized heads or bodies) is still answered by aiohttp's parser, and
every other route, middleware and error is aiohttp's as before.

The listener is also the receiver's guard against clients that hold resources: every
connection, on either path, counts against MAX_CONNECTIONS (one more is answered 503 and
closed); a body's Content-Length is taken from MAX_BODY_BYTES_IN_FLIGHT before it is read
(503 past it); a head must arrive within HEADER_TIMEOUT_S and a body within BODY_TIMEOUT_S.
aiohttp serves handed-over connections from its own ``web.Server`` made here, whose
keep-alive timeout is HEADER_TIMEOUT_S (aiohttp closes a connection that has no complete
request when it expires) and which says when a connection ends. With FAST_WEBHOOKS off
every connection is handed over as it opens, so both paths keep the same limits.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS

from conveyor.receiver.handlers import webhooks
from conveyor.receiver.metrics import Metrics
from conveyor.receiver.middleware import correlation_for
from conveyor.receiver.sources import peer_host
from conveyor.receiver.state import Receiver, body_timeout, nonempty
from conveyor.shared.domain.ratelimit import Decision
from conveyor.shared.runtime import logs
from conveyor.shared.runtime.http import HTTPError, HttpMetrics, error_body

log = logging.getLogger(__name__)

ROUTE = "/api/webhooks/{source}"  # the metric label aiohttp's route gives
_PREFIX = b"POST /api/webhooks/"
_HEAD_MAX = 16 * 1024  # a longer head goes to aiohttp, whose limits then apply
_PATH = "/api/webhooks/"
# Bytes a head may hold here: printable ASCII, tab, and CR LF only as line ends (checked apart).
_PLAIN = bytes(range(0x20, 0x7F)) + b"\t\r\n"
# Headers whose presence means a request this path does not take.
_ELSEWHERE = frozenset(("transfer-encoding", "expect", "upgrade", "traceparent"))
# Headers that must not be repeated here: those aiohttp refuses to see twice (a 400 there), and
# two whose repeats it would read in its own way.
_ONCE = SINGLETON_HEADERS | {"connection", "x-forwarded-for"}
# aiohttp's parser limits: a head past them is aiohttp's to refuse.
_MAX_HEADERS = 128
_MAX_LINE = 8190
_PAUSE_AT = 256 * 1024  # unread bytes buffered behind a request in flight before reading stops
_LINGER_S = 10.0  # aiohttp's default lingering time
_WARN_EVERY_S = 60.0  # a refusal for a limit is logged at most this often


class Headers(dict[str, str]):
    """Header values by lower-case name, looked up by any case (as aiohttp's are)."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class Head:
    __slots__ = ("close", "headers", "length", "source")

    def __init__(self, source: str, headers: Headers, length: int, close: bool) -> None:
        self.source = source
        self.headers = headers
        self.length = length
        self.close = close


def parse_head(head: bytes) -> Head | None:
    """The request line and headers (up to, not including, the blank line), or None when the
    request is not a plain webhook POST this path takes."""
    if head.translate(None, _PLAIN):
        return None  # what is left once every plain byte is deleted
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None  # a bare CR or LF: not for this path to interpret
    lines = head.decode("ascii").split("\r\n")
    if len(lines) > _MAX_HEADERS + 1 or (len(head) > _MAX_LINE and max(map(len, lines)) > _MAX_LINE):
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1" or not parts[1].startswith(_PATH):
        return None
    source = parts[1][len(_PATH) :]
    if not 0 < len(source) <= 128 or not source.replace("-", "").replace("_", "").isalnum():
        return None  # a query, an escape, another segment: aiohttp's router decides
    fields: dict[str, str] = {}
    names: list[str] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name:
            return None
        names.append(name)
        key = name.lower()
        if key in fields:
            if key in _ONCE:
                return None
            continue  # the first one counts, as with aiohttp's headers.get
        fields[key] = value.strip()
    # Letters, digits and hyphens only (the head is ASCII): an obs-fold, a space before the
    # colon or an unusual name is aiohttp's to judge.
    if not "".join(names).replace("-", "").isalnum() or not _ELSEWHERE.isdisjoint(fields):
        return None
    length = fields.get("content-length")
    if length is None or not length.isdigit() or len(length) > 12:
        return None
    connection = fields.get("connection", "").lower()
    if "upgrade" in connection:
        return None
    return Head(source, Headers(fields), int(length), "close" in connection)


class _Aiohttp(web.Server):
    """aiohttp's server for the connections the listener hands over: the application's handler
    and request factory (public attributes of the runner's server), with HEADER_TIMEOUT_S as
    the keep-alive timeout, telling the listener when each connection ends."""

    def __init__(self, listener: Listener, base: web.Server, **kwargs: Any) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            **kwargs,
        )
        self.listener = listener

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.listener.open -= 1


class Listener:
    """Protocol factory and connection registry for the receiver's port."""

    def __init__(
        self, st: Receiver, aiohttp_server: web.Server, http_metrics: HttpMetrics, *, lean: bool = True
    ) -> None:
        settings = st.settings
        self.st = st
        self.lean = lean  # False: every connection goes to aiohttp as it opens
        # Calling it makes aiohttp's protocol for a connection. Its keep-alive timer runs from
        # the connection's start and from each answer, and closes a connection still without a
        # complete request head when it expires: the head timeout on aiohttp's side. After an
        # answer that left a body unread (a refusal), aiohttp reads and drops the rest for its
        # lingering time before closing: no longer than a body may take.
        self.aiohttp = _Aiohttp(
            self,
            aiohttp_server,
            keepalive_timeout=settings.header_timeout_s,
            lingering_time=min(_LINGER_S, settings.body_timeout_s),
            access_log=None,
        )
        self.http_metrics = http_metrics
        self.metrics: Metrics = st.metrics
        self.max_body = settings.max_body_bytes
        self.max_connections = settings.max_connections
        self.retry_after = settings.retry_after_s
        self.header_s = settings.header_timeout_s
        self.body_s = settings.body_timeout_s
        self.budget = st.body_budget  # MAX_BODY_BYTES_IN_FLIGHT
        self.open = 0  # connections counted against MAX_CONNECTIONS, on either path
        self.connections: set[Connection] = set()  # those on the lean path
        self.closing = False
        self._date = b""
        self._date_at = 0
        self._warned: dict[str, float] = {}

    def __call__(self) -> Connection:
        return Connection(self)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    def warn(self, what: str, message: str, *args: Any) -> None:
        """Log a limit being reached, at most once a minute per limit."""
        now = time.monotonic()
        if now - self._warned.get(what, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[what] = now
            log.warning(message, *args)

    def refuse(self, transport: asyncio.Transport) -> None:
        """A connection over MAX_CONNECTIONS: 503 and closed, before anything is read."""
        self.warn("connections", "MAX_CONNECTIONS (%d) reached: connections refused", self.max_connections)
        payload = error_body(
            "too_many_connections",
            f"this receiver has {self.max_connections} connections open; retry later",
        )
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nDate: %s\r\nX-Correlation-ID: %s\r\nRetry-After: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (len(payload), self.date(), os.urandom(16).hex().encode(), self.retry_after, payload)
        )
        transport.close()

    async def close(self, grace_s: float) -> None:
        """Stop taking requests: idle connections close now, a request in flight is answered
        first (up to ``grace_s``), on either path."""
        self.closing = True
        for conn in list(self.connections):
            conn.shut()
        self.aiohttp.pre_shutdown()  # handed-over connections close once idle
        busy = [c.task for c in self.connections if c.task is not None]
        waits: list[Awaitable[Any]] = [self.aiohttp.shutdown(grace_s)]
        if busy:
            waits.append(asyncio.wait(busy, timeout=grace_s))
        await asyncio.gather(*waits)
        for conn in list(self.connections):
            conn.abort()


class Connection(asyncio.Protocol):
    """One client connection while it sends plain webhook POSTs."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.buf: bytes | bytearray = b""
        self.scanned = 0  # bytes of buf already searched for the end of the head
        self.waiting: tuple[Head, int] | None = None  # a head read, its body not yet all here
        self.task: asyncio.Task[None] | None = None
        self.close_after = False  # Connection: close, or shutting down: close after this answer
        self.eof = False  # the client sends no more: answer what it sent, then close
        self.handed = False  # aiohttp's protocol has the connection now
        self.counted = False  # one of the listener's open connections
        self.write_paused = False
        self.read_paused = False
        self.gone = False
        self.held = 0  # body bytes taken from MAX_BODY_BYTES_IN_FLIGHT for the current request
        self.dropping = 0  # body bytes of a refused request still to be read and dropped
        self.due = 0.0  # when the wait for the current head (or body) ends
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    # --- transport callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if listener.closing:
            transport.close()
            return
        if listener.open >= listener.max_connections:
            listener.refuse(self.transport)  # type: ignore[arg-type]
            return
        listener.open += 1
        self.counted = True
        if not listener.lean:
            self._hand_over(metric=False)
            return
        self.peer = peer_host(transport)
        listener.connections.add(self)
        self.due = self.loop.time() + listener.header_s
        self._arm(self.due)

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            self._drop(len(data))
            return
        buf = self.buf
        if not buf:
            self.buf = data  # the usual case: a whole request in one read, no copy
        elif isinstance(buf, bytearray):
            buf += data  # a request in pieces: appended in place, not copied again per piece
        else:
            self.buf = bytearray(buf)
            self.buf += data
        if self.task is None:
            self._next()
        elif len(self.buf) > _PAUSE_AT and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # The client sends no more: answer every complete request it sent (pipelined ones
        # included), then close. True keeps the writing half open until then.
        self.eof = True
        if self.dropping:
            self.shut()
        elif self.task is None:
            self._next()
            self._close_if_done()
        return True

    def _close_if_done(self) -> None:
        """After EOF: close once no request is in flight and none is left to start."""
        if self.eof and self.task is None and not self.handed:
            self.shut()

    def connection_lost(self, exc: Exception | None) -> None:
        # A request in flight is not cancelled: what JetStream acknowledges stays accepted,
        # as on aiohttp's path, only the answer has nowhere to go. Its bytes stay held until
        # it ends; a body still arriving is given back now.
        self.gone = True
        self._forget()
        if self.task is None:
            self._give_back()
        if self.counted:
            self.counted = False
            self.listener.open -= 1

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None:
            self._next()

    # --- requests ----------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next complete request in the buffer, wait for more, or hand over."""
        buf = self.buf
        if not buf or self.gone or self.write_paused or self.listener.closing:
            return
        if self.waiting is not None:
            head, body_at = self.waiting
            if len(buf) < body_at + head.length:
                return  # the body is still arriving: nothing to parse again
            self.waiting = None
            self._start(head, body_at)
            return
        if not buf.startswith(_PREFIX):
            if len(buf) < len(_PREFIX) and _PREFIX.startswith(buf):
                return  # the start of what may still be a webhook POST
            self._hand_over()
            return
        end = buf.find(b"\r\n\r\n", max(0, self.scanned - 3), _HEAD_MAX)
        if end < 0:
            self.scanned = len(buf)
            if len(buf) >= _HEAD_MAX:
                self._hand_over()
            return
        head = parse_head(bytes(buf[:end]))
        # Only configured sources: /api/webhooks/test (the test-send API) and unknown names
        # are aiohttp's routes to answer.
        listener = self.listener
        if head is None or head.length > listener.max_body or head.source not in listener.st.sources:
            self._hand_over()
            return
        budget = listener.budget
        if head.length > budget.free:
            self._refuse_body(head, end + 4)
            return
        budget.free -= head.length
        self.held = head.length
        if len(buf) < end + 4 + head.length:
            self.waiting = (head, end + 4)
            due = self.loop.time() + listener.body_s
            self.due = due
            if due < self.timer_at:
                self._arm(due)
            return
        self._start(head, end + 4)

    def _start(self, head: Head, body_at: int) -> None:
        buf = self.buf
        total = body_at + head.length
        body = bytes(buf[body_at:total])
        self.buf = buf[total:]
        self.scanned = 0
        if head.close:
            self.close_after = True
        self.task = self.loop.create_task(self._serve(head, body))

    async def _serve(self, head: Head, body: bytes) -> None:
        listener = self.listener
        st = listener.st
        started = time.perf_counter()
        correlation = correlation_for(head.headers.get("x-correlation-id", ""))
        token = logs.correlation_id.set(correlation)

        async def read() -> bytes:
            return nonempty(body)

        call = webhooks.Call(st, head.source, head.headers, read, self.peer, correlation)
        extra: dict[str, str] | None
        try:
            status, payload, extra = await webhooks.take(call)
        except HTTPError as exc:
            status, payload, extra = exc.status, exc.body(), exc.headers
        except Exception:
            log.exception("unhandled error on POST %s", ROUTE)
            status, payload, extra = 500, error_body("internal", "internal error"), None
        finally:
            logs.correlation_id.reset(token)
        listener.http_metrics.observe("POST", ROUTE, status, time.perf_counter() - started)
        self._answer(status, payload, extra, correlation, call.rate_limit)
        listener.budget.free += self.held  # the body's bytes are given back with its answer
        self.held = 0
        self.task = None
        if self.close_after:
            self.shut()
            return
        self.due = self.loop.time() + listener.header_s  # the next head, idle time included
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        self._next()
        self._close_if_done()

    def _answer(
        self,
        status: int,
        payload: bytes,
        extra: dict[str, str] | None,
        correlation: str,
        rate_limit: Decision | None = None,
    ) -> None:
        transport = self.transport
        if transport is None or self.gone or transport.is_closing():
            return
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(payload),
            b"Date: %s\r\nX-Correlation-ID: %s\r\n" % (self.listener.date(), correlation.encode()),
        ]
        if extra:
            lines += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in extra.items()]
        if rate_limit is not None:
            lines.append(rate_limit.header_lines())
        if self.close_after or self.listener.closing:
            lines.append(b"Connection: close\r\n")
        lines += (b"\r\n", payload)
        transport.write(b"".join(lines))

    def _refuse(self, head: Head, exc: HTTPError) -> None:
        """Answer ``exc`` to the request ``head`` without serving it, then close (its body is
        not read: the connection cannot carry another request)."""
        correlation = correlation_for(head.headers.get("x-correlation-id", ""))
        self.listener.http_metrics.observe("POST", ROUTE, exc.status, 0.0)
        outcome = "unavailable" if exc.status == 503 else "bad_request"
        self.listener.st.metrics.webhook(head.source, outcome).inc()
        self.close_after = True
        self._answer(exc.status, exc.body(), exc.headers, correlation)

    def _refuse_body(self, head: Head, body_at: int) -> None:
        """Over MAX_BODY_BYTES_IN_FLIGHT: 503 before the body is read. What of it comes is read
        and dropped (so the client sees the answer rather than a reset), then the connection
        closes; within BODY_TIMEOUT_S."""
        st = self.listener.st
        self.listener.warn(
            "body_bytes",
            "MAX_BODY_BYTES_IN_FLIGHT (%d) reached: requests are refused",
            st.settings.max_body_bytes_in_flight,
        )
        self._refuse(head, st.overloaded())
        dropping = body_at + head.length - len(self.buf)
        self.buf = b""
        if dropping <= 0:
            self.shut()
            return
        self.dropping = dropping
        self.due = self.loop.time() + self.listener.body_s
        if self.due < self.timer_at:
            self._arm(self.due)

    def _drop(self, size: int) -> None:
        self.dropping = max(0, self.dropping - size)
        if not self.dropping:
            self.shut()

    def _give_back(self) -> None:
        if self.held:
            self.listener.budget.free += self.held
            self.held = 0

    # --- endings -----------------------------------------------------------------------------

    def _hand_over(self, metric: bool = True) -> None:
        """aiohttp serves this connection from here on, starting with what is buffered."""
        transport = self.transport
        assert transport is not None
        self.handed = True
        self.counted = False  # aiohttp's server counts it off when it ends (_Aiohttp)
        self._forget()
        if metric:
            self.listener.metrics.handed_over.inc()
        proto = self.listener.aiohttp()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        buf, self.buf = self.buf, b""
        if buf:
            proto.data_received(bytes(buf))
        if self.eof and not proto.eof_received():
            # The EOF came to us first: aiohttp hears it too, and closes as on its own path
            # (asyncio closes when eof_received answers False), instead of waiting for more.
            transport.close()

    def shut(self) -> None:
        """Close now if no request is in flight, else once it is answered."""
        self.close_after = True
        if self.task is None and self.transport is not None:
            self._forget()
            self.transport.close()

    def abort(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        self.listener.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._check_time)

    def _check_time(self) -> None:
        """The connection's one timer: it closes a connection whose head (or body) is late.
        It is moved only when it fires early, not on every request."""
        self.timer = None
        if self.gone or self not in self.listener.connections:
            return
        now = self.loop.time()
        if self.task is not None:
            self._arm(now + self.listener.header_s)  # in flight: its answer sets the next wait
        elif now < self.due:
            self._arm(self.due)
        elif self.dropping:
            self.shut()
        elif self.waiting is not None:
            self._body_late(self.waiting[0])
        else:
            self.shut()  # no complete head in time (an idle connection included)

    def _body_late(self, head: Head) -> None:
        """BODY_TIMEOUT_S passed before the body was all here: 408, closed."""
        self.waiting = None
        self.buf = b""
        self._give_back()
        limit = self.listener.body_s
        self._refuse(head, body_timeout(limit))
        self.shut()


_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def listener_for(st: Receiver, aiohttp_server: web.Server, http_metrics: HttpMetrics) -> Listener:
    """The receiver's port. Plain webhook POSTs take the lean path unless it is turned off or
    spans are exported (aiohttp's middleware makes the server span for each request); the
    connection limits and timeouts hold either way."""
    return Listener(st, aiohttp_server, http_metrics, lean=st.settings.fast_webhooks and not st.tracing)
