"""``make bench``: limits, ingest, end to end, scale, fan-out, memory, and the Express baseline.

Every section starts what it needs on free loopback ports, measures, and stops what it
started (by PID) before the next one begins. All numbers of one report come from one run,
so the ratios hold even on a busy machine. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backlog, baseline, brokermem, conveyor_sys, payloads, profile, report, wrkload
from bench import procs as procs_mod
from bench.ladder import LEVELS
from bench.measure import (
    CpuMeter,
    Ctx,
    SinkClient,
    closed_probe,
    end_to_end,
    machine_busy_s,
    max_rate,
    memory,
    open_rate,
)
from bench.procs import Procs, free_port, nats_counts, per_item, start_nats, wait_port
from bench.stats import summarize
from conveyor.shared.testing.nats_server import nats_server_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SECRET = "bench-webhook-secret"
SECTIONS = ("floors", "ladder", "ingest", "e2e", "scale", "fanout", "broker", "baseline")


@dataclass(frozen=True)
class Plan:
    duration: float  # seconds of each timed load phase
    e2e_jobs: int
    half_jobs_cap: int
    warmup_jobs: int
    connections: int
    executor_concurrency: int  # CONCURRENCY of the executor in the no-op end-to-end run
    scale_concurrency: int  # CONCURRENCY per executor replica in the scale run
    scale_sleep_ms: int
    scale_jobs: int
    fanout_events: int
    fanout_ms: int
    broker_jobs: int  # no-op jobs kept before broker memory and disk are read
    broker_rate: float  # jobs/s they are sent at (open loop: memory, not speed, is measured)
    broker_idle_s: float  # idle time before the reading


FULL = Plan(10, 20_000, 10_000, 500, 64, 64, 8, 200, 480, 5, 1000, 20_000, 2_000, 30)
QUICK = Plan(3, 3_000, 2_000, 200, 64, 64, 8, 200, 160, 2, 1000, 3_000, 2_000, 5)


def with_overrides(ctx: Ctx, extra: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Section settings, then ``--set service:KEY=VALUE`` from the command line on top."""
    out = {svc: dict(env) for svc, env in extra.items()}
    for svc, env in ctx.overrides.items():
        out.setdefault(svc, {}).update(env)
    return out


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def maker(
    port: int, prefix: str, event_type: str, agent: str | None, extra: dict[str, object] | None = None
) -> Any:
    """A function n -> n unique signed webhooks for ``port``; each call gets fresh ids."""
    calls = iter(range(1_000_000))

    def make(n: int) -> payloads.Batch:
        return payloads.build(
            n,
            prefix=f"{prefix}-{next(calls)}",
            secret=SECRET,
            port=port,
            event_type=event_type,
            agent=agent,
            extra=extra,
        )

    return make


# --- sections -------------------------------------------------------------------------------


async def floors(ctx: Ctx, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    bare = await ctx.procs.python("bare-aiohttp", "bench.bare", "--port", str(port), port=port)
    await wait_port(bare, port)
    make = maker(port, "floor", "agent.task_requested", "noop")
    probe = await closed_probe(ctx, "floor-probe", port, make(20_000), 2)
    log(f"HTTP floor probe {probe['rate']:.0f}/s; now {plan.duration:.0f}s at max rate")
    out["http"] = await max_rate(ctx, "floor-max", port, make, probe["rate"], {"bare-aiohttp": bare})
    # The Python driver, closed loop against the same server: its own ceiling.
    out["python_driver"] = {k: probe[k] for k in ("rate", "cpu_s", "ceiling_rps", "latency_ms")}
    await ctx.procs.stop(bare)
    log(f"HTTP floor {out['http']['rate']:.0f}/s (driver {out['http']['driver']})")

    nats = await start_nats(ctx.procs, "floor-nats", ctx.root / "floor-js")
    n = 5_000 if ctx.quick else 20_000
    f = payloads.write(ctx.file("bus.req"), make(n).requests)
    res = ctx.file("bus.json")
    meter = CpuMeter({"nats-server": nats.proc})
    p = await ctx.procs.python(
        "bus-floor",
        "bench.busfloor",
        "--url",
        nats.url,
        "--requests",
        str(f),
        "--out",
        str(res),
        "--count",
        str(n),
        "--concurrency",
        str(ctx.connections),
    )
    await p.proc.wait()
    await ctx.procs.stop(p)
    if not res.exists():
        raise RuntimeError(f"bus floor failed:\n{p.tail()}")
    out["bus"] = json.loads(res.read_text())
    out["bus"]["cpu_cores"] = meter.stop()
    await ctx.procs.stop(nats.proc)
    log(
        f"bus floor {out['bus']['request']['rate']:.0f}/s (64 in flight), "
        f"{out['bus']['async']['rate']:.0f}/s async"
    )
    return out


async def ladder(ctx: Ctx, plan: Plan) -> dict[str, Any]:
    """The receiver's essential work added step by step (bench/ladder.py), each at max rate."""
    nats = await start_nats(ctx.procs, "ladder-nats", ctx.root / "ladder-js")
    out: dict[str, Any] = {}
    seconds = min(plan.duration, 5)
    try:
        for level, name in enumerate(LEVELS):
            port = free_port()
            p = await ctx.procs.python(
                f"ladder-{level}", "bench.ladder", "--port", str(port), "--nats", nats.url,
                "--level", str(level), "--secret", SECRET, port=port,
            )  # fmt: skip
            await wait_port(p, port)
            make = maker(port, f"ladder{level}", "agent.task_requested", "noop")
            probe = await closed_probe(ctx, f"ladder-{level}-probe", port, make(10_000), 1.5)
            res = await max_rate(
                ctx,
                f"ladder-{level}",
                port,
                make,
                probe["rate"],
                {"server": p, "nats-server": nats.proc},
                seconds,
            )
            out[name] = {k: res[k] for k in ("rate", "ok", "errors", "latency_ms", "cpu_cores")}
            log(f"ladder {level} ({name}): {res['rate']:.0f}/s")
            await ctx.procs.stop(p)
    finally:
        await ctx.procs.stop(nats.proc)
    return out


async def ingest(ctx: Ctx, plan: Plan) -> dict[str, Any]:
    system = await conveyor_sys.start(
        ctx.procs,
        ctx.root,
        "ingest",
        services=["receiver"],
        secret=SECRET,
        callback_url=ctx.sink_url,
        log_level=ctx.log_level,
        extra=with_overrides(ctx, {}),
    )
    try:
        port = system.receiver_port
        make = maker(port, "ingest", "agent.task_requested", "noop")
        probe = await closed_probe(ctx, "ingest-probe", port, make(20_000), 2)
        log(f"receiver probe {probe['rate']:.0f}/s; now {plan.duration:.0f}s at max rate")
        prof = await profile.start(ctx, system.services, ctx.profile) if ctx.profile else None
        before = await nats_counts(system.nats)
        mx = await max_rate(ctx, "ingest-max", port, make, probe["rate"], system.watch())
        mx["nats_msgs_per_request"] = per_item(before, await nats_counts(system.nats), mx["requests"])
        if prof:
            mx["profile"] = await profile.stop(ctx, prof)
        log(f"receiver max {mx['rate']:.0f}/s; now {plan.duration:.0f}s at {mx['rate'] / 2:.0f}/s")
        half = await open_rate(ctx, "ingest-half", port, make, mx["rate"] / 2, system.watch())
        return {"probe": {k: probe[k] for k in ("rate", "statuses")}, "max": mx, "half": half}
    finally:
        await stop_system(ctx, system)


async def e2e(ctx: Ctx, plan: Plan, sink: SinkClient) -> dict[str, Any]:
    extra = with_overrides(ctx, {"executor": {"CONCURRENCY": str(plan.executor_concurrency)}})
    system = await conveyor_sys.start(
        ctx.procs,
        ctx.root,
        "e2e",
        services=["receiver", "executor", "deliverer"],
        secret=SECRET,
        callback_url=ctx.sink_url,
        log_level=ctx.log_level,
        extra=extra,
    )
    out: dict[str, Any] = {"executor_concurrency": int(extra["executor"]["CONCURRENCY"])}
    try:
        with contextlib.suppress(Exception):
            await conveyor_sys.add_service(
                ctx.procs, system, "e2e", "deployer", with_overrides(ctx, {}).get("deployer", {})
            )
        await asyncio.sleep(3)
        out["memory_idle"] = memory(system.watch())
        port = system.receiver_port
        make = maker(port, "e2e", "agent.task_requested", "noop")
        log(f"end to end: warm-up ({plan.warmup_jobs} jobs)")
        await end_to_end(
            ctx, "e2e-warmup", port, sink, make(plan.warmup_jobs), rate=None, watch=system.watch()
        )
        log(f"end to end: {plan.e2e_jobs} jobs, closed loop ({ctx.connections} connections)")
        prof = await profile.start(ctx, system.services, ctx.profile) if ctx.profile else None
        before = await nats_counts(system.nats)
        async with contextlib.AsyncExitStack() as stack:
            census = await stack.enter_async_context(profile.SubjectCensus(system.nats.url)) if prof else None
            waits = await stack.enter_async_context(backlog.Backlog(system.nats.url))
            out["max"] = await end_to_end(
                ctx, "e2e-max", port, sink, make(plan.e2e_jobs), rate=None, watch=system.watch()
            )
        out["max"]["backlog"] = waits.summary()
        out["max"]["nats_msgs_per_job"] = per_item(
            before, await nats_counts(system.nats), out["max"]["delivered"]
        )
        if prof:
            out["profile"] = await profile.stop(ctx, prof)
        if census is not None:
            out["nats_subjects_per_job"] = census.per(out["max"]["delivered"])
        rate = out["max"]["jobs_per_s"]
        log(f"end to end: {rate:.0f} jobs/s, lost {out['max']['lost']}; now half rate")
        half_rate = ctx.e2e_rate or max(rate / 2, 10)
        n = int(min(plan.half_jobs_cap, half_rate * plan.duration))
        out["half"] = await end_to_end(
            ctx, "e2e-half", port, sink, make(n), rate=half_rate, watch=system.watch(), keep_pairs=True
        )
        out["half"]["stages_ms"] = await stages(system, out["half"].pop("_pairs"))
        out["memory_end"] = memory(system.watch())
        return out
    finally:
        await stop_system(ctx, system)


async def stages(
    system: conveyor_sys.System, pairs: dict[str, tuple[float, float]], sample: int = 400
) -> dict[str, Any]:
    """Where webhook -> callback time goes, from the job records: webhook sent -> record
    created (receiver) -> started (router, JOBS, worker) -> finished (the agent) -> callback
    arrived (RESULTS, deliverer, HTTP). Record times are wall clock; driver and sink times
    are converted with this machine's wall-monotonic offset."""
    import msgspec
    import nats as natspy

    offset = time.time() - time.monotonic()
    jobs = list(pairs)[:: max(1, len(pairs) // sample)][:sample]
    spans: dict[str, list[float]] = {"receiver": [], "to_start": [], "agent": [], "to_callback": []}
    nc = await natspy.connect(system.nats.url, name="bench-stages")
    try:
        kv = await nc.jetstream().key_value("jobs")
        for job in jobs:
            try:
                entry = await kv.get(job)
            except Exception:
                continue
            rec = msgspec.json.decode(entry.value or b"{}")
            try:
                created, started, finished = (
                    dt.datetime.fromisoformat(rec[k]).timestamp()
                    for k in ("created_at", "started_at", "finished_at")
                )
            except (KeyError, TypeError, ValueError):
                continue
            sent, arrived = (t + offset for t in pairs[job])
            spans["receiver"].append((created - sent) * 1000)
            spans["to_start"].append((started - created) * 1000)
            spans["agent"].append((finished - started) * 1000)
            spans["to_callback"].append((arrived - finished) * 1000)
    finally:
        await nc.close()
    return {k: summarize(v) for k, v in spans.items()}


async def scale(
    ctx: Ctx, plan: Plan, sink: SinkClient, *, replicas: bool, fanout_events: int
) -> dict[str, Any]:
    """One system for both: 200 ms agents on 1 then 2 executor replicas; then the fan-out."""
    fan = ["fan-a", "fan-b", "fan-c"]
    cfg = conveyor_sys.config_toml(
        ctx.root / "scale.toml",
        agents=[{"name": n, "backend": "builtin", "builtin": "sleep", "retries": 0} for n in fan],
        routes={"lovable:project.updated": fan},
    )
    extra = {"executor": {"CONCURRENCY": str(plan.scale_concurrency), "CONVEYOR_CONFIG": str(cfg)}}
    system = await conveyor_sys.start(
        ctx.procs,
        ctx.root,
        "scale",
        services=["receiver", "executor", "deliverer"],
        secret=SECRET,
        callback_url=ctx.sink_url,
        log_level=ctx.log_level,
        extra=with_overrides(ctx, extra),
    )
    out: dict[str, Any] = {}
    try:
        port = system.receiver_port
        if replicas:
            out.update(
                sleep_ms=plan.scale_sleep_ms,
                concurrency_per_replica=plan.scale_concurrency,
                bound_per_replica=plan.scale_concurrency * 1000 / plan.scale_sleep_ms,
                jobs=plan.scale_jobs,
            )
            make = maker(port, "scale", "agent.task_requested", "sleep", {"ms": plan.scale_sleep_ms})
            await end_to_end(
                ctx,
                "scale-warmup",
                port,
                sink,
                make(plan.scale_concurrency * 2),
                rate=None,
                watch=system.watch(),
            )
            for n in (1, 2):
                if n == 2:
                    await conveyor_sys.add_service(
                        ctx.procs,
                        system,
                        "scale",
                        "executor",
                        with_overrides(ctx, extra)["executor"],
                        key="executor-2",
                    )
                log(f"scale: {plan.scale_jobs} jobs of {plan.scale_sleep_ms} ms, {n} executor replica(s)")
                r = await end_to_end(
                    ctx, f"scale-{n}", port, sink, make(plan.scale_jobs), rate=None, watch=system.watch()
                )
                out[f"replicas_{n}"] = r
                log(f"scale: {n} replica(s): {r['jobs_per_s']:.1f} jobs/s, lost {r['lost']}")
            one, two = out["replicas_1"]["jobs_per_s"], out["replicas_2"]["jobs_per_s"]
            out["speedup"] = two / one if one else None
        if fanout_events:
            log(f"fan-out: {fanout_events} events, each to three {plan.fanout_ms} ms agents")
            fmake = maker(port, "fanout", "project.updated", None, {"ms": plan.fanout_ms})
            r = await end_to_end(
                ctx, "fanout", port, sink, fmake(fanout_events), rate=0.5, watch=system.watch()
            )
            out["fanout"] = {"agents": fan, "agent_ms": plan.fanout_ms, **r}
        return out
    finally:
        await stop_system(ctx, system)


async def run_baseline(ctx: Ctx, plan: Plan, sink: SinkClient) -> dict[str, Any]:
    baseline.try_install("redis-server", "redis-server", log)
    why = baseline.missing()
    if why:
        return {"skipped": why}
    baseline.ensure_node_modules(log)
    b = await baseline.start(
        ctx.procs,
        ctx.root,
        secret=SECRET,
        callback_url=ctx.sink_url + "/callbacks",
        signing_secret=conveyor_sys.SIGNING_SECRET,
        concurrency=plan.executor_concurrency,
        worker=False,
    )
    out: dict[str, Any] = {"versions": b.versions, "worker_concurrency": plan.executor_concurrency}
    try:
        watch = {"redis-server": b.redis, "express-server": b.server}
        await asyncio.sleep(2)
        out["memory_idle"] = memory(watch)
        make = maker(b.port, "base", "agent.task_requested", "noop")
        probe = await closed_probe(ctx, "base-probe", b.port, make(20_000), 2)
        log(f"baseline probe {probe['rate']:.0f}/s; now {plan.duration:.0f}s at max rate")
        mx = await max_rate(ctx, "base-max", b.port, make, probe["rate"], watch)
        log(f"baseline max {mx['rate']:.0f}/s; now {plan.duration:.0f}s at {mx['rate'] / 2:.0f}/s")
        half = await open_rate(ctx, "base-half", b.port, make, mx["rate"] / 2, watch)
        out["ingest"] = {"probe": {k: probe[k] for k in ("rate", "statuses")}, "max": mx, "half": half}

        b.worker = await baseline.start_worker(ctx.procs, b.env)
        watch["node-worker"] = b.worker
        await asyncio.sleep(1)
        out["memory_idle"]["node-worker"] = memory({"node-worker": b.worker})["node-worker"]
        log("baseline: draining the ingest backlog")
        await drain_sink(sink, stall_s=5, limit_s=120)
        await end_to_end(ctx, "base-warmup", b.port, sink, make(plan.warmup_jobs), rate=None, watch=watch)
        log(f"baseline end to end: {plan.e2e_jobs} jobs")
        out["e2e_max"] = await end_to_end(
            ctx, "base-e2e-max", b.port, sink, make(plan.e2e_jobs), rate=None, watch=watch
        )
        rate = out["e2e_max"]["jobs_per_s"]
        log(f"baseline end to end: {rate:.0f} jobs/s, lost {out['e2e_max']['lost']}; now half rate")
        half_rate = ctx.e2e_rate or max(rate / 2, 10)
        n = int(min(plan.half_jobs_cap, half_rate * plan.duration))
        out["e2e_half"] = await end_to_end(
            ctx, "base-e2e-half", b.port, sink, make(n), rate=half_rate, watch=watch
        )
        out["memory_end"] = memory(watch)
        return out
    finally:
        for p in (b.worker, b.server, b.redis):
            if p is not None:
                await ctx.procs.stop(p)


def strip_private(d: Any) -> None:
    """Drop working data (keys starting with '_pairs') before the results are written."""
    if isinstance(d, dict):
        d.pop("_pairs", None)
        for v in d.values():
            strip_private(v)


def prune(work: Path) -> None:
    """Drop the bulky parts of a work directory (request files, JetStream and Redis data),
    keeping the logs."""
    for path in work.iterdir():
        if path.name != "logs":
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


async def background_load(seconds: float = 2.0) -> float:
    """Cores busy on the machine before we start anything (other users, other tests)."""
    t0, b0 = time.monotonic(), machine_busy_s()
    await asyncio.sleep(seconds)
    return round((machine_busy_s() - b0) / (time.monotonic() - t0), 2)


async def drain_sink(sink: SinkClient, *, stall_s: float, limit_s: float) -> None:
    """Wait until callbacks stop arriving (a backlog from an earlier phase has been delivered)."""
    await sink.wait_for(10**9, stall_s=stall_s, limit_s=limit_s, settle_s=0)


async def stop_system(ctx: Ctx, system: conveyor_sys.System) -> None:
    for p in reversed(list(system.services.values())):
        code = await ctx.procs.stop(p)
        if code not in (0, None):
            ctx.warnings.append(f"{p.name} exited with {code} at stop (log: {p.log})")
    await ctx.procs.stop(system.nats.proc)


# --- the run --------------------------------------------------------------------------------


def meta(plan: Plan, args: argparse.Namespace, ctx: Ctx) -> dict[str, Any]:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        loop = "asyncio (--no-uvloop)" if args.no_uvloop else "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__,
        "git": {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "nats": {
            "server": subprocess.run(
                [nats_server_binary(), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "storage": "file",
            "sync_interval": "1s (checked in /varz)",
            "gomaxprocs": procs_mod.NATS_ENV.get("GOMAXPROCS", "Go default (all cores)"),
            "env": dict(procs_mod.NATS_ENV),
        },
        "event_loop": loop,
        "log_level": ctx.log_level,
        "overrides": ctx.overrides,
        "profiled": ctx.profile,
        "driver": {
            "max_rate": f"wrk -t1 -c{ctx.connections} (lua/replay.lua)"
            if ctx.use_wrk
            else "python closed loop",
            "fixed_rate": "python open loop (bench/driver.py), latency from the scheduled send time",
            "connections": ctx.connections,
        },
    }


async def amain(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.jobs:
        plan = Plan(**{**plan.__dict__, "e2e_jobs": args.jobs})
    if args.duration:
        plan = Plan(**{**plan.__dict__, "duration": args.duration})
    if args.broker_jobs:
        plan = Plan(**{**plan.__dict__, "broker_jobs": args.broker_jobs})
    if args.broker_idle is not None:
        plan = Plan(**{**plan.__dict__, "broker_idle_s": args.broker_idle})
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        svc, _, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not (svc and key and eq):
            print(f"--set {item!r}: want SERVICE:KEY=VALUE", file=sys.stderr)
            return 2
        overrides.setdefault(svc, {})[key] = value
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    for s in args.skip.split(",") if args.skip else []:
        if s.strip() in sections:
            sections.remove(s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2

    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"conveyor-bench-{stamp}-"))
    procs = Procs(work)
    if args.no_uvloop:
        # The runner uses uvloop when it can import it: a module of that name that fails to
        # import, first on the children's path, makes every Python process here use asyncio.
        shadow = work / "no-uvloop"
        shadow.mkdir()
        (shadow / "uvloop.py").write_text('raise ImportError("uvloop disabled by --no-uvloop")\n')
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    if args.nats_procs > 0:
        procs_mod.NATS_ENV["GOMAXPROCS"] = str(args.nats_procs)
    for item in args.nats_env:
        key, _, value = item.partition("=")
        procs_mod.NATS_ENV[key] = value
    if not args.no_wrk:
        baseline.try_install("wrk", "wrk", log)
    use_wrk = wrkload.available() and not args.no_wrk
    ctx = Ctx(
        root=work,
        procs=procs,
        secret=SECRET,
        quick=args.quick,
        connections=plan.connections,
        duration=plan.duration,
        use_wrk=use_wrk,
        log=log,
        log_level=args.log_level,
        profile=[s for s in args.profile.split(",") if s],
        overrides=overrides,
        e2e_rate=args.e2e_rate,
    )
    if not use_wrk:
        ctx.warnings.append("wrk not installed (Debian package wrk): maximum rates use the Python driver")
    results: dict[str, Any] = {"meta": meta(plan, args, ctx)}
    background = await background_load()
    results["meta"]["machine"]["background_cores"] = background
    if background > 0.3:
        ctx.warnings.append(
            f"the machine was already using {background:.1f} cores before the run started: "
            "absolute numbers are low by about that share; same-run ratios still hold roughly"
        )
    log(f"{'quick' if args.quick else 'full'} run; sections {', '.join(sections)}; work dir {work}")
    t0 = time.monotonic()
    try:
        sink_port = free_port()
        sink_proc = await procs.python(
            "sink",
            "bench.sink",
            "--port",
            str(sink_port),
            "--secrets",
            conveyor_sys.SIGNING_SECRET,
            port=sink_port,
        )
        await wait_port(sink_proc, sink_port)
        ctx.sink_url = f"http://127.0.0.1:{sink_port}"
        sink = SinkClient(ctx.sink_url)
        runs = {
            "floors": lambda: floors(ctx, plan),
            "ladder": lambda: ladder(ctx, plan),
            "ingest": lambda: ingest(ctx, plan),
            "e2e": lambda: e2e(ctx, plan, sink),
            "scale": lambda: scale(
                ctx,
                plan,
                sink,
                replicas=True,
                fanout_events=plan.fanout_events if "fanout" in sections else 0,
            ),
            "fanout": lambda: scale(ctx, plan, sink, replicas=False, fanout_events=plan.fanout_events),
            "broker": lambda: brokermem.broker(
                ctx,
                sink,
                jobs=plan.broker_jobs,
                rate=plan.broker_rate,
                idle_s=plan.broker_idle_s,
                secret=SECRET,
                extra=with_overrides(ctx, {}),
            ),
            "baseline": lambda: run_baseline(ctx, plan, sink),
        }
        for name in sections:
            if name == "fanout" and "scale" in sections:
                continue  # measured in the scale section's system
            log(f"== {name}")
            try:
                results[name] = await runs[name]()
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{name} failed: {exc}")
        for holder in ("scale", "fanout"):
            if isinstance(results.get(holder), dict) and "fanout" in results[holder]:
                results["fanout"] = results[holder].pop("fanout")
    finally:
        await procs.stop_all()
        if not args.keep:
            prune(work)
    results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["warnings"] = ctx.warnings
    results["meta"]["work_dir"] = str(work)

    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stamp}.json"
    strip_private(results)
    rows = report.rows(results)
    results["summary"] = rows
    json_path.write_text(json.dumps(results, indent=1, default=str))
    print()
    print(report.table(results, rows))
    png = out_dir / f"{stamp}.png"
    try:
        report.chart(results, png)
        log(f"chart: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    except Exception as exc:
        log(f"chart failed: {exc}")
    log(f"results: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}")
    failed = [n for n in sections if isinstance(results.get(n), dict) and "error" in results[n]]
    if args.keep:
        log(f"logs and raw driver output kept in {work}")
    elif failed:
        log(f"{', '.join(failed)} failed: process logs kept in {work / 'logs'}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts and 3 s phases (about 2 minutes)")
    p.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--skip", help="comma-separated sections to leave out")
    p.add_argument("--jobs", type=int, help="end-to-end job count (default 20000, quick 3000)")
    p.add_argument(
        "--broker-jobs",
        type=int,
        help="no-op jobs kept before the broker's memory and disk are read (default 20000, quick 3000)",
    )
    p.add_argument(
        "--broker-idle", type=float, help="seconds idle before broker memory is read (default 30, quick 5)"
    )
    p.add_argument("--duration", type=float, help="seconds of each timed load phase (default 10, quick 3)")
    p.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run every Python process on asyncio's loop even if uvloop is installed",
    )
    p.add_argument("--no-wrk", action="store_true", help="use the Python driver for maximum rates too")
    p.add_argument(
        "--nats-procs",
        type=int,
        default=1,
        help="GOMAXPROCS of nats-server (default 1: one core for the broker, as Redis has; "
        "0: Go's default, every core)",
    )
    p.add_argument(
        "--nats-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra environment variable for every nats-server (repeatable), e.g. GOMEMLIMIT=100MiB",
    )
    p.add_argument(
        "--profile",
        default="",
        help="py-spy these services during the end-to-end run, e.g. "
        "receiver,executor,deliverer (numbers of a profiled run are not comparable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SERVICE:KEY=VALUE",
        help="extra setting for a service, e.g. deliverer:CALLBACK_CONCURRENCY=16 (repeatable)",
    )
    p.add_argument(
        "--log-level", default="INFO", help="LOG_LEVEL of the services (default INFO, as deployed)"
    )
    p.add_argument(
        "--e2e-rate",
        type=float,
        help="jobs/s of the end-to-end fixed-rate phases (default: half of each system's maximum); "
        "one rate for every run compares latency between commits at the same load",
    )
    p.add_argument("--out", help="directory for <timestamp>.json/.png (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, raw driver output)")
    # `make bench BENCH_ARGS="--quick --only e2e"`: the Makefile runs `python -m bench` as it is.
    args = p.parse_args([*shlex.split(os.environ.get("BENCH_ARGS", "")), *sys.argv[1:]])
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything the benchmark started has been stopped", file=sys.stderr)
        return 130
