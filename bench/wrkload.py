"""Maximum-rate load with wrk (closed loop): one thread, a fixed number of connections."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Procs, cpu_seconds

LUA = Path(__file__).parent / "lua" / "replay.lua"


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class WrkResult:
    requests: int
    ok: int
    rate: float  # 2xx answers per second
    errors: dict[str, int]
    latency_ms: dict[str, float]
    cpu_s: float  # wrk's own CPU time
    ceiling_rps: float | None  # requests per CPU-second of wrk: what it could drive on a free core
    connections: int
    duration_s: float
    pool: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


async def run(
    procs: Procs,
    name: str,
    url: str,
    requests_file: Path,
    *,
    duration: float,
    connections: int,
    wrap: bool = False,
    timeout_s: int = 10,
    pool: int = 0,
) -> WrkResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:.0f}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url,
    ]
    env = {"BENCH_REQUESTS": str(requests_file), "BENCH_WRAP": "1" if wrap else "0"}
    p = await procs.start(name, argv, env=env)
    cpu = 0.0
    # Sample CPU until exit: /proc/<pid> is gone once the process is reaped.
    while p.alive:
        cpu = cpu_seconds(p.pid) or cpu
        try:
            await asyncio.wait_for(p.proc.wait(), 0.2)
        except TimeoutError:
            pass
    await procs.stop(p)
    line = next((ln for ln in p.log.read_text().splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{p.tail()}")
    d = json.loads(line[len("BENCH_JSON ") :])
    errors = {k: d[k] for k in ("connect", "read", "write", "status", "timeout") if d[k]}
    ok = d["requests"] - d["status"]  # timeouts are not in "requests"
    dur = d["duration_us"] / 1e6
    return WrkResult(
        requests=d["requests"],
        ok=ok,
        rate=ok / dur,
        errors=errors,
        latency_ms={
            "p50": d["p50_us"] / 1000,
            "p90": d["p90_us"] / 1000,
            "p99": d["p99_us"] / 1000,
            "p99.9": d["p999_us"] / 1000,
            "max": d["max_us"] / 1000,
            "mean": d["mean_us"] / 1000,
        },
        cpu_s=cpu,
        ceiling_rps=d["requests"] / cpu if cpu > 0 else None,
        connections=connections,
        duration_s=dur,
        pool=pool,
    )
