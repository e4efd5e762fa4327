"""Broker memory and disk per retained job: what nats-server keeps after N no-op jobs.

The services run as deployed (default retention), nats-server with the GOMEMLIMIT `make run`
gives it (``--nats-env GOMEMLIMIT=off`` for none), N no-op webhooks go through them at a fixed
rate in chunks, and once every callback has arrived and the broker has been idle for a while
we read nats-server's resident memory (/proc), its streams (/jsz), the store's size on disk,
and its Go heap (/debug/pprof/heap through ``prof_port``, after a forced collection) grouped
by the server function that allocated it.

    .venv/bin/python -m bench --only broker                       # 20,000 jobs (quick: 3,000)
    .venv/bin/python -m bench --only broker --broker-jobs 100000  # the issue's target (~2 min)
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from bench import conveyor_sys, payloads
from bench import procs as procs_mod
from bench.measure import Ctx, SinkClient, end_to_end
from bench.procs import cpu_seconds, memory_mb
from conveyor.shared.testing.nats_server import LOCAL_MEMORY_LIMIT


def dir_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks, as du counts them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


async def streams(monitor: str) -> dict[str, dict[str, int]]:
    """Per stream (KV buckets are KV_<name>): messages, bytes, subjects, interior deletes."""
    async with httpx.AsyncClient(timeout=30) as c:
        jsz = (await c.get(f"{monitor}/jsz", params={"streams": "true"})).json()
    out: dict[str, dict[str, int]] = {}
    for acc in jsz.get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            s = st.get("state", {})
            out[st["name"]] = {
                "msgs": int(s.get("messages", 0)),
                "bytes": int(s.get("bytes", 0)),
                "subjects": int(s.get("num_subjects", 0)),
                "deleted": int(s.get("num_deleted", 0)),
            }
    return out


_RECORD = re.compile(r"^(\d+): (\d+) \[(\d+): (\d+)\] @")
_FRAME = re.compile(r"^#\s+0x[0-9a-f]+\s+(\S+?)\+0x[0-9a-f]+\s")


def parse_heap(text: str, top: int = 12) -> dict[str, Any]:
    """Go's debug=1 heap profile: in-use bytes by allocating function (the first frame outside
    the runtime, and the first in nats-server's own package), unsampled the way pprof does."""
    lines = text.splitlines()
    m = re.search(r"@ heap/(\d+)", lines[0]) if lines else None
    rate = int(m.group(1)) / 2 if m else 512 * 1024
    by_fn: dict[str, float] = {}
    by_server: dict[str, float] = {}
    total = 0.0
    i = 0
    while i < len(lines):
        rec = _RECORD.match(lines[i])
        i += 1
        if not rec:
            continue
        objs, size = int(rec.group(1)), int(rec.group(2))
        frames = []
        while i < len(lines) and lines[i].startswith("#\t"):
            f = _FRAME.match(lines[i])
            if f:
                frames.append(f.group(1))
            i += 1
        if not objs or not size:
            continue
        avg = size / objs
        scaled = size / (1 - math.exp(-avg / rate)) if rate > 0 else size
        total += scaled
        first = next((f for f in frames if not f.startswith("runtime.")), frames[0] if frames else "?")
        by_fn[first] = by_fn.get(first, 0) + scaled
        srv = next((f for f in frames if "nats-server/v2/server." in f), first)
        by_server[srv] = by_server.get(srv, 0) + scaled
    stats = {}
    for line in lines:
        mm = re.match(r"^# (HeapInuse|HeapAlloc|HeapSys|HeapReleased|Sys|NumGC) = (\d+)", line)
        if mm:
            stats[mm.group(1)] = int(mm.group(2))

    def short(name: str) -> str:
        return name.replace("github.com/nats-io/nats-server/v2/", "")

    def head(d: dict[str, float]) -> list[list[Any]]:
        return [[short(k), round(v / 1e6, 1)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "inuse_mb": round(total / 1e6, 1),
        "memstats_mb": {k: (round(v / 1e6, 1) if k != "NumGC" else v) for k, v in stats.items()},
        "top_mb": head(by_fn),
        "top_server_mb": head(by_server),
    }


async def heap(prof: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.get(f"{prof}/debug/pprof/heap", params={"debug": "1", "gc": "1"})
        r.raise_for_status()
    return parse_heap(r.text)


async def snapshot(system: conveyor_sys.System) -> dict[str, Any]:
    n = system.nats
    out: dict[str, Any] = {
        "rss_mb": round(memory_mb(n.proc.pid).get("VmRSS", 0), 1),
        "hwm_mb": round(memory_mb(n.proc.pid).get("VmHWM", 0), 1),
        "disk_mb": round(dir_bytes(n.store) / 1e6, 1) if n.store else None,
        "streams": await streams(n.monitor),
    }
    if n.store:
        # On disk per stream: a rewritten KV record leaves its old copy in the block until the
        # block is compacted, so this can be well over the stream's bytes.
        for d in n.store.glob("jetstream/*/streams/*"):
            if d.name in out["streams"]:
                out["streams"][d.name]["disk"] = dir_bytes(d)
    out["stream_mb"] = round(sum(s["bytes"] for s in out["streams"].values()) / 1e6, 1)
    out["subjects"] = sum(s["subjects"] for s in out["streams"].values())
    return out


async def broker(
    ctx: Ctx,
    sink: SinkClient,
    *,
    jobs: int,
    rate: float,
    idle_s: float,
    secret: str,
    chunk: int = 10_000,
    extra: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    system = await conveyor_sys.start(
        ctx.procs,
        ctx.root,
        "broker",
        services=["receiver", "executor", "deliverer"],
        secret=secret,
        callback_url=ctx.sink_url,
        log_level=ctx.log_level,
        extra=extra,
        nats_prof=True,
        nats_env={"GOMEMLIMIT": LOCAL_MEMORY_LIMIT},
    )
    limit = (procs_mod.NATS_ENV.get("GOMEMLIMIT") or LOCAL_MEMORY_LIMIT).strip()
    out: dict[str, Any] = {"jobs": jobs, "rate": rate, "idle_s": idle_s, "gomemlimit": limit}
    try:
        await asyncio.sleep(3)
        empty = await snapshot(system)
        out["empty"] = {k: v for k, v in empty.items() if k != "streams"}
        growth: list[dict[str, Any]] = []
        delivered = lost = duplicates = 0
        done = 0
        t0, cpu0 = time.monotonic(), cpu_seconds(system.nats.proc.pid)
        while done < jobs:
            n = min(chunk, jobs - done)
            batch = payloads.build(
                n,
                prefix=f"broker-{done}",
                secret=secret,
                port=system.receiver_port,
                event_type="agent.task_requested",
                agent="noop",
            )
            r = await end_to_end(
                ctx, f"broker-{done}", system.receiver_port, sink, batch, rate=rate, watch={}
            )
            delivered += r["delivered"]
            lost += r["lost"]
            duplicates += r["duplicates"]
            done += n
            s = await snapshot(system)
            growth.append(
                {"jobs": done, "rss_mb": s["rss_mb"], "disk_mb": s["disk_mb"], "subjects": s["subjects"]}
            )
            ctx.log(
                f"broker: {done} jobs, nats-server {s['rss_mb']:.0f} MB resident, {s['disk_mb']:.0f} MB disk"
            )
        out.update(
            delivered=delivered, lost=lost, duplicates=duplicates, load_s=round(time.monotonic() - t0, 1)
        )
        # nats-server's CPU through the load: what a tighter memory limit costs in collections.
        out["nats_cpu_s"] = round(cpu_seconds(system.nats.proc.pid) - cpu0, 1)
        out["growth"] = growth
        out["loaded"] = {k: v for k, v in (await snapshot(system)).items() if k != "streams"}
        ctx.log(f"broker: idle {idle_s:.0f} s")
        # Resident memory through the idle time: block caches expire after 10 s, Go collects
        # at least every 2 minutes and returns freed pages to the system gradually.
        trace: list[list[float]] = []
        t_idle = time.monotonic()
        while (left := idle_s - (time.monotonic() - t_idle)) > 0:
            rss = memory_mb(system.nats.proc.pid).get("VmRSS", 0)
            trace.append([round(time.monotonic() - t_idle), round(rss, 1)])
            await asyncio.sleep(min(10.0, left))
        out["idle_rss_mb"] = trace
        end = await snapshot(system)
        out["idle"] = end
        # Two forced collections: the first moves the block-buffer pools to their victim
        # cache, the second frees them, so the profile shows what is really held.
        await heap(system.nats.prof)
        out["heap"] = await heap(system.nats.prof)
        out["idle"]["rss_after_gc_mb"] = round(memory_mb(system.nats.proc.pid).get("VmRSS", 0), 1)
        kept = max(delivered, 1)
        out["per_job"] = {
            "rss_kb": round((end["rss_mb"] - empty["rss_mb"]) * 1000 / kept, 2),
            "heap_kb": round(out["heap"]["inuse_mb"] * 1000 / kept, 2),
            "disk_kb": round(((end["disk_mb"] or 0) - (empty["disk_mb"] or 0)) * 1000 / kept, 2),
            "stream_kb": round((end["stream_mb"] - empty["stream_mb"]) * 1000 / kept, 2),
            "subjects": round((end["subjects"] - empty["subjects"]) / kept, 2),
        }
        return out
    finally:
        for p in reversed(list(system.services.values())):
            await ctx.procs.stop(p)
        await ctx.procs.stop(system.nats.proc)
