"""Pauses of the whole machine, seen by a process that only sleeps.

``python -m bench.stalls --out F`` sleeps 2 ms at a time until it is stopped, and writes a
line to F for every wake-up that came 4 ms or more late: when it woke (``time.monotonic``,
the clock the load driver's times use) and how late. It needs almost no CPU, so a late
wake-up means no core ran it: the hypervisor ran another guest, or the kernel was busy.
A fixed-rate phase's tail that lines up with these pauses is the machine's, not the
system's under test.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

SLEEP_S = 0.002
LATE_S = SLEEP_S + 0.004  # woke 4 ms or more after it asked to


def watch(out: Path) -> None:
    with out.open("a", buffering=1) as fh:
        last = time.monotonic()
        while True:
            time.sleep(SLEEP_S)
            now = time.monotonic()
            if now - last >= LATE_S:
                fh.write(f"{now:.6f} {(now - last - SLEEP_S) * 1000:.2f}\n")
            last = now


def read(path: Path, start: float, end: float) -> dict[str, Any]:
    """The pauses that ended inside [start, end]: how many, the longest, their sum (ms)."""
    gaps: list[float] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            at, ms = line.split()
            if start <= float(at) <= end:
                gaps.append(float(ms))
    longest = round(max(gaps, default=0.0), 1)
    return {"count": len(gaps), "longest_ms": longest, "total_ms": round(sum(gaps), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    with contextlib.suppress(KeyboardInterrupt):
        watch(parser.parse_args().out)


if __name__ == "__main__":
    main()
