"""Sampling profiles of running services with py-spy (``--profile receiver,executor``).

py-spy attaches to a PID from outside (``--nonblocking``: the target is never paused), so
the services run unmodified. It writes collapsed stacks; the report keeps, per service,
the functions with the most samples on top of the stack (self) and anywhere in the stack
(inclusive); the raw stacks stay in the work directory (``--keep``) for a flame graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Proc

_LINE = re.compile(r"\s*\(([^()]*?):\d+\)$")


@dataclass
class Running:
    service: str
    proc: Proc
    raw: Path


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


async def start(ctx: Any, services: dict[str, Proc], which: list[str], rate: int = 500) -> list[Running]:
    exe = py_spy()
    if exe is None:
        ctx.warnings.append("py-spy not installed: no profile taken")
        return []
    out: list[Running] = []
    for name in which:
        target = services.get(name)
        if target is None:
            continue  # not part of this section's system
        raw = ctx.file(f"profile-{name}.txt")
        p = await ctx.procs.start(
            f"py-spy-{name}",
            [
                exe,
                "record",
                "--pid",
                str(target.pid),
                "--rate",
                str(rate),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
        )
        out.append(Running(name, p, raw))
    await asyncio.sleep(1)  # attach before the load starts
    return out


def _frame(frame: str) -> str:
    """'f (conveyor/receiver/app.py:42)' -> 'f (conveyor/receiver/app.py)': one entry per function."""
    return _LINE.sub(lambda m: f" ({_short(m.group(1))})", frame)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


_GENERIC = ("asyncio/", "<frozen", "selectors.py", "runpy")


def _package(frame: str) -> str:
    """The library a frame belongs to: 'nats', 'aiohttp', 'conveyor/receiver', 'asyncio', ..."""
    m = re.search(r"\(([^()]*)\)$", frame)
    path = m.group(1) if m else frame
    parts = path.split("/")
    if parts[0] == "conveyor" and len(parts) > 1:
        return f"conveyor/{parts[1]}"
    if parts[0] in ("<frozen", "") or len(parts) == 1:
        return "stdlib" if not path.startswith("<frozen") else path.split()[0] + ">"
    return parts[0]


def summarize(raw: Path, top: int = 20) -> dict[str, Any]:
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkgs: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first entry names the thread
        if not frames:
            continue
        total += n
        self_[frames[-1]] += n
        pkgs[_package(frames[-1])] += n
        for f in set(frames):
            if not any(g in f for g in _GENERIC) and not f.startswith(("main (", "_run_code")):
                incl[f] += n
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [[f, pct(c)] for f, c in self_.most_common(top)],
        "inclusive": [[f, pct(c)] for f, c in incl.most_common(top)],
        "self_by_package": [[p, pct(c)] for p, c in pkgs.most_common(12)],
    }


async def stop(ctx: Any, running: list[Running]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in running:
        if r.proc.alive:
            with contextlib.suppress(ProcessLookupError):
                r.proc.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.proc.proc.wait(), 20)
        await ctx.procs.stop(r.proc)
        if r.raw.exists():
            out[r.service] = {"file": str(r.raw), **summarize(r.raw)}
        else:
            out[r.service] = {"error": r.proc.tail(5)}
    return out


def subject_family(subject: str) -> str:
    """Group a subject with its kind: ids and keys become '*', inboxes one family."""
    t = subject.split(".")
    if t[0].startswith("_INBOX"):
        return "_INBOX.> (replies)"
    if t[0] == "$JS" and len(t) > 1 and t[1] == "ACK":
        return ".".join(t[:4]) + ".> (acks)"
    if t[0] == "$JS" and len(t) > 2 and t[1] == "API":
        return ".".join(t[: 7 if t[2] == "CONSUMER" and len(t) > 3 and t[3] == "MSG" else 5])
    if t[0] == "$KV" and len(t) > 1:
        return f"$KV.{t[1]}.*"
    if t[0] in ("results", "dlq"):
        return f"{t[0]}.*"
    return subject


class SubjectCensus:
    """Counts every message on the server by subject family (a '>' subscription). It adds
    its own deliveries, so it runs only with --profile."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        self.nc: Any = None

    async def __aenter__(self) -> SubjectCensus:
        import nats

        self.nc = await nats.connect(self.url, name="bench-census")

        async def count(msg: Any) -> None:
            self.counts[subject_family(msg.subject)] += 1

        await self.nc.subscribe(">", cb=count, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.flush()
        await asyncio.sleep(0.5)
        await self.nc.close()

    def per(self, count: int, top: int = 25) -> list[list[Any]]:
        return [[s, round(c / count, 2)] for s, c in self.counts.most_common(top)] if count else []
