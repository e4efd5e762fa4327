"""The results table (stdout and the JSON's ``summary``) and the PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SERVICES = ("receiver", "executor", "deliverer", "deployer")
IDLE_MB, LOADED_MB = 80.0, 200.0


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not (isinstance(x, float) and math.isnan(x))


def _ms(lat: Any, *qs: str) -> str:
    if not isinstance(lat, dict) or not lat.get("n", 1):
        return "n/a"
    return " / ".join(f"{lat[q]:.1f}" if _num(lat.get(q)) else "n/a" for q in qs) + " ms"


_PAUSES = "machine pauses meanwhile (an idle sleeper woke >= 4 ms late)"


def _pauses(p: dict[str, Any]) -> str:
    if not p["count"]:
        return "none"
    return f"{p['count']}, longest {p['longest_ms']:.1f} ms, {p['total_ms']:.0f} ms in all"


def _rate(x: Any, unit: str) -> str:
    return f"{x:,.0f} {unit}" if _num(x) else "n/a"


def _phases(ph: dict[str, Any]) -> str:
    def part(p: dict[str, Any]) -> str:
        rate = p["jobs_per_s"]
        return f"{rate:,.0f} jobs/s ({p['jobs']:,} jobs)" if rate is not None else f"- ({p['jobs']:,} jobs)"

    return f"{part(ph['during_ingest'])} / {part(ph['after_ingest'])}"


def _cpu(c: Any, driver: Any = None) -> str:
    """'receiver 0.73, nats-server 0.12 | machine 1.95': where the cores went during a phase;
    with a driver's output, also what the load driver itself took of the machine."""
    if not isinstance(c, dict):
        return "n/a"
    ours = ", ".join(f"{k} {v:.2f}" for k, v in c.items() if not k.startswith("_") and v >= 0.01)
    if isinstance(driver, dict) and _num(driver.get("cpu_s")) and driver.get("elapsed_s"):
        ours += f" | load driver {driver['cpu_s'] / driver['elapsed_s']:.2f}"
    return f"{ours} | whole machine {c.get('_machine', float('nan')):.2f}"


def _per(c: Any, count: Any) -> dict[str, float]:
    """CPU microseconds per request (or job) for each process: cores x wall / count. Unlike a
    rate, this does not depend on how much of the machine others were using."""
    if not isinstance(c, dict) or not _num(count) or not count:
        return {}
    wall = c.get("_wall_s", 0)
    return {k: v * wall / count * 1e6 for k, v in c.items() if not k.startswith("_") and v * wall > 0}


def _per_text(per: dict[str, float]) -> str:
    if not per:
        return "n/a"
    parts = ", ".join(f"{k} {v:,.0f}" for k, v in per.items() if v >= 1)
    return f"{parts}; total {sum(per.values()):,.0f} us"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISS")


def rows(r: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(section: str, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        out.append(
            {"section": section, "metric": metric, "value": value, "target": target, "ok": _verdict(ok)}
        )

    def failed(section: str, key: str) -> bool:
        err = _get(r, key, "error") or _get(r, key, "skipped")
        if err:
            add(section, "(not measured)", str(err)[:100])
        return bool(err)

    floor = _get(r, "floors", "http", "rate")
    if "floors" in r and not failed("limits", "floors"):
        http = r["floors"]["http"]
        add(
            "limits",
            f"HTTP floor: bare aiohttp 202, {http['driver']} {http['connections']} conns",
            f"{_rate(floor, 'req/s')}, p50/p99 {_ms(http['latency_ms'], 'p50', 'p99')}",
        )
        bus = r["floors"]["bus"]
        add(
            "limits",
            f"Bus floor: js.publish + ack, {bus['request']['concurrency']} in flight",
            f"{_rate(bus['request']['rate'], 'msg/s')}, "
            f"ack p50/p99 {_ms(bus['request']['latency_ms'], 'p50', 'p99')}",
        )
        add(
            "limits",
            f"Bus floor: js.publish_async, window {bus['async']['window']}",
            _rate(bus["async"]["rate"], "msg/s"),
        )
        if _num(http.get("ceiling_rps")):
            add(
                "limits",
                f"Driver ceiling: {http['driver']} (requests per CPU-second)",
                f"{_rate(http['ceiling_rps'], 'req/s')} = {http['ceiling_rps'] / floor:.1f}x the HTTP floor",
            )
        py = r["floors"]["python_driver"]
        if _num(py.get("ceiling_rps")):
            add(
                "limits",
                "Driver ceiling: Python driver (requests per CPU-second)",
                f"{_rate(py['ceiling_rps'], 'req/s')} = {py['ceiling_rps'] / floor:.1f}x the HTTP floor",
            )

    if "ladder" in r and not failed("ingest ladder", "ladder"):
        for i, (name, x) in enumerate(r["ladder"].items()):
            per = _per(x.get("cpu_cores"), x.get("ok"))
            add(
                "ingest ladder",
                f"{i}. {name}",
                f"{_rate(x['rate'], '/s')}; CPU/request: server {per.get('server', 0):,.0f} us, "
                f"nats {per.get('nats-server', 0):,.0f} us",
            )
        rper = _per(_get(r, "ingest", "max", "cpu_cores"), _get(r, "ingest", "max", "ok"))
        if rper:
            add(
                "ingest ladder",
                "   the receiver, same load",
                f"{_rate(_get(r, 'ingest', 'max', 'rate'), '/s')}; "
                f"CPU/request: server {rper.get('receiver', 0):,.0f} us, "
                f"nats {rper.get('nats-server', 0):,.0f} us",
            )

    if "ingest" in r and not failed("ingest", "ingest"):
        mx, half = r["ingest"]["max"], r["ingest"]["half"]
        ratio = mx["rate"] / floor if _num(floor) else None
        add(
            "ingest",
            "Receiver, max rate: accepted/s",
            _rate(mx["rate"], "/s") + (f" = {ratio:.2f}x HTTP floor" if ratio else ""),
            ">= 0.5x HTTP floor",
            ratio >= 0.5 if ratio else None,
        )
        errs = mx.get("errors") or {}
        add(
            "ingest",
            "Receiver, max rate: latency p50/p99",
            _ms(mx["latency_ms"], "p50", "p99") + (f"  (errors: {errs})" if errs else ""),
        )
        p99 = _get(half, "latency_ms", "p99")
        add(
            "ingest",
            f"Receiver at half rate ({half['rate_target']:,.0f}/s): p50/p99/p99.9",
            _ms(half["latency_ms"], "p50", "p99", "p99.9"),
            "p99 <= 10 ms",
            p99 <= 10 if _num(p99) else None,
        )
        add("ingest", "  of which driver lag p50/p99 (scheduled -> sent)", _ms(half["lag_ms"], "p50", "p99"))
        if half.get("worst_seconds"):
            add(
                "ingest",
                "  worst seconds at half rate (p99)",
                ", ".join(f"s{w['second']}: {w['p99']:g} ms" for w in half["worst_seconds"]),
            )
        if half.get("machine_pauses"):
            add("ingest", "  " + _PAUSES, _pauses(half["machine_pauses"]))
        add("ingest", "  cores used at max rate", _cpu(mx.get("cpu_cores")))
        per = _per(mx.get("cpu_cores"), mx.get("ok"))
        fper = _per(_get(r, "floors", "http", "cpu_cores"), _get(r, "floors", "http", "ok"))
        eff = (
            f"; bare aiohttp {fper['bare-aiohttp']:,.0f} us = {fper['bare-aiohttp'] / per['receiver']:.2f}x"
            if "bare-aiohttp" in fper and per.get("receiver")
            else ""
        )
        add("ingest", "  CPU per accepted webhook at max rate", _per_text(per) + eff)
        if mx.get("nats_msgs_per_request"):
            m = mx["nats_msgs_per_request"]
            add(
                "ingest",
                "  NATS messages per webhook (server in / out)",
                f"{m['in_msgs']:g} / {m['out_msgs']:g}",
            )
        add("ingest", "  cores used at half rate", _cpu(half.get("cpu_cores"), half))
        bad = {k: v for k, v in half["statuses"].items() if not k.startswith("2")}
        if bad:
            add("ingest", "Receiver at half rate: non-2xx answers", str(bad), "none", False)

    if "e2e" in r and not failed("end to end", "e2e"):
        e = r["e2e"]
        mx = e.get("max") or {}
        if mx:
            jps = mx.get("jobs_per_s")
            add(
                "end to end",
                f"No-op jobs/s, steady window ({mx['sent']:,} webhooks, CONCURRENCY "
                f"{e['executor_concurrency']})",
                _rate(jps, "jobs/s"),
                ">= 3,000 jobs/s",
                jps >= 3000 if _num(jps) else None,
            )
            add(
                "end to end",
                "Callbacks lost / duplicated",
                f"{mx['lost']} / {mx['duplicates']}"
                + (f" (rejected at ingest: {mx['rejected']})" if mx["rejected"] else ""),
                "0 lost",
                mx["lost"] == 0 and mx["rejected"] == 0,
            )
            if ph := mx.get("phases"):
                add("end to end", "  while webhooks go in / after the last one", _phases(ph))
            add("end to end", "Webhook -> callback at max rate: p50/p99", _ms(mx["latency_ms"], "p50", "p99"))
            add("end to end", "  cores used at max rate", _cpu(mx.get("cpu_cores")))
            add(
                "end to end",
                "  CPU per job, by process",
                _per_text(_per(mx.get("cpu_cores"), mx.get("delivered"))),
            )
            if mx.get("nats_msgs_per_job"):
                m = mx["nats_msgs_per_job"]
                add(
                    "end to end",
                    "  NATS messages per job (server in / out)",
                    f"{m['in_msgs']:g} / {m['out_msgs']:g}",
                )
            if mx.get("backlog"):
                add(
                    "end to end",
                    "  backlog peak (in flight while waiting)",
                    ", ".join(
                        f"{name} {b['peak_pending']:,} ({b['in_flight_mean']:g})"
                        for name, b in mx["backlog"].items()
                    ),
                )
        half = e.get("half") or {}
        if half:
            p50 = _get(half, "latency_ms", "p50")
            add(
                "end to end",
                f"Webhook -> callback at half rate ({half['driver']['rate_target']:,.0f}/s): p50/p99",
                _ms(half["latency_ms"], "p50", "p99") + (f", lost {half['lost']}" if half["lost"] else ""),
                "p50 <= 20 ms",
                p50 <= 20 if _num(p50) else None,
            )
            st = half.get("stages_ms") or {}
            if st:
                names = {
                    "receiver": "accept",
                    "to_start": "queued",
                    "agent": "agent",
                    "to_callback": "deliver",
                }
                add(
                    "end to end",
                    "  where it goes, p50 / p99 (from job records)",
                    ", ".join(f"{names[k]} {_ms(v, 'p50', 'p99')[:-3]}" for k, v in st.items() if v.get("n"))
                    + " ms",
                )

    if "scale" in r and not failed("scale", "scale"):
        s = r["scale"]
        for n in (1, 2):
            x = s.get(f"replicas_{n}")
            if x:
                add(
                    "scale",
                    f"{s['sleep_ms']} ms agents, {n} executor replica(s), CONCURRENCY "
                    f"{s['concurrency_per_replica']} each",
                    _rate(x["jobs_per_s"], "jobs/s")
                    + f" (bound {n * s['bound_per_replica']:.0f}), lost {x['lost']}",
                )
        sp = s.get("speedup")
        add(
            "scale",
            "Speed-up 1 -> 2 replicas",
            f"{sp:.2f}x" if _num(sp) else "n/a",
            ">= 1.8x",
            sp >= 1.8 if _num(sp) else None,
        )

    if "fanout" in r and not failed("fan-out", "fanout"):
        f = r["fanout"]
        lat = f.get("latency_ms") or {}
        p50 = lat.get("p50")
        secs = f"{p50 / 1000:.2f} s (max {lat['max'] / 1000:.2f} s)" if _num(p50) else "n/a"
        add(
            "fan-out",
            f"Event -> 3 agents x {f['agent_ms'] / 1000:g} s -> callback, p50 of {f['sent']}",
            secs
            + f", callbacks {f['delivered']}/{f['accepted']}"
            + (f", +{f['unexpected']} child" if f.get("unexpected") else ""),
            "about 1 s, not 3 s",
            p50 < 2000 if _num(p50) else None,
        )

    if "e2e" in r and "memory_idle" in r["e2e"]:
        idle, end = r["e2e"]["memory_idle"], r["e2e"].get("memory_end", {})
        for name in (*SERVICES, "nats-server"):
            if name not in idle:
                continue
            i, e_ = idle[name].get("VmRSS"), _get(end, name, "VmRSS")
            peak = _get(end, name, "VmHWM")
            is_svc = name in SERVICES
            ok = (i <= IDLE_MB and (e_ is None or e_ <= LOADED_MB)) if is_svc and _num(i) else None
            add(
                "memory",
                f"RSS {name}: idle / end of load (peak)",
                f"{i:.0f} / {e_:.0f} MB ({peak:.0f})" if _num(e_) else f"{i:.0f} MB idle",
                "<= 80 / <= 200 MB" if is_svc else "",
                ok,
            )

    if "broker" in r and not failed("broker", "broker"):
        b = r["broker"]
        idle, per, empty = b["idle"], b["per_job"], b["empty"]
        n = b["delivered"]
        add(
            "broker",
            f"nats-server after {n:,} no-op jobs kept, {b['idle_s']:g} s idle, "
            f"GOMEMLIMIT {b.get('gomemlimit', 'off')}: RSS (empty) / disk",
            f"{idle['rss_mb']:.0f} MB ({empty['rss_mb']:.0f}) / {idle['disk_mb']:.0f} MB"
            + (f"; lost {b['lost']}" if b.get("lost") else ""),
            "<= 150 MB at 100,000 jobs",
            idle["rss_mb"] <= 150 if n >= 100_000 else None,
        )
        add(
            "broker",
            "per retained job: RSS / Go heap / disk / stream bytes / subjects",
            f"{per['rss_kb']:.2f} / {per['heap_kb']:.2f} / {per['disk_kb']:.2f} / {per['stream_kb']:.2f} KB"
            f" / {per['subjects']:.1f}"
            # Per-job figures of a small run are mostly the server's fixed buffers: not projected.
            + ("" if n >= 100_000 else "; the target is read at 100,000 (make bench-broker)"),
        )
        if _num(b.get("nats_cpu_s")):
            # A tight GOMEMLIMIT is paid for in collections: shown next to the memory it saves.
            add(
                "broker",
                "nats-server during the load: CPU per job / Go collections by the reading",
                f"{b['nats_cpu_s'] / max(n, 1) * 1e6:,.0f} us / {_get(b, 'heap', 'memstats_mb', 'NumGC')}",
            )

    if "baseline" in r and not failed("baseline", "baseline"):
        b = r["baseline"]
        v = b.get("versions", {})
        add(
            "baseline",
            "Express + BullMQ + Node worker, Redis AOF everysec",
            f"node {v.get('node')}, express {v.get('express')}, bullmq {v.get('bullmq')}, "
            f"redis {v.get('redis')}",
        )
        bmx = _get(b, "ingest", "max", "rate")
        cmx = _get(r, "ingest", "max", "rate")
        add(
            "baseline",
            "Express ingest, max rate: accepted/s",
            _rate(bmx, "/s") + (f"; Conveyor/baseline = {cmx / bmx:.2f}x" if _num(cmx) and _num(bmx) else ""),
        )
        add("baseline", "  cores used at max ingest rate", _cpu(_get(b, "ingest", "max", "cpu_cores")))
        add(
            "baseline",
            "  CPU per accepted webhook",
            _per_text(_per(_get(b, "ingest", "max", "cpu_cores"), _get(b, "ingest", "max", "ok"))),
        )
        bh = _get(b, "ingest", "half")
        if bh:
            add(
                "baseline",
                f"Express at half rate ({bh['rate_target']:,.0f}/s): p50/p99/p99.9",
                _ms(bh["latency_ms"], "p50", "p99", "p99.9"),
            )
            if bh.get("machine_pauses"):
                add("baseline", "  " + _PAUSES, _pauses(bh["machine_pauses"]))
        bj = _get(b, "e2e_max", "jobs_per_s")
        cj = _get(r, "e2e", "max", "jobs_per_s")
        if b.get("e2e_max"):
            add(
                "baseline",
                "Baseline end to end: jobs/s, lost/dup",
                _rate(bj, "jobs/s")
                + f", {b['e2e_max']['lost']}/{b['e2e_max']['duplicates']}"
                + (f"; Conveyor/baseline = {cj / bj:.2f}x" if _num(cj) and _num(bj) else ""),
            )
            if ph := b["e2e_max"].get("phases"):
                add("baseline", "  while webhooks go in / after the last one", _phases(ph))
            add("baseline", "  cores used end to end", _cpu(b["e2e_max"].get("cpu_cores")))
            add(
                "baseline",
                "  CPU per job, by process",
                _per_text(_per(b["e2e_max"].get("cpu_cores"), b["e2e_max"].get("delivered"))),
            )
        if b.get("e2e_half"):
            add(
                "baseline",
                f"Baseline webhook -> callback at half rate "
                f"({b['e2e_half']['driver']['rate_target']:,.0f}/s): p50/p99",
                _ms(b["e2e_half"]["latency_ms"], "p50", "p99"),
            )
        bi, be = b.get("memory_idle", {}), b.get("memory_end", {})
        for name in ("express-server", "node-worker", "redis-server"):
            if name in be or name in bi:
                i = _get(bi, name, "VmRSS")
                e_ = _get(be, name, "VmRSS")
                add(
                    "baseline",
                    f"RSS {name}: idle / end of load",
                    f"{i:.0f} / {e_:.0f} MB" if _num(i) and _num(e_) else f"{e_ or i:.0f} MB",
                )
        ce = _get(r, "e2e", "memory_end") or {}
        conv = sum(_get(ce, n, "VmRSS") or 0 for n in ("receiver", "executor", "deliverer", "nats-server"))
        base = sum(_get(be, n, "VmRSS") or 0 for n in ("express-server", "node-worker", "redis-server"))
        if conv and base:
            add(
                "baseline",
                "RSS after load, whole pipeline: Conveyor (3 services + nats) / baseline",
                f"{conv:.0f} / {base:.0f} MB = {conv / base:.2f}x",
            )
    return out


def table(r: dict[str, Any], rs: list[dict[str, str]]) -> str:
    m = r.get("meta", {})
    head = (
        f"Conveyor benchmark ({m.get('mode')}, {m.get('started_at')}, commit {_get(m, 'git', 'commit')}"
        f"{' dirty' if _get(m, 'git', 'dirty') else ''}; {_get(m, 'machine', 'cpus')} CPUs, load "
        f"{', '.join(f'{x:.1f}' for x in _get(m, 'machine', 'loadavg_start') or [])} at start, "
        f"{_get(m, 'machine', 'background_cores')} cores busy before it; "
        f"JetStream file storage, sync_interval 1s, nats-server GOMAXPROCS "
        f"{_get(m, 'nats', 'gomaxprocs') or 'Go default'}; event loop {m.get('event_loop')}; "
        f"services at LOG_LEVEL {m.get('log_level')})"
    )
    if m.get("overrides"):
        head += f"\nsettings given with --set: {m['overrides']}"
    if extra := {k: v for k, v in (_get(m, "nats", "env") or {}).items() if k != "GOMAXPROCS"}:
        head += f"\nnats-server environment given with --nats-env: {extra}"
    if m.get("profiled"):
        head += "\nprofiled run (py-spy attached): rates are lower than in a plain run"
    w_metric = max([len(x["metric"]) for x in rs] + [10])
    w_value = min(max([len(x["value"]) for x in rs] + [10]), 70)
    lines = [head, ""]
    section = None
    for x in rs:
        if x["section"] != section:
            section = x["section"]
            lines.append(f"-- {section} " + "-" * (w_metric + w_value + 20 - len(section)))
        lines.append(f"  {x['metric']:<{w_metric}}  {x['value']:<{w_value}}  {x['target']:<18} {x['ok']}")
    for w in m.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle(
        f"Conveyor benchmark, {_get(r, 'meta', 'started_at')} ({_get(r, 'meta', 'mode')} run, "
        f"{_get(r, 'meta', 'machine', 'cpus')} CPUs; JetStream file storage, sync_interval 1s, "
        f"nats-server GOMAXPROCS {_get(r, 'meta', 'nats', 'gomaxprocs') or 'Go default'}; "
        "Redis AOF everysec)",
        fontsize=11,
    )

    def bars(ax: Any, labels: list[str], values: list[Any], title: str, unit: str, colors: list[str]) -> None:
        vals = [v if _num(v) and v > 1 else 1 for v in values]
        ax.barh(labels, vals, color=colors)
        for i, v in enumerate(values):
            ax.text(max(vals[i], 1), i, f" {v:,.0f}" if _num(v) else " n/a", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks ran into each other
        ax.invert_yaxis()
        ax.margins(x=0.3)

    conv, base, ref = "#2b6cb0", "#c05621", "#a0aec0"
    bars(
        axes[0][0],
        [
            "HTTP floor (bare aiohttp)",
            "bus floor (js.publish, 64)",
            "Conveyor receiver",
            "Express + BullMQ",
            "Conveyor end to end",
            "baseline end to end",
        ],
        [
            _get(r, "floors", "http", "rate"),
            _get(r, "floors", "bus", "request", "rate"),
            _get(r, "ingest", "max", "rate"),
            _get(r, "baseline", "ingest", "max", "rate"),
            _get(r, "e2e", "max", "jobs_per_s"),
            _get(r, "baseline", "e2e_max", "jobs_per_s"),
        ],
        "Throughput at maximum rate",
        "per second (log scale)",
        [ref, ref, conv, base, conv, base],
    )

    def pct_bars(
        ax: Any, series: list[tuple[str, Any, str]], qs: list[str], title: str, target: float | None
    ) -> None:
        width = 0.8 / max(len(series), 1)
        for k, (label, lat, color) in enumerate(series):
            vals = [lat.get(q, 0) if isinstance(lat, dict) and _num(lat.get(q)) else 0 for q in qs]
            xs = [i + k * width for i in range(len(qs))]
            ax.bar(xs, vals, width, label=label, color=color)
            for x, v in zip(xs, vals, strict=True):
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(qs))], qs)
        if target:
            ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g} ms")
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    pct_bars(
        axes[0][1],
        [
            ("Conveyor receiver", _get(r, "ingest", "half", "latency_ms"), conv),
            ("Express + BullMQ", _get(r, "baseline", "ingest", "half", "latency_ms"), base),
        ],
        ["p50", "p90", "p99", "p99.9"],
        "Ingest latency at half the max rate (open loop)",
        10,
    )
    pct_bars(
        axes[0][2],
        [
            ("Conveyor", _get(r, "e2e", "half", "latency_ms"), conv),
            ("baseline", _get(r, "baseline", "e2e_half", "latency_ms"), base),
        ],
        ["p50", "p90", "p99"],
        "Webhook -> callback at half the max rate",
        20,
    )

    ax = axes[1][0]
    s = r.get("scale") or {}
    vals = [_get(s, "replicas_1", "jobs_per_s"), _get(s, "replicas_2", "jobs_per_s")]
    bound = s.get("bound_per_replica")
    ax.bar(["1 replica", "2 replicas"], [v if _num(v) else 0 for v in vals], color=conv)
    if _num(bound):
        ax.plot([-0.4, 0.4], [bound, bound], "r--", linewidth=1)
        ax.plot([0.6, 1.4], [2 * bound, 2 * bound], "r--", linewidth=1, label="concurrency bound")
        ax.legend(fontsize=8)
    for i, v in enumerate(vals):
        if _num(v):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    sp = s.get("speedup")
    ax.set_title(
        f"Scale: {s.get('sleep_ms', '?')} ms agents, speed-up {sp:.2f}x" if _num(sp) else "Scale", fontsize=10
    )
    ax.set_ylabel("jobs/s")

    ax = axes[1][1]
    idle, end = _get(r, "e2e", "memory_idle") or {}, _get(r, "e2e", "memory_end") or {}
    bidle, bend = _get(r, "baseline", "memory_idle") or {}, _get(r, "baseline", "memory_end") or {}
    names = [n for n in (*SERVICES, "nats-server") if n in idle] + [
        n for n in ("express-server", "node-worker", "redis-server") if n in bend or n in bidle
    ]
    iv = [_get(idle, n, "VmRSS") or _get(bidle, n, "VmRSS") or 0 for n in names]
    ev = [_get(end, n, "VmRSS") or _get(bend, n, "VmRSS") or 0 for n in names]
    xs = list(range(len(names)))
    ax.bar([x - 0.2 for x in xs], iv, 0.4, label="idle", color=ref)
    ax.bar(
        [x + 0.2 for x in xs],
        ev,
        0.4,
        label="end of load (orange: baseline)",
        color=[base if n in ("express-server", "node-worker", "redis-server") else conv for n in names],
    )
    ax.axhline(IDLE_MB, color="orange", linestyle="--", linewidth=1, label="80 MB (idle target)")
    ax.axhline(LOADED_MB, color="red", linestyle="--", linewidth=1, label="200 MB (loaded target)")
    ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("RSS, MB")
    ax.set_title("Memory per process", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[1][2]
    f = r.get("fanout") or {}
    lat = f.get("latency_ms") or {}
    vals = [lat.get("p50"), lat.get("max")]
    ax.bar(["p50", "max"], [v / 1000 if _num(v) else 0 for v in vals], color=conv)
    if _num(f.get("agent_ms")):
        ax.axhline(f["agent_ms"] / 1000, color="green", linestyle="--", linewidth=1, label="one agent")
        ax.axhline(
            3 * f["agent_ms"] / 1000, color="red", linestyle="--", linewidth=1, label="three in series"
        )
        ax.legend(fontsize=8)
    ax.set_ylabel("seconds, webhook -> callback")
    ax.set_title("Fan-out: one event, three agents in parallel", fontsize=10)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
