"""The callback HTTP client against real servers on 127.0.0.1 that answer exactly what a test
scripts: framings, interim answers, servers that drop connections, TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conveyor.deliverer.http_client import CallbackClient
from conveyor.deliverer.sender import Attempt, _parse, build_client, post
from conveyor.shared.runtime.ssrf import AddressPolicy

LOOPBACK = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])

# What the server does with one request: bytes to write (None: close without answering).
Script = Callable[[int, bytes, bytes], bytes | None]


@dataclass
class Server:
    """An HTTP/1.1 server on 127.0.0.1 that reads whole requests and answers from ``script``."""

    script: Script
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)
    connections: int = 0
    close_after: bool = False  # close each connection after its first answer
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = self.script(len(self.requests), head, body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[Server]]]:
    started: list[Server] = []

    async def start(script: Script, tls: ssl.SSLContext | None = None, **kw: object) -> Server:
        s = await Server(script, **kw).start(tls)  # type: ignore[arg-type]
        started.append(s)
        return s

    yield start  # type: ignore[misc]
    for s in started:
        await s.stop()


def ok(body: bytes = b'{"ok":true}', status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body


async def test_keep_alive_reuses_one_connection_and_sends_what_a_callback_needs(serve) -> None:  # type: ignore[no-untyped-def]
    srv = await serve(lambda n, head, body: ok())
    async with build_client(LOOPBACK, max_connections=4) as client:
        for i in range(3):
            a = await post(
                client, f"http://127.0.0.1:{srv.port}/hook?x={i}", b'{"a":1}', {"X-T": "v"}, timeout_s=2
            )
            assert a.kind == "ok" and a.status_code == 200, a
    assert srv.connections == 1 and len(srv.requests) == 3
    head, body = srv.requests[2]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?x=2 HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}" in lines and "X-T: v" in lines and "Content-Length: 7" in lines
    assert any(line.startswith("User-Agent: Conveyor-Deliverer/") for line in lines)
    assert body == b'{"a":1}'


async def test_chunked_answer_split_anywhere_with_extensions_and_trailers(serve) -> None:  # type: ignore[no-untyped-def]
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"5;ext=1\r\nbusy \r\n6\r\nnow...\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    srv = await serve(lambda n, head, body: answer)
    async with build_client(LOOPBACK, max_connections=1) as client:
        a = await post(client, f"http://127.0.0.1:{srv.port}/", b"{}", {}, timeout_s=2)
        assert (a.kind, a.status_code, a.error, a.retry_after_s, a.answer) == (
            "retry",
            503,
            "HTTP 503",  # stored: the status only; the body is for the log line
            7.0,
            "busy now...",
        )
    # Byte by byte: the parser keeps its place across reads.
    trickled = await _post_trickled(answer)
    assert (trickled.status_code, trickled.error, trickled.answer) == (503, "HTTP 503", "busy now...")


async def _post_trickled(answer: bytes) -> Attempt:
    """POST to a server that writes its answer one byte per write, yielding between writes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with build_client(LOOPBACK, max_connections=1) as client:
            return await post(client, f"http://127.0.0.1:{port}/", b"{}", {}, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()


async def test_answer_read_to_close_interim_answers_and_empty_bodies(serve) -> None:  # type: ignore[no-untyped-def]
    srv = await serve(lambda n, head, body: b"HTTP/1.0 404 Not Found\r\n\r\nno such hook", close_after=True)
    async with build_client(LOOPBACK, max_connections=1) as client:
        a = await post(client, f"http://127.0.0.1:{srv.port}/", b"{}", {}, timeout_s=2)
        assert (a.kind, a.status_code, a.error, a.answer) == ("final", 404, "HTTP 404", "no such hook")
        interim = await serve(
            lambda n, head, body: (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                + ok(status="202 Accepted")
            )
        )
        b = await post(client, f"http://127.0.0.1:{interim.port}/", b"{}", {}, timeout_s=2)
        assert (b.kind, b.status_code) == ("ok", 202)
        empty = await serve(lambda n, head, body: b"HTTP/1.1 204 No Content\r\n\r\n")
        for _ in range(2):
            c = await post(client, f"http://127.0.0.1:{empty.port}/", b"{}", {}, timeout_s=2)
            assert (c.kind, c.status_code) == ("ok", 204)
        assert empty.connections == 1
        moved = await serve(lambda n, head, body: ok(b"", "301 Moved", b"Location: https://elsewhere/\r\n"))
        d = await post(client, f"http://127.0.0.1:{moved.port}/", b"{}", {}, timeout_s=2)
        assert d.kind == "final" and d.error == "HTTP 301: redirect not followed"
        assert d.answer == "Location: https://elsewhere/"


async def test_a_long_answer_is_cut_and_costs_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    big = b"x" * 300_000
    srv = await serve(lambda n, head, body: ok(big, "500 Internal Server Error"))
    async with CallbackClient(LOOPBACK, max_connections=1, user_agent="t", max_answer=1000) as client:
        t = _parse(f"http://127.0.0.1:{srv.port}/")
        assert not isinstance(t, str)
        first = await client.post(t, b"{}", {})
        assert first.status == 500 and first.truncated and first.body == b"x" * 1000
        second = await client.post(t, b"{}", {})
        assert second.status == 500
    assert srv.connections == 2  # the first connection was not reused with 299 KB unread


async def test_a_connection_dropped_while_idle_is_retried_once_on_a_new_one(serve) -> None:  # type: ignore[no-untyped-def]
    # The server answers the first request on each connection and drops the connection on
    # the next one without answering: what a server whose keep-alive timer fired does.
    def script(n: int, head: bytes, body: bytes) -> bytes | None:
        return None if n == 2 else ok()

    srv = await serve(script)
    async with build_client(LOOPBACK, max_connections=1) as client:
        url = f"http://127.0.0.1:{srv.port}/"
        assert (await post(client, url, b"{}", {}, timeout_s=2)).kind == "ok"
        again = await post(client, url, b"{}", {}, timeout_s=2)
        assert again.kind == "ok", again
    assert srv.connections == 2 and len(srv.requests) == 3


async def test_a_new_connection_closed_without_answer_is_a_retry_not_a_resend(serve) -> None:  # type: ignore[no-untyped-def]
    srv = await serve(lambda n, head, body: None)
    async with build_client(LOOPBACK, max_connections=1) as client:
        a = await post(client, f"http://127.0.0.1:{srv.port}/", b"{}", {}, timeout_s=2)
    assert a.kind == "retry" and a.status_code is None and a.error and "ProtocolError" in a.error
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",  # a digit to str.isdigit, not to HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the body ended
    ],
)
async def test_malformed_answers_are_retries_with_a_reason(serve, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    srv = await serve(lambda n, head, body: answer, close_after=True)
    async with build_client(LOOPBACK, max_connections=1) as client:
        a = await post(client, f"http://127.0.0.1:{srv.port}/", b"{}", {}, timeout_s=2)
    assert a.kind == "retry" and a.error and a.error.startswith("ProtocolError: "), a


async def test_timeouts_header_injection_and_url_parts(serve) -> None:  # type: ignore[no-untyped-def]
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with build_client(LOOPBACK, max_connections=1) as client:
            a = await post(client, f"http://127.0.0.1:{port}/", b"{}", {}, timeout_s=0.3)
            assert (a.kind, a.error) == ("retry", "timed out after 0.3s")
            b = await post(client, f"http://127.0.0.1:{port}/", b"{}", {"X-A": "1\r\nX-Evil: 2"}, timeout_s=1)
            assert b.kind == "refused" and b.error and "cannot send" in b.error
            c = await post(client, f"http://127.0.0.1:{port}/", b"{}", {"Bad Name": "1"}, timeout_s=1)
            assert c.kind == "refused"
    finally:
        hold.set()
        server.close()
        await server.wait_closed()
    t = _parse("http://user:pa%20ss@[::1]:8080/p/a?q=1#frag")
    assert not isinstance(t, str)
    assert (t.host, t.port, t.target, t.host_header) == ("::1", 8080, "/p/a?q=1", "[::1]:8080")
    assert t.authorization == "Basic dXNlcjpwYSBzcw=="  # user:pa ss
    d = _parse("https://hooks.example.com/")
    assert not isinstance(d, str) and (d.port, d.host_header) == (443, "hooks.example.com")


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_certificate_against_the_url_host(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = _self_signed(tmp_path, "hooks.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    srv = await serve(lambda n, head, body: ok(), tls=server_tls)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with CallbackClient(
        LOOPBACK, max_connections=2, user_agent="t", resolver=dns, ssl_context=trusting
    ) as client:
        good = await post(client, f"https://hooks.test:{srv.port}/cb", b"{}", {}, timeout_s=5)
        assert good.kind == "ok", good
        # The same server under a name its certificate does not carry: refused by TLS.
        wrong = await post(client, f"https://other.test:{srv.port}/cb", b"{}", {}, timeout_s=5)
        assert wrong.kind == "retry" and wrong.error and "certificate" in wrong.error.lower(), wrong
    async with CallbackClient(LOOPBACK, max_connections=1, user_agent="t", resolver=dns) as client:
        # The system's CAs do not know a self-signed certificate.
        untrusted = await post(client, f"https://hooks.test:{srv.port}/cb", b"{}", {}, timeout_s=5)
        assert untrusted.kind == "retry" and untrusted.error and "certificate" in untrusted.error.lower()
    assert len(srv.requests) == 1


async def test_connections_idle_past_keepalive_are_not_reused(serve) -> None:  # type: ignore[no-untyped-def]
    srv = await serve(lambda n, head, body: ok())
    t = _parse(f"http://127.0.0.1:{srv.port}/")
    assert not isinstance(t, str)
    async with CallbackClient(LOOPBACK, max_connections=2, user_agent="t", keepalive_s=0.05) as client:
        await client.post(t, b"{}", {})
        await client.post(t, b"{}", {})  # at once: the same connection
        assert srv.connections == 1
        await asyncio.sleep(0.1)
        await client.post(t, b"{}", {})  # idle too long: closed, a new one dialled
        assert srv.connections == 2
        assert sum(len(v) for v in client._idle.values()) == 1  # the old one was dropped
