"""The callback HTTP client: one POST with its body in memory, over pooled HTTP/1.1 connections.

Why not aiohttp's client: a callback is one small POST and a short answer, and aiohttp's
request machinery (URL and header objects, cookie jar, tracing hooks, a stream reader, the
connector's bookkeeping) cost about 100 us of CPU per callback on this project's machine,
more than signing, the NATS ack and the attempt log together. This client does only what a
callback needs; see the deliverer README for the measurements.

What it does:
- keep-alive pools per (scheme, host, port), at most ``max_connections`` in use at once,
  idle ones closed after ``keepalive_s``;
- every new connection resolves the host, checks every answer against the SSRF policy (one
  refused answer refuses the name), and dials only the addresses it checked (DNS rebinding
  cannot slip between check and connect); IP literals are checked as they are;
- TLS with the system's CAs, verified against the URL's host name;
- answers: Content-Length, chunked, or read to the connection's end; 1xx interim answers
  skipped; at most ``max_answer`` bytes of body kept (a longer answer costs its connection);
- a request on a reused connection that the server closed while it was idle (no byte of an
  answer came back) is sent once more on a new connection, as browsers and urllib3 do.

What it does not do: redirects (callers report them), proxies (a proxy would dial for us and
the guard would only see the proxy), cookies, compression, HTTP/2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import cast

from conveyor.shared.runtime.ssrf import AddressPolicy

# Answer heads larger than this are refused: a callback endpoint has no reason to send one.
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024  # a chunk size with its extensions
_HEX = b"0123456789abcdefABCDEF"

Resolver = Callable[[str, int], Awaitable[list[str]]]


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as RFC 9112 describes it."""


class UnsendableHeader(ValueError):
    """A header that cannot go on the wire as it is (CR/LF in its value, a bad name)."""


class StaleConnection(ConnectionError):
    """A reused connection was closed before any byte of an answer arrived."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a POST goes: parsed once per URL by the caller."""

    scheme: str  # http | https
    host: str  # as dialled and checked: a name (IDNA-encoded) or an IP literal without brackets
    port: int
    target: str  # the request target: path and query
    host_header: str
    authorization: str | None = None  # Basic credentials from the URL's user info


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names; the last value of a repeated header
    body: bytes  # at most max_answer bytes
    truncated: bool


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request goes out, its answer is parsed as bytes arrive."""

    def __init__(self, max_answer: int) -> None:
        self.max_answer = max_answer
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False  # has carried an answer before: a failure may mean it went stale
        self._waiter: asyncio.Future[Answer] | None = None
        self._buf = bytearray()
        self._got_bytes = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._mode = ""  # "" reading the head; "length" | "chunked" | "eof": reading the body
        self._remaining = 0  # bytes of body (length) or of the current chunk (chunked)
        self._chunk_state = "size"  # size | data | crlf | trailer
        self._body = bytearray()
        self._truncated = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection is out of step, never reuse it.
            self._keep_alive = False
            self.close()
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse(eof=False)
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._keep_alive = False
        if self._waiter is None:
            self.close()  # closed while idle: never hand it out again
        elif not self._waiter.done():
            if not self._got_bytes and self.used:
                self._fail(StaleConnection("the server closed the idle connection"))
            else:
                try:
                    self._parse(eof=True)
                except ProtocolError as exc:
                    self._fail(exc)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if not self._got_bytes and self.used:
                self._fail(StaleConnection("the server closed the idle connection"))
            elif self._mode == "eof" and exc is None:
                self._finish()
            else:
                self._fail(exc or ConnectionResetError("the server closed the connection mid-answer"))

    # --- one exchange ----------------------------------------------------------------------

    async def exchange(self, request: bytes, *, last: bool = False) -> Answer:
        """Send ``request`` and wait for its answer; ``last``: the request asked to close."""
        assert self.transport is not None
        self._reset()
        self._keep_alive = not last
        self._got_bytes = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self.used = True

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and not self._buf

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _fail(self, exc: BaseException) -> None:
        self._keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Answer(self._status, self._headers, bytes(self._body), self._truncated))

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self, *, eof: bool) -> None:
        while not self._mode:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"answer head longer than {MAX_HEAD_BYTES} bytes")
                if eof:
                    raise ProtocolError("the connection closed before the answer's head ended")
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            if self._head(head):
                return  # a whole answer with no body
        if self._mode == "length":
            n = min(self._remaining, len(self._buf))
            self._take(n)
            self._remaining -= n
            if self._remaining == 0 or self._truncated:
                self._done()
            elif eof:
                raise ProtocolError("the connection closed before the answer's body ended")
        elif self._mode == "chunked":
            self._chunks(eof)
        else:  # read to the end of the connection
            self._take(len(self._buf))
            if eof or self._truncated:
                self._done()

    def _head(self, head: bytes) -> bool:
        """Take one answer head; True when the answer is complete without a body."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        if not parts[0].startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the server switched protocols")
            return False  # interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        self._status, self._headers = status, headers
        connection = headers.get("connection", "").lower()
        if parts[0] == b"HTTP/1.0":
            self._keep_alive = self._keep_alive and "keep-alive" in connection
        else:
            self._keep_alive = self._keep_alive and "close" not in connection
        if status in (204, 304):
            self._done()
            return True
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {te!r}")
            self._mode = "chunked"
        elif (cl := headers.get("content-length")) is not None:
            if not (cl.isascii() and cl.isdigit()):
                raise ProtocolError(f"invalid Content-Length {cl!r}")
            self._mode, self._remaining = "length", int(cl)
            if self._remaining == 0:
                self._done()
                return True
        else:
            self._mode, self._keep_alive = "eof", False
        return False

    def _take(self, n: int) -> None:
        """Move n bytes of body out of the buffer, keeping at most max_answer of them."""
        if n <= 0:
            return
        room = self.max_answer - len(self._body)
        if room > 0:
            self._body += self._buf[: min(n, room)]
        if n > room:
            self._truncated = True
        del self._buf[:n]

    def _chunks(self, eof: bool) -> None:
        while True:
            if self._chunk_state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    break
                size = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(_HEX):
                    raise ProtocolError(f"invalid chunk size {size[:20]!r}")
                self._remaining = int(size, 16)
                del self._buf[: end + 2]
                self._chunk_state = "data" if self._remaining else "trailer"
            elif self._chunk_state == "data":
                n = min(self._remaining, len(self._buf))
                self._take(n)
                self._remaining -= n
                if self._remaining:
                    break
                self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del self._buf[:2]
                self._chunk_state = "size"
            else:  # trailer: header lines up to an empty line
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise ProtocolError(f"answer trailer longer than {MAX_HEAD_BYTES} bytes")
                    break
                del self._buf[: end + 2]
                if end == 0:
                    self._done()
                    return
            if self._truncated:
                break
        if self._truncated:
            self._done()  # enough read: the rest costs the connection, not our memory
        elif eof:
            raise ProtocolError("the connection closed before the last chunk")

    def _done(self) -> None:
        if self._truncated:
            self._keep_alive = False
        self._finish()


class CallbackClient:
    """Pooled HTTP/1.1 POSTs to callback URLs, every new connection checked by ``policy``."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        max_connections: int,
        user_agent: str,
        max_answer: int = 64 * 1024,
        keepalive_s: float = 30.0,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.max_answer = max_answer
        self.keepalive_s = keepalive_s
        self.resolver = resolver
        self.user_agent = user_agent
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._swept = time.monotonic()
        self._closed = False

    async def __aenter__(self) -> CallbackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def request_bytes(self, t: Target, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The request's bytes; UnsendableHeader for a header that cannot be sent as it is."""
        lines = [f"POST {t.target} HTTP/1.1", f"Host: {t.host_header}", f"User-Agent: {self.user_agent}"]
        if t.authorization and not any(k.lower() == "authorization" for k in headers):
            lines.append(f"Authorization: {t.authorization}")
        for name, value in headers.items():
            if not _is_token(name) or "\r" in value or "\n" in value or "\0" in value:
                raise UnsendableHeader(
                    f"header {name[:40]!r} cannot be sent (not a token, or CR/LF in its value)"
                )
            if name.lower() not in _OURS:
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        try:
            return "\r\n".join(lines).encode("latin-1") + body
        except UnicodeEncodeError:
            raise UnsendableHeader("a header value has characters HTTP/1.1 cannot carry") from None

    async def post(self, t: Target, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body``; raises UnsendableHeader, BlockedAddressError, OSError (ssl.SSLError
        included), ProtocolError, or the caller's timeout: the caller bounds the whole attempt."""
        request = self.request_bytes(t, body, headers)
        last = any(k.lower() == "connection" and "close" in v.lower() for k, v in headers.items())
        key = (t.scheme, t.host, t.port)
        async with self._slots:
            conn = self._checkout(key)
            if conn is not None:
                try:
                    return await self._exchange(key, conn, request, last)
                except StaleConnection:
                    pass  # the server dropped it while idle: once more on a new connection
            conn = await self._dial(t)
            return await self._exchange(key, conn, request, last)

    async def _exchange(
        self, key: tuple[str, str, int], conn: _Connection, request: bytes, last: bool
    ) -> Answer:
        try:
            answer = await conn.exchange(request, last=last)
        except BaseException:
            conn.close()
            raise
        now = time.monotonic()
        if conn.reusable and not self._closed:
            conn.idle_since = now
            self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()
        if now - self._swept > self.keepalive_s:
            self._sweep(now)
        return answer

    def _sweep(self, now: float) -> None:
        """Close connections idle past keepalive_s for origins no longer called back."""
        self._swept = now
        for key, conns in list(self._idle.items()):
            keep = [c for c in conns if not c.closed and c.idle_since >= now - self.keepalive_s]
            for c in conns:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _checkout(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        fresh_after = time.monotonic() - self.keepalive_s
        while conns:
            conn = conns.pop()  # the most recently used: the least likely to have gone stale
            if not conn.closed and conn.idle_since >= fresh_after:
                return conn
            conn.close()
        return None

    async def _dial(self, t: Target) -> _Connection:
        try:
            ipaddress.ip_address(t.host)
            addresses = [t.host]
        except ValueError:
            addresses = await self.resolver(t.host, t.port)
            if not addresses:
                raise OSError(f"no address for {t.host}") from None
        for address in addresses:  # all of them, before dialling any
            self.policy.check(t.host, address)
        loop = asyncio.get_running_loop()
        tls = None
        if t.scheme == "https":
            tls = self._ssl or _default_ssl()
        last: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_answer),
                    address,
                    t.port,
                    ssl=tls,
                    server_hostname=t.host if tls is not None else None,
                )
                return conn
            except OSError as exc:
                last = exc
        assert last is not None
        raise last


# Headers this client writes itself; a caller's copy is dropped, not sent twice.
_OURS = frozenset({"host", "content-length", "transfer-encoding", "user-agent"})
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    return bool(name) and _TOKEN.issuperset(name)


_SSL: ssl.SSLContext | None = None


def _default_ssl() -> ssl.SSLContext:
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return _SSL
