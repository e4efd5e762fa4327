"""Changes kept in memory per key and merged into a KV record every few seconds with
compare-and-set, so every replica of a service can write the same records and a change costs
a dictionary update, not a KV round trip. Integration status and LLM usage are written so.

A flush that fails keeps what it did not write for the next one; ``stop()`` flushes once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Generic, TypeVar

from conveyor.shared import bus
from conveyor.shared.contracts.events import encoder

log = logging.getLogger(__name__)

P = TypeVar("P")  # what is waiting to be written for one key
R = TypeVar("R")  # the record stored under it

ATTEMPTS = 20  # compare-and-set rounds before a key's merge gives up until the next flush


class MergingWriter(Generic[P, R]):
    """What a writer defines: a new pending value, how two fold, the stored record (decoded,
    or the empty one) and the record with a pending value merged in."""

    what = "records"  # for the log

    def __init__(self, kv: bus.Kv, flush_every_s: float) -> None:
        self.kv = kv
        self.flush_every_s = flush_every_s
        self._pending: dict[str, P] = {}
        self._task: asyncio.Task[None] | None = None

    def new_pending(self) -> P:
        raise NotImplementedError

    def fold(self, into: P, more: P) -> None:
        raise NotImplementedError

    def decode(self, data: bytes) -> R:
        raise NotImplementedError

    def empty(self, key: str) -> R:
        raise NotImplementedError

    def merged(self, current: R, pending: P) -> R:
        raise NotImplementedError

    def written(self, key: str, record: R) -> None:
        """Called with each record once it is stored."""

    def pending(self, key: str) -> P:
        found = self._pending.get(key)
        if found is None:
            found = self._pending[key] = self.new_pending()
        return found

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"merge-{self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every_s)
            try:
                await self.flush()
            except Exception as exc:  # kept for the next round
                log.warning("%s not written (%s); retrying", self.what, exc or type(exc).__name__)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        try:
            for key, p in list(pending.items()):
                await self._merge(key, p)
                del pending[key]
        finally:
            for key, p in pending.items():  # not written: back for the next round
                self.fold(self.pending(key), p)

    async def _merge(self, key: str, p: P) -> None:
        for n in range(ATTEMPTS):
            entry = await self.kv.lookup(key)
            current = self.decode(entry.value) if entry is not None and entry.value else self.empty(key)
            record = self.merged(current, p)
            try:
                if entry is None:
                    await self.kv.create(key, encoder.encode(record))
                else:
                    await self.kv.update(key, encoder.encode(record), last=entry.revision)
            except bus.Conflict:
                # Another replica wrote meanwhile: read and merge again, after a random pause
                # (replicas flush on the same beat, and would collide again at once).
                await asyncio.sleep(random.uniform(0, 0.002 * (n + 1)))
                continue
            self.written(key, record)
            return
        raise RuntimeError(f"{self.what} {key}: the record kept changing")
