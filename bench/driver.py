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
from pathlib import Path

from bench import payloads
from bench.stats import summarize


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        if self.waiter is None or self.waiter.done():
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
        self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by server"))

    async def request(self, raw: bytes, timeout: float) -> int:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.transport.write(raw)
        return await asyncio.wait_for(self.waiter, timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle connections, opened on demand up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.loop = asyncio.get_running_loop()
        self.idle: list[Conn] = []
        self.opened = 0
        self.waiters: list[asyncio.Future[Conn]] = []
        self.peak = 0

    async def _open(self) -> Conn:
        self.opened += 1
        self.peak = max(self.peak, self.opened)
        try:
            _, conn = await self.loop.create_connection(lambda: Conn(self.loop), self.host, self.port)
        except BaseException:
            self.opened -= 1
            raise
        return conn

    async def warm(self, n: int) -> None:
        conns = await asyncio.gather(*(self._open() for _ in range(min(n, self.limit))))
        self.idle.extend(conns)

    async def acquire(self) -> Conn:
        if self.idle:
            return self.idle.pop()
        if self.opened < self.limit:
            return await self._open()
        fut: asyncio.Future[Conn] = self.loop.create_future()
        self.waiters.append(fut)
        return await fut

    def release(self, conn: Conn) -> None:
        if conn.closed:
            conn.close()
            self.opened -= 1
            if self.waiters:  # someone waits: give them a fresh connection
                fut = self.waiters.pop(0)
                task = self.loop.create_task(self._open())
                task.add_done_callback(
                    lambda t: (
                        fut.set_exception(t.exception()) if t.exception() else fut.set_result(t.result())
                    )
                )
            return
        while self.waiters:
            fut = self.waiters.pop(0)
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def close(self) -> None:
        for c in self.idle:
            c.close()


class Recorder:
    def __init__(self, n: int) -> None:
        self.sched = array("d", bytes(8 * n))
        self.start = array("d", bytes(8 * n))
        self.sent = array("d", bytes(8 * n))
        self.done = array("d", bytes(8 * n))
        self.status = array("i", bytes(4 * n))  # 0 = error
        self.errors: dict[str, int] = {}

    def error(self, i: int, exc: BaseException) -> None:
        key = type(exc).__name__
        self.errors[key] = self.errors.get(key, 0) + 1
        self.status[i] = 0
        self.done[i] = time.monotonic()


async def one(pool: Pool, rec: Recorder, i: int, raw: bytes, timeout: float) -> None:
    conn = None
    rec.start[i] = time.monotonic()
    try:
        conn = await pool.acquire()
        rec.sent[i] = time.monotonic()
        rec.status[i] = await conn.request(raw, timeout)
        rec.done[i] = time.monotonic()
    except (OSError, TimeoutError, ConnectionError) as exc:
        rec.error(i, exc)
        if conn is not None:
            conn.closed = True
    finally:
        if conn is not None:
            pool.release(conn)


async def run_closed(args: argparse.Namespace, reqs: list[bytes], rec: Recorder) -> int:
    pool = Pool(args.host, args.port, args.concurrency)
    await pool.warm(args.concurrency)
    n = len(reqs)
    nxt = 0
    deadline = time.monotonic() + args.duration if args.duration else float("inf")

    async def worker() -> None:
        nonlocal nxt
        while nxt < n and time.monotonic() < deadline:
            i = nxt
            nxt += 1
            rec.sched[i] = time.monotonic()
            await one(pool, rec, i, reqs[i], args.timeout)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    pool.close()
    return nxt


async def run_open(args: argparse.Namespace, reqs: list[bytes], rec: Recorder) -> int:
    pool = Pool(args.host, args.port, args.max_conns)
    await pool.warm(args.concurrency)
    loop = asyncio.get_running_loop()
    n = len(reqs)
    if args.duration:
        n = min(n, int(args.rate * args.duration))
    interval = 1.0 / args.rate
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic() + 0.05
    i = 0
    while i < n:
        now = time.monotonic()
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < n and t0 + i * interval <= now:
            rec.sched[i] = t0 + i * interval
            task = loop.create_task(one(pool, rec, i, reqs[i], args.timeout))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    args.peak_conns = pool.peak
    pool.close()
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
                {"sched": list(rec.sched[:n]), "done": list(rec.done[:n]), "status": list(rec.status[:n])}
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
    result = asyncio.run(amain(args))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
