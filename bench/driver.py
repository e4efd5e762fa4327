"""Load driver: replays pre-built HTTP/1.1 requests, closed-loop or open-loop, in its own process.

``python -m bench.driver --port P --requests FILE --out OUT.json --mode open --rate R``

- closed: ``--concurrency`` connections, each sending its next request as soon as the previous
  answer arrived (maximum rate; latency = send to answer).
- open: requests are scheduled on a fixed clock (request i at t0 + i/R) whatever the server
  does; a request that finds no idle connection waits for one (or opens one, up to
  ``--max-conns``), and its latency is measured from its *scheduled* time, so a stalled
  server shows up in the tail instead of silently slowing the driver (no coordinated
  omission). ``lag`` is how late the driver itself was at starting a request; ``service``
is the time from writing the request to the answer.

The client is a minimal asyncio protocol (no HTTP library): writing pre-built bytes and
reading status + Content-Length costs a few tens of microseconds, so the driver needs far
less CPU per request than any server it drives; ``cpu_s`` and ``ceiling_rps`` in the output
show by how much. Times are CLOCK_MONOTONIC (``time.monotonic``), which is system-wide on
Linux, so they compare with the callback sink's arrival times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import payloads
from bench.stats import summarize


class Conn(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time. Everything runs in
    protocol callbacks (no task, future or timer per request): the driver shares the cores
    with what it measures, and every microsecond it spends is taken from the server."""

    def __init__(self, drv: Driver) -> None:
        self.drv = drv
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.cur = -1  # index of the request in flight, -1 when idle
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.drv.ready(self)

    def send(self, i: int, raw: bytes) -> None:
        assert self.transport is not None
        self.cur = i
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.cur < 0:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        total = end + 4
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            total += int(head[i + 17 : j if j > 0 else len(head)])
        elif b"transfer-encoding: chunked" in head:
            k = self.buf.find(b"\r\n0\r\n\r\n", end)
            if k < 0:
                return
            total = k + 7
        if len(self.buf) < total:
            return
        del self.buf[:total]
        if b"\r\nconnection: close" in head:
            self.closed = True
        cur, self.cur = self.cur, -1
        self.drv.answered(self, cur, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.drv.lost(self)


class Recorder:
    def __init__(self, n: int) -> None:
        self.sched = array("d", bytes(8 * n))
        self.start = array("d", bytes(8 * n))
        self.sent = array("d", bytes(8 * n))
        self.done = array("d", bytes(8 * n))
        self.status = array("i", bytes(4 * n))  # 0 = error
        self.errors: dict[str, int] = {}

    def error(self, i: int, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        self.status[i] = 0
        self.done[i] = time.monotonic()


class Driver:
    """Connections, the queue of requests waiting for one, and the bookkeeping.

    A request that finds no idle connection waits in ``backlog`` while a new connection
    opens (up to ``limit``); the first connection to come free or open takes it."""

    def __init__(self, args: argparse.Namespace, reqs: list[bytes], rec: Recorder, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.timeout = args.host, args.port, args.timeout
        self.reqs, self.rec, self.limit = reqs, rec, limit
        self.idle: list[Conn] = []
        self.busy: set[Conn] = set()
        self.backlog: deque[int] = deque()
        self.opened = 0  # open or opening
        self.peak = 0
        self.pending = 0  # requests handed out and not yet finished
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.scheduling = True
        self.closed_loop = False
        self.next_send: Callable[[], None] | None = None  # called as each connection comes free

    def open(self) -> None:
        self.opened += 1
        self.peak = max(self.peak, self.opened)
        task = self.loop.create_task(self.loop.create_connection(lambda: Conn(self), self.host, self.port))
        task.add_done_callback(self._open_done)

    def _open_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.opened -= 1
        exc = task.exception()
        if self.backlog:  # the request that asked for this connection fails with it
            self._fail(self.backlog.popleft(), type(exc).__name__)
        if self.closed_loop and not self.opened:  # nothing left to send on: end the run
            self.stop_scheduling()

    async def warm(self, n: int) -> None:
        n = min(n, self.limit)
        conns = await asyncio.gather(
            *(self.loop.create_connection(lambda: Conn(self), self.host, self.port) for _ in range(n))
        )
        self.opened = self.peak = len(conns)

    def dispatch(self, i: int) -> None:
        self.pending += 1
        self.rec.start[i] = time.monotonic()
        if self.idle:
            self._send(self.idle.pop(), i)
            return
        self.backlog.append(i)
        if self.opened < self.limit:
            self.open()

    def _send(self, conn: Conn, i: int) -> None:
        self.busy.add(conn)
        self.rec.sent[i] = time.monotonic()
        conn.send(i, self.reqs[i])

    def answered(self, conn: Conn, i: int, status: int) -> None:
        self.rec.done[i] = time.monotonic()
        self.rec.status[i] = status
        self._end()
        self.busy.discard(conn)
        if conn.closed:
            self._drop(conn)
        else:
            self.ready(conn)

    def lost(self, conn: Conn) -> None:
        if conn.cur >= 0:
            cur, conn.cur = conn.cur, -1
            self._fail(cur, "ConnectionError")
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        if conn.transport is not None:
            conn.transport.close()
            conn.transport = None
            self.opened -= 1
            # a waiting request needs a connection; a closed loop keeps its count
            wanted = self.backlog or (self.closed_loop and self.scheduling)
            if wanted and self.opened < self.limit:
                self.open()

    def ready(self, conn: Conn) -> None:
        """A connection opened or came free: it takes the oldest waiting request, if any."""
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)
        if self.next_send is not None:
            self.next_send()

    def _fail(self, i: int, key: str) -> None:
        self.rec.error(i, key)
        self._end()

    def _end(self) -> None:
        self.pending -= 1
        if not self.pending and not self.scheduling and not self.finished.done():
            self.finished.set_result(None)

    def expire(self) -> None:
        """Fail requests older than the timeout: in flight (closing their connections) or
        still waiting for a connection, so that every request ends even if the server is gone."""
        now = time.monotonic()
        while self.backlog and now - self.rec.start[self.backlog[0]] > self.timeout:
            self._fail(self.backlog.popleft(), "TimeoutError")
        for conn in [c for c in self.busy if c.cur >= 0 and now - self.rec.sent[c.cur] > self.timeout]:
            cur, conn.cur = conn.cur, -1
            self._fail(cur, "TimeoutError")
            self.busy.discard(conn)
            self._drop(conn)
        if not self.finished.done():
            self.loop.call_later(0.25, self.expire)

    def stop_scheduling(self) -> None:
        self.scheduling = False
        if not self.pending and not self.finished.done():
            self.finished.set_result(None)

    def close(self) -> None:
        for c in self.idle + list(self.busy):
            if c.transport is not None:
                c.transport.close()


async def run_closed(args: argparse.Namespace, reqs: list[bytes], rec: Recorder) -> int:
    drv = Driver(args, reqs, rec, args.concurrency)
    await drv.warm(args.concurrency)
    n = len(reqs)
    nxt = 0
    deadline = time.monotonic() + args.duration if args.duration else float("inf")

    def send_next() -> None:
        nonlocal nxt
        while drv.idle and drv.scheduling:
            if nxt >= n or time.monotonic() >= deadline:
                drv.stop_scheduling()
                return
            rec.sched[nxt] = time.monotonic()
            drv.dispatch(nxt)
            nxt += 1

    drv.next_send = send_next
    drv.closed_loop = True
    drv.expire()
    send_next()
    await drv.finished
    drv.close()
    return nxt


async def run_open(args: argparse.Namespace, reqs: list[bytes], rec: Recorder) -> int:
    drv = Driver(args, reqs, rec, args.max_conns)
    await drv.warm(args.concurrency)
    loop = drv.loop
    n = len(reqs)
    if args.duration:
        n = min(n, int(args.rate * args.duration))
    interval = 1.0 / args.rate
    t0 = time.monotonic() + 0.05
    i = 0

    def catch_up() -> None:
        """Send every request now due. Called on each timer tick and after each answer, so
        that while answers flow requests leave within microseconds of their due time."""
        nonlocal i
        now = time.monotonic()
        while i < n and t0 + i * interval <= now:
            rec.sched[i] = t0 + i * interval
            drv.dispatch(i)
            i += 1
        if i >= n and drv.scheduling:
            drv.stop_scheduling()

    def tick() -> None:
        catch_up()
        if i < n:
            # never below a millisecond: uvloop's timers have that resolution, and a shorter
            # delay would spin the loop
            loop.call_later(max(t0 + i * interval - time.monotonic(), 0.001), tick)

    drv.next_send = catch_up
    drv.expire()
    loop.call_later(0.05, tick)
    await drv.finished
    args.peak_conns = drv.peak
    drv.close()
    return n


async def amain(args: argparse.Namespace) -> dict[str, object]:
    reqs = payloads.read(Path(args.requests))
    if args.count:
        reqs = reqs[: args.count]
    rec = Recorder(len(reqs))
    gc.collect()
    gc.freeze()  # the request list is long-lived: keep the collector off it during the run
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    if args.mode == "closed":
        n = await run_closed(args, reqs, rec)
    else:
        n = await run_open(args, reqs, rec)
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    ok = [k for k in range(n) if 200 <= rec.status[k] < 300]
    statuses: dict[str, int] = {}
    for k in range(n):
        s = str(rec.status[k]) if rec.status[k] else "error"
        statuses[s] = statuses.get(s, 0) + 1
    first = min((rec.sched[k] for k in range(n)), default=t0)
    last = max((rec.done[k] for k in range(n)), default=t0)
    window = max(last - first, 1e-9)
    lat_ms = [(rec.done[k] - rec.sched[k]) * 1000 for k in ok]
    service_ms = [(rec.done[k] - rec.sent[k]) * 1000 for k in ok]
    lag_ms = [(rec.start[k] - rec.sched[k]) * 1000 for k in range(n)]
    out: dict[str, object] = {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "rate_target": args.rate if args.mode == "open" else None,
        "sent": n,
        "ok": len(ok),
        "statuses": statuses,
        "errors": rec.errors,
        "elapsed_s": elapsed,
        "rate": len(ok) / window,
        "latency_ms": summarize(lat_ms),
        "service_ms": summarize(service_ms),
        "lag_ms": summarize(lag_ms),
        "cpu_s": cpu,
        "ceiling_rps": n / cpu if cpu > 0 else None,
        "peak_conns": getattr(args, "peak_conns", args.concurrency),
    }
    if args.times:
        # [sched, done, status] per request, for matching against callback arrivals
        Path(args.times).write_text(
            json.dumps(
                {
                    "sched": list(rec.sched[:n]),
                    "sent": list(rec.sent[:n]),
                    "done": list(rec.done[:n]),
                    "status": list(rec.status[:n]),
                }
            )
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--requests", required=True, help="file written by bench.payloads.write")
    p.add_argument("--out", required=True)
    p.add_argument("--times", help="also write per-request times here")
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument("--concurrency", type=int, default=64, help="connections (closed) / pre-opened (open)")
    p.add_argument("--max-conns", type=int, default=512, help="open loop: connection limit")
    p.add_argument("--rate", type=float, default=1000.0, help="open loop: requests per second")
    p.add_argument("--count", type=int, default=0, help="send at most this many (0 = all in the file)")
    p.add_argument("--duration", type=float, default=0.0, help="stop scheduling after this many seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    args = p.parse_args()
    try:  # the same loop as the services get from their runner, when installed
        import uvloop

        result = uvloop.run(amain(args))
    except ImportError:
        result = asyncio.run(amain(args))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
