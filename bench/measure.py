"""Measurements shared by Conveyor and the baseline: drive load, wait for callbacks, compute."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import payloads, stalls, wrkload
from bench.procs import CLK_TCK, Proc, Procs, cpu_seconds, memory_mb
from bench.stats import summarize


@dataclass
class Ctx:
    """What every measurement needs: where to write, the process table, the knobs."""

    root: Path
    procs: Procs
    secret: str
    quick: bool
    connections: int  # closed-loop connections (wrk and the Python driver)
    duration: float  # seconds of each timed load phase
    use_wrk: bool
    log: Any = print
    log_level: str = "INFO"
    profile: list[str] = field(default_factory=list)
    sink_url: str = ""
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    e2e_rate: float | None = None  # the end-to-end fixed-rate phases at this rate, not half the max
    warnings: list[str] = field(default_factory=list)
    counter: int = 0

    def file(self, name: str) -> Path:
        self.counter += 1
        return self.root / f"{self.counter:02d}-{name}"


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all processes, all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """Cores each watched process used during a phase (where the CPU went), and how busy the
    whole machine was: ``_machine`` well above the sum of ours plus the driver means someone
    else was using the cores too, and the phase's numbers are low by that much."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs
        self.start = {n: cpu_seconds(p.pid) for n, p in procs.items()}
        self.machine = machine_busy_s()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        out = {n: round((cpu_seconds(p.pid) - self.start[n]) / wall, 3) for n, p in self.procs.items()}
        out["_machine"] = round((machine_busy_s() - self.machine) / wall, 3)
        out["_wall_s"] = round(wall, 2)
        return out


def memory(procs: dict[str, Proc]) -> dict[str, dict[str, float]]:
    return {n: memory_mb(p.pid) for n, p in procs.items()}


async def run_driver(
    ctx: Ctx, name: str, port: int, requests: Path, *args: str, times: bool = False
) -> dict[str, Any]:
    out = ctx.file(f"{name}.json")
    extra = ["--times", str(out.with_suffix(".times.json"))] if times else []
    p = await ctx.procs.python(
        name,
        "bench.driver",
        "--port",
        str(port),
        "--requests",
        str(requests),
        "--out",
        str(out),
        *args,
        *extra,
    )
    await p.proc.wait()
    await ctx.procs.stop(p)
    if p.proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"driver {name} failed:\n{p.tail()}")
    result: dict[str, Any] = json.loads(out.read_text())
    if times:
        result["_times"] = json.loads(out.with_suffix(".times.json").read_text())
    return result


async def closed_probe(
    ctx: Ctx, name: str, port: int, batch: payloads.Batch, seconds: float
) -> dict[str, Any]:
    """A short closed-loop run (also the warm-up): how fast is it, roughly?"""
    f = payloads.write(ctx.file(f"{name}.req"), batch.requests)
    return await run_driver(
        ctx,
        name,
        port,
        f,
        "--mode",
        "closed",
        "--concurrency",
        str(ctx.connections),
        "--duration",
        str(seconds),
    )


async def max_rate(
    ctx: Ctx,
    name: str,
    port: int,
    make: Any,
    estimate_rps: float,
    watch: dict[str, Proc],
    duration: float | None = None,
) -> dict[str, Any]:
    """Maximum rate, closed loop: wrk (C) when installed, else the Python driver.

    ``make(n)`` builds n unique requests; the pool is sized from an estimate so wrk never
    runs out (it would answer 404s, counted as errors, rather than replay).
    """
    duration = duration or ctx.duration
    n = int(max(estimate_rps, 500) * duration * 1.6) + 2000
    batch = make(n)
    f = payloads.write(ctx.file(f"{name}.req"), batch.requests)
    meter = CpuMeter(watch)
    if ctx.use_wrk:
        r = await wrkload.run(
            ctx.procs,
            f"{name}-wrk",
            f"http://127.0.0.1:{port}",
            f,
            duration=duration,
            connections=ctx.connections,
            pool=n,
        )
        res = {"driver": "wrk", **r.as_dict()}
    else:
        d = await run_driver(
            ctx,
            name,
            port,
            f,
            "--mode",
            "closed",
            "--concurrency",
            str(ctx.connections),
            "--duration",
            str(duration),
        )
        res = {
            "driver": "python-closed",
            "requests": d["sent"],
            "ok": d["ok"],
            "rate": d["rate"],
            "errors": {**d["errors"], **{k: v for k, v in d["statuses"].items() if not k.startswith("2")}},
            "latency_ms": d["latency_ms"],
            "cpu_s": d["cpu_s"],
            "ceiling_rps": d["ceiling_rps"],
            "connections": ctx.connections,
            "duration_s": d["elapsed_s"],
            "pool": n,
        }
    res["cpu_cores"] = meter.stop()
    res["body_bytes"] = batch.body_bytes
    return res


async def open_rate(
    ctx: Ctx,
    name: str,
    port: int,
    make: Any,
    rate: float,
    watch: dict[str, Proc],
    seconds: float | None = None,
) -> dict[str, Any]:
    """Fixed rate, open loop, latency from the scheduled send time."""
    n = max(int(rate * (seconds or ctx.duration)), 50)
    batch = make(n)
    f = payloads.write(ctx.file(f"{name}.req"), batch.requests)
    pauses = ctx.file(f"{name}.pauses")
    watcher = await ctx.procs.python(f"{name}-pauses", "bench.stalls", "--out", str(pauses))
    meter = CpuMeter(watch)
    try:
        d = await run_driver(
            ctx,
            name,
            port,
            f,
            "--mode",
            "open",
            "--rate",
            f"{rate:.1f}",
            "--concurrency",
            str(min(ctx.connections, 64)),
            times=True,
        )
    finally:
        await ctx.procs.stop(watcher)
    times = d.pop("_times")
    d["worst_seconds"] = worst_seconds(times)
    d["cpu_cores"] = meter.stop()
    if times["sched"]:
        d["machine_pauses"] = stalls.read(pauses, min(times["sched"]), max(times["done"]))
    return d


def worst_seconds(times: dict[str, list[float]], top: int = 3) -> list[dict[str, float]]:
    """The seconds (by scheduled send time) with the highest p99: a stall, a GC pause or a
    neighbour's burst shows up as one bad second rather than a uniformly slow run."""
    if not times["sched"]:
        return []
    t0 = min(times["sched"])
    by_sec: dict[int, list[float]] = {}
    for s, d, st in zip(times["sched"], times["done"], times["status"], strict=True):
        if 200 <= st < 300:
            by_sec.setdefault(int(s - t0), []).append((d - s) * 1000)
    rows = [{"second": k, **summarize(v)} for k, v in by_sec.items() if len(v) >= 20]
    rows.sort(key=lambda r: -r["p99"])
    return [{k: round(r[k], 1) for k in ("second", "n", "p50", "p99", "max")} for r in rows[:top]]


# --- end to end ---------------------------------------------------------------------------------


class SinkClient:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as c:
            return dict((await c.get(f"{self.url}/stats")).json())

    async def arrivals(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as c:
            return dict((await c.get(f"{self.url}/arrivals")).json())

    async def reset(self) -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            (await c.post(f"{self.url}/reset")).raise_for_status()

    async def wait_for(
        self, expected: int, *, stall_s: float, limit_s: float, settle_s: float = 1.0
    ) -> dict[str, Any]:
        """Poll until ``expected`` distinct jobs arrived, nothing new came for ``stall_s``, or
        ``limit_s`` passed; then wait ``settle_s`` more so late duplicates are counted too."""
        t0 = time.monotonic()
        last_count, last_change = -1, time.monotonic()
        while True:
            s = await self.stats()
            if s["unique"] >= expected:
                break
            if s["count"] != last_count:
                last_count, last_change = s["count"], time.monotonic()
            if time.monotonic() - last_change > stall_s or time.monotonic() - t0 > limit_s:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(settle_s)
        return await self.stats()


def steady_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Arrivals per second between the lo and hi quantiles of arrival time (no ramp-up, no tail)."""
    if len(times) < 20:
        return float("nan")
    t = sorted(times)
    a, b = int(len(t) * lo), int(len(t) * hi) - 1
    span = t[b] - t[a]
    return (b - a) / span if span > 0 else float("nan")


def ingest_phases(arrivals: list[float], ingest_end: float | None) -> dict[str, Any] | None:
    """Callback rates while webhooks were still going in and after the last one was answered:
    how the job path does while sharing the cores with ingest, and on its own. A part with
    fewer than 200 callbacks gets no rate (a pipeline that kept up with ingest has almost
    nothing left after it)."""
    if ingest_end is None:
        return None
    t = sorted(arrivals)
    during = [x for x in t if x <= ingest_end]
    after = [x for x in t if x > ingest_end]
    return {
        "during_ingest": {
            "jobs": len(during),
            "jobs_per_s": (len(during) - 1) / (during[-1] - during[0]) if len(during) >= 200 else None,
        },
        "after_ingest": {
            "jobs": len(after),
            "jobs_per_s": len(after) / (after[-1] - ingest_end) if len(after) >= 200 else None,
        },
    }


async def end_to_end(
    ctx: Ctx,
    name: str,
    port: int,
    sink: SinkClient,
    batch: payloads.Batch,
    *,
    rate: float | None,
    watch: dict[str, Proc],
    concurrency: int | None = None,
    keep_pairs: bool = False,
) -> dict[str, Any]:
    """Send ``batch`` (closed loop at ``concurrency``, or open loop at ``rate``) and match every
    accepted webhook with its callback: rate over the steady window, latency from the
    scheduled send to the sink's arrival, lost and duplicated callbacks."""
    await sink.reset()
    f = payloads.write(ctx.file(f"{name}.req"), batch.requests)
    meter = CpuMeter(watch)
    if rate is None:
        args = ["--mode", "closed", "--concurrency", str(concurrency or ctx.connections)]
    else:
        args = ["--mode", "open", "--rate", f"{rate:.1f}", "--concurrency", str(min(ctx.connections, 64))]
    d = await run_driver(ctx, name, port, f, *args, times=True)
    times = d.pop("_times")
    n = len(batch.job_ids)
    accepted = [i for i in range(n) if 200 <= times["status"][i] < 300]
    limit = 60 + n / 50
    await sink.wait_for(len(accepted), stall_s=20 if not ctx.quick else 10, limit_s=limit, settle_s=0)
    cpu = meter.stop()  # before the settle wait below: cores used while the jobs ran, not after
    await asyncio.sleep(1.0)  # late duplicates still count
    stats = await sink.stats()
    arr = await sink.arrivals()
    first_arrival: dict[str, float] = {}
    for job, t in zip(arr["jobs"], arr["times"], strict=True):
        first_arrival.setdefault(job, t)
    index = {batch.job_ids[i]: i for i in accepted}
    lat_ms = [(first_arrival[j] - times["sched"][i]) * 1000 for j, i in index.items() if j in first_arrival]
    ours = [t for j, t in first_arrival.items() if j in index]
    lost = sum(1 for j in index if j not in first_arrival)
    strangers = sum(1 for j in first_arrival if j not in index)
    send_span = max(times["done"][:n]) - min(times["sched"][:n]) if n else 0
    total_span = (max(ours) - min(times["sched"][:n])) if ours else float("nan")
    return {
        "sent": n,
        "accepted": len(accepted),
        "rejected": n - len(accepted),
        "driver": {
            k: d[k]
            for k in ("mode", "rate", "rate_target", "statuses", "errors", "latency_ms", "lag_ms", "cpu_s")
        },
        "ingest_rate": len(accepted) / send_span if send_span > 0 else None,
        "delivered": len(ours),
        "lost": lost,
        "duplicates": stats["count"] - stats["unique"],
        "unexpected": strangers,
        "bad_signature": stats["bad_signature"],
        "not_completed": stats["not_completed"],
        "callback_connections": stats.get("connections"),
        "jobs_per_s": steady_rate(ours),
        "phases": ingest_phases(ours, max(times["done"][:n]) if n else None),
        "jobs_per_s_overall": len(ours) / total_span if total_span and total_span > 0 else None,
        "latency_ms": summarize(lat_ms),
        "cpu_cores": cpu,
        # job id -> (scheduled send, callback arrival), CLOCK_MONOTONIC; for the stage breakdown
        "_pairs": {j: (times["sched"][i], first_arrival[j]) for j, i in index.items() if j in first_arrival}
        if keep_pairs
        else {},
    }
