"""The machine-pause watcher, run as the harness runs it (``python -m bench.stalls``): a
process that is not run for a while reports the pause, and only pauses inside a phase's
window are counted."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from bench import stalls

ROOT = Path(__file__).resolve().parents[2]


async def test_a_process_kept_off_the_cpu_reports_the_pause(tmp_path: Path) -> None:
    out = tmp_path / "pauses"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.stalls", "--out", str(out), cwd=ROOT
    )
    try:
        await asyncio.sleep(0.5)  # started and sleeping
        start = time.monotonic()
        proc.send_signal(signal.SIGSTOP)  # what a hypervisor's pause looks like from inside
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        for _ in range(100):
            if out.exists() and out.read_text():
                break
            await asyncio.sleep(0.02)
        seen = stalls.read(out, start, time.monotonic() + 1)
    finally:
        proc.terminate()
        await proc.wait()
    assert seen["count"] >= 1
    assert 150 <= seen["longest_ms"] <= 2000
    # Before it, at most the machine's own short pauses (the very thing the watcher is for).
    assert stalls.read(out, 0, start - 0.001)["longest_ms"] < 150


def test_only_pauses_inside_the_window_count(tmp_path: Path) -> None:
    out = tmp_path / "pauses"
    out.write_text("10.0 5.00\n11.5 12.50\n12.0 4.25\n20.0 30.00\n")
    assert stalls.read(out, 11.0, 12.0) == {"count": 2, "longest_ms": 12.5, "total_ms": 16.8}
    assert stalls.read(tmp_path / "missing", 0, 100) == {"count": 0, "longest_ms": 0.0, "total_ms": 0.0}
