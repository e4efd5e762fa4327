"""The bus floor: raw nats-py publishing the webhook bodies to a JetStream file stream, with acks.

Two ways, each bounded by a count:
- ``request``: ``concurrency`` tasks, each awaiting ``js.publish`` (one request/reply per
  message, the shape of an HTTP handler that answers after the PubAck);
- ``async``: ``js.publish_async`` with a window of ``window`` unacknowledged messages (the
  most a single nats-py client can push).
Both set Nats-Msg-Id and use a stream with the same duplicate window as EVENTS, so the
server does the same dedup work it does for the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from bench import payloads
from bench.stats import summarize
from conveyor.shared.bus.streams import DUPLICATE_WINDOW_S

STREAM = "BENCH_FLOOR"


def bodies(path: Path) -> list[bytes]:
    """The JSON bodies of the pre-built requests (what the receiver would publish)."""
    return [raw.split(b"\r\n\r\n", 1)[1] for raw in payloads.read(path)]


async def run(args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(args.url, name="bench-busfloor")
    js = nc.jetstream(publish_async_max_pending=args.window)
    cfg = StreamConfig(
        name=STREAM,
        subjects=["benchfloor.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.delete_stream(STREAM)
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(cfg)
    data = bodies(Path(args.requests))[: args.count]
    out: dict[str, object] = {"count": len(data), "body_bytes": len(data[0]) if data else 0}

    # request/reply, concurrency in flight
    lat: list[float] = []
    nxt = 0

    async def worker(tag: str) -> None:
        nonlocal nxt
        while nxt < len(data):
            i = nxt
            nxt += 1
            t = time.monotonic()
            await js.publish(f"benchfloor.req.{i % 64}", data[i], headers={"Nats-Msg-Id": f"{tag}-{i}"})
            lat.append((time.monotonic() - t) * 1000)

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.gather(*(worker("req") for _ in range(args.concurrency)))
    el = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["request"] = {
        "concurrency": args.concurrency,
        "rate": len(data) / el,
        "latency_ms": summarize(lat),
        "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
    }

    # pipelined publish_async
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    futs = []
    for i, body in enumerate(data):
        futs.append(
            await js.publish_async(f"benchfloor.async.{i % 64}", body, headers={"Nats-Msg-Id": f"async-{i}"})
        )
    acks = await asyncio.gather(*futs)
    el = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["async"] = {
        "window": args.window,
        "rate": len(data) / el,
        "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
        "duplicates": sum(1 for a in acks if a.duplicate),
    }
    await js.delete_stream(STREAM)
    await nc.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--requests", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--window", type=int, default=512)
    args = p.parse_args()
    Path(args.out).write_text(json.dumps(asyncio.run(run(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
