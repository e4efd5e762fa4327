"""The benchmark's load driver, run as the harness runs it (``python -m bench.driver`` in its
own process) against small HTTP/1.1 servers on loopback that misbehave on purpose.

What it must get right for its numbers to mean anything: every request is counted once,
latency is measured from the scheduled time (a stalled server shows in the tail instead of
slowing the schedule down), and closed connections, timeouts and refusals are errors, not
hangs or lost requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def request_file(path: Path, n: int) -> Path:
    """``n`` distinct POSTs in the driver's file format (8-digit length, then the bytes)."""
    with path.open("wb") as fh:
        for i in range(n):
            body = b'{"i": %d}' % i
            raw = (
                b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            fh.write(b"%08d" % len(raw) + raw)
    return path


class Server(asyncio.Protocol):
    """Answers each complete POST with 202; ``policy(i)`` can delay, drop or close."""

    seen: list[int]

    def __init__(self, seen: list[int], policy: Callable[[int], str]) -> None:
        self.seen, self.policy = seen, policy
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            i = json.loads(body)["i"]
            self.seen.append(i)
            self.answer(i, self.policy(i))

    def answer(self, i: int, how: str) -> None:
        assert self.transport is not None
        if how == "drop":  # never answer: the driver's timeout has to end it
            return
        if how.startswith("sleep:"):
            asyncio.get_running_loop().call_later(float(how[6:]), self.answer, i, "ok")
            return
        close = how == "close"
        self.transport.write(
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n%s\r\nok"
            % (b"Connection: close\r\n" if close else b"")
        )
        if close:
            self.transport.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    servers: list[asyncio.Server] = []

    async def start(policy: Callable[[int], str] = lambda i: "ok") -> tuple[int, list[int]]:
        seen: list[int] = []
        srv = await asyncio.get_running_loop().create_server(lambda: Server(seen, policy), "127.0.0.1", 0)
        servers.append(srv)
        return srv.sockets[0].getsockname()[1], seen

    yield start
    for s in servers:
        s.close()


async def spawn(tmp_path: Path, port: int, n: int, *args: str) -> asyncio.subprocess.Process:
    """The driver as the harness starts it, sending ``n`` requests to ``port``."""
    reqs = request_file(tmp_path / "reqs", n)
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.driver", "--port", str(port), "--requests", str(reqs)),
        *("--out", str(tmp_path / "out.json"), "--times", str(tmp_path / "times.json"), *args),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float) -> bytes:
    """Its stderr once it exits; a driver that hangs is killed, not left behind."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return err


async def drive(tmp_path: Path, port: int, n: int, *args: str) -> tuple[dict, dict]:
    proc = await spawn(tmp_path, port, n, *args)
    err = await finish(proc, 60)
    assert proc.returncode == 0, err.decode()
    out, times = tmp_path / "out.json", tmp_path / "times.json"
    return json.loads(out.read_text()), json.loads(times.read_text())


async def test_open_loop_sends_each_request_once_on_schedule(serve, tmp_path: Path) -> None:
    port, seen = await serve()
    out, times = await drive(tmp_path, port, 400, "--mode", "open", "--rate", "1000", "--concurrency", "8")
    assert out["ok"] == 400 and out["statuses"] == {"202": 400} and not out["errors"]
    assert sorted(seen) == list(range(400))  # each request sent once, none repeated
    sched = times["sched"]
    # request i is due at t0 + i/rate, whatever the server does
    assert sched[-1] - sched[0] == pytest.approx(399 / 1000, abs=1e-6)
    assert all(s <= d for s, d in zip(sched, times["done"], strict=True))


async def test_a_stalled_server_shows_in_the_latency_not_in_the_schedule(serve, tmp_path: Path) -> None:
    # request 100 takes 300 ms; with 4 connections pre-opened, the requests due meanwhile
    # must go out on time (on other or new connections) and request 100 must count 300 ms
    port, _ = await serve(lambda i: "sleep:0.3" if i == 100 else "ok")
    out, times = await drive(tmp_path, port, 500, "--mode", "open", "--rate", "1000", "--concurrency", "4")
    assert out["ok"] == 500
    lat = [(d - s) * 1000 for s, d in zip(times["sched"], times["done"], strict=True)]
    assert lat[100] >= 300
    assert sorted(lat)[250] < 50  # the median is untouched by one slow request
    assert out["lag_ms"]["p99"] < 50  # nothing waited behind the slow one to be sent


async def test_connections_the_server_closes_are_replaced(serve, tmp_path: Path) -> None:
    port, seen = await serve(lambda i: "close" if i % 3 == 0 else "ok")
    for mode in (["--mode", "open", "--rate", "500"], ["--mode", "closed"]):
        seen.clear()
        out, _ = await drive(tmp_path, port, 150, *mode, "--concurrency", "4")
        assert out["ok"] == 150 and not out["errors"], mode
        assert sorted(seen) == list(range(150)), mode


async def test_unanswered_requests_time_out_as_errors(serve, tmp_path: Path) -> None:
    port, _ = await serve(lambda i: "drop" if i in (5, 6) else "ok")
    out, times = await drive(
        tmp_path, port, 50, "--mode", "open", "--rate", "200", "--concurrency", "4", "--timeout", "1"
    )
    assert out["ok"] == 48
    assert out["errors"] == {"TimeoutError": 2}
    assert times["status"][5] == times["status"][6] == 0


async def test_closed_loop_keeps_its_connections_busy(serve, tmp_path: Path) -> None:
    port, seen = await serve()
    out, _ = await drive(tmp_path, port, 2000, "--mode", "closed", "--concurrency", "16")
    assert out["ok"] == 2000 and out["sent"] == 2000
    assert sorted(seen) == list(range(2000))
    assert out["peak_conns"] == 16


async def test_a_refused_connection_fails_the_request_that_needed_it(tmp_path: Path) -> None:
    # nothing listens on the port: warming fails, and the driver says so instead of hanging
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await spawn(tmp_path, port, 10, "--mode", "open", "--rate", "100")
    err = await finish(proc, 30)
    assert proc.returncode != 0
    assert b"ConnectionRefusedError" in err


async def test_a_server_that_goes_away_ends_the_run_with_errors(tmp_path: Path) -> None:
    # every answer closes its connection and, from request 40 on, nothing listens: the
    # closed loop cannot reconnect and has to end with what it could not send as errors
    seen: list[int] = []
    srv: list[asyncio.Server] = []

    def policy(i: int) -> str:
        if i == 40:
            srv[0].close()
        return "close"

    srv.append(await asyncio.get_running_loop().create_server(lambda: Server(seen, policy), "127.0.0.1", 0))
    port = srv[0].sockets[0].getsockname()[1]
    out, _ = await drive(tmp_path, port, 200, "--mode", "closed", "--concurrency", "4", "--timeout", "2")
    assert 40 <= out["ok"] < 200
    assert out["ok"] == len(seen)
    assert sum(out["errors"].values()) == out["sent"] - out["ok"]
