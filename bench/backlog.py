"""Where work waits during the end-to-end run: each durable consumer's backlog, sampled.

Twice a second it asks the server for the three consumers on the job path (router, workers,
deliverer): messages not yet delivered (``num_pending``) and delivered but not yet
acknowledged, i.e. being handled (``num_ack_pending``). The stage with the growing backlog
is the one to look at; a stage whose in-flight count sits at its concurrency while a backlog
grows is bound by that concurrency (round trips), one below it by CPU. Six JetStream API
requests a second: nothing next to the load.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

CONSUMERS = (("EVENTS", "executor-router"), ("JOBS", "executor"), ("RESULTS", "deliverer"))
EVERY_S = 0.5


@dataclass
class Backlog:
    url: str
    samples: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> (pending, in flight)
    _nc: Any = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Backlog:
        import nats

        self._nc = await nats.connect(self.url, name="bench-backlog")
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._nc.close()

    async def _sample(self) -> None:
        js = self._nc.jetstream()
        while True:
            for stream, name in CONSUMERS:
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(stream, name, timeout=1)
                    self.samples.setdefault(name, []).append((info.num_pending, info.num_ack_pending))
            await asyncio.sleep(EVERY_S)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per consumer: the largest backlog seen, and the mean number in flight while there
        was a backlog (or over all samples when there never was one)."""
        out: dict[str, dict[str, float]] = {}
        for name, rows in self.samples.items():
            busy = [f for p, f in rows if p > 0] or [f for _, f in rows]
            out[name] = {
                "peak_pending": max((p for p, _ in rows), default=0),
                "in_flight_mean": round(sum(busy) / len(busy), 1) if busy else 0.0,
                "samples": len(rows),
            }
        return out
