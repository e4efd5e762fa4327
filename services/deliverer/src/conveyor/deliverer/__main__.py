"""``python -m conveyor.deliverer``: run the deliverer until SIGTERM."""

from __future__ import annotations

import gc

from conveyor.deliverer.config import Settings
from conveyor.deliverer.service import SPEC
from conveyor.shared.runner import main as run

# Collect young garbage every 20,000 net allocations instead of 700. Callbacks in flight hold
# short-lived containers across many collections at the default; memory stays the same.
GC_THRESHOLDS = (20_000, 20, 20)


def main() -> None:
    # Everything imported by now (aiohttp, nats, OpenTelemetry, prometheus_client, ...) lives
    # for the whole process: move it out of the collector's sight, so a full collection walks
    # only what was made since. Together with the thresholds this took about a sixth off the
    # deliverer's CPU per callback.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    run(SPEC, Settings)


if __name__ == "__main__":
    main()
