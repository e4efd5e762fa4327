"""Every process the benchmark starts: started here, tracked by PID, stopped here.

Nothing is found by name and nothing the harness did not start is ever signalled. Each
process gets a log file under the run directory; RSS and CPU come from /proc/<pid>.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conveyor.shared.testing.nats_server import nats_server_binary

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the harness dies, so nothing outlives a run
    even when the harness itself is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of one process, in MB (10^6 bytes)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024 / 1e6
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


@dataclass
class Procs:
    """The processes of one run, stopped in reverse start order."""

    root: Path
    started: list[Proc] = field(default_factory=list)

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        port: int = 0,
    ) -> Proc:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
                start_new_session=True,  # Ctrl-C at the terminal reaches the harness only
                preexec_fn=_die_with_parent,
            )
        finally:
            fh.close()
        p = Proc(name, proc, log, port)
        self.started.append(p)
        return p

    async def python(
        self, name: str, module: str, *args: str, env: dict[str, str] | None = None, port: int = 0
    ) -> Proc:
        return await self.start(name, [sys.executable, "-m", module, *args], env=env, port=port)

    async def stop(self, p: Proc, timeout: float = 30.0) -> int | None:
        """SIGTERM (services drain), then SIGKILL if it overruns."""
        if p.alive:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                await p.proc.wait()
        if p in self.started:
            self.started.remove(p)
        return p.proc.returncode

    async def stop_all(self) -> None:
        for p in reversed(list(self.started)):
            await self.stop(p)


async def wait_http(p: Proc, url: str, *, timeout: float = 30.0, ok: Sequence[int] = (200,)) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            if not p.alive:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code in ok:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name} not ready after {timeout}s at {url}:\n{p.tail()}")
            await asyncio.sleep(0.1)


async def wait_port(p: Proc, port: int, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not p.alive:
            raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{p.name} not listening on {port} after {timeout}s:\n{p.tail()}")
        await asyncio.sleep(0.1)


@dataclass
class Nats:
    proc: Proc
    url: str
    monitor: str
    sync_interval_ns: int
    store: Path | None = None
    prof: str = ""  # http://127.0.0.1:<prof_port> when started with a profiling port


async def nats_counts(n: Nats) -> dict[str, int]:
    """The server's message counters (/varz): in = published to it, out = delivered by it."""
    async with httpx.AsyncClient(timeout=5) as client:
        v = (await client.get(f"{n.monitor}/varz")).json()
    return {"in_msgs": int(v.get("in_msgs", 0)), "out_msgs": int(v.get("out_msgs", 0))}


def per_item(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) / count, 1) for k in before} if count else {}


# The environment of every nats-server the run starts (``--nats-procs``): GOMAXPROCS.
NATS_ENV: dict[str, str] = {}


async def start_nats(
    procs: Procs, name: str, store: Path, *, prof: bool = False, env: dict[str, str] | None = None
) -> Nats:
    """nats-server with JetStream file storage fsyncing every second (Redis appendfsync everysec);
    ``prof`` also opens its Go profiling endpoint (/debug/pprof) on a loopback port."""
    store.mkdir(parents=True, exist_ok=True)
    port, http = free_port(), free_port()
    prof_port = free_port() if prof else 0
    conf = procs.root / f"{name}.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'http: "127.0.0.1:{http}"\n' + (f"prof_port: {prof_port}\n" if prof_port else "") + "jetstream {\n"
        f'  store_dir: "{store}"\n'
        '  sync_interval: "1s"\n'
        "}\n"
    )
    # ``env`` is the section's; --nats-env (NATS_ENV) wins over it.
    argv = [nats_server_binary(), "-c", str(conf)]
    p = await procs.start(name, argv, port=port, env={**(env or {}), **NATS_ENV})
    monitor = f"http://127.0.0.1:{http}"
    await wait_http(p, f"{monitor}/healthz?js-enabled-only=true", timeout=20)
    async with httpx.AsyncClient(timeout=2) as client:
        varz = (await client.get(f"{monitor}/varz")).json()
    sync = int(varz.get("jetstream", {}).get("config", {}).get("sync_interval", 0))
    if sync != 1_000_000_000:
        raise RuntimeError(f"nats-server did not take sync_interval 1s (varz says {sync} ns)")
    prof_url = f"http://127.0.0.1:{prof_port}" if prof_port else ""
    return Nats(p, f"nats://127.0.0.1:{port}", monitor, sync, store, prof_url)
