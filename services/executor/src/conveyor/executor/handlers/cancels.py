"""Cancellation: a watch on KV ``job_cancels`` keeps every requested cancel in memory.

The watch first replays the bucket (one entry per key), then streams new requests, so a job
taken from the queue is checked against the set with no round trip, and a running job is
told at once. Only requests that arrive while we watch trigger action (``on_new``); the
replayed ones are there for the check before a job starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from conveyor.executor.handlers.jobstore import JobStore, Versioned
from conveyor.shared import bus
from conveyor.shared.bus import keep_watching
from conveyor.shared.contracts import lifecycle, subjects
from conveyor.shared.contracts.events import JobRecord, cancel_request_decoder, utcnow

log = logging.getLogger(__name__)

MAX_REMEMBERED = 200_000


class Cancels:
    def __init__(self, kv: bus.Kv, *, check_every_s: float = 5.0) -> None:
        self.kv = kv
        self.check_every_s = check_every_s
        self.requested: OrderedDict[str, str] = OrderedDict()
        self._on_new: Callable[[str, str], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    def reason(self, job_id: str, parent_id: str | None = None) -> str | None:
        """Why the job (or its fan-out parent) was cancelled, or None if it was not."""
        found = self.requested.get(job_id)
        if found is None and parent_id is not None:
            found = self.requested.get(parent_id)
        return found

    async def start(self, on_new: Callable[[str, str], Awaitable[None]], *, timeout: float = 10.0) -> None:
        self._on_new = on_new
        self._task = asyncio.create_task(self._supervise(), name="cancel-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), timeout)
        if not self._loaded.is_set():
            log.warning("cancel requests still loading after %.0fs; continuing", timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        await keep_watching(self.kv, subjects.KV_CANCELS, self._read, check_every_s=self.check_every_s)

    async def _read(self, watcher: bus.Watcher) -> None:
        replaying = True
        async for entry in watcher:
            if entry is None:  # the replay of what existed is over
                self._loaded.set()
                replaying = False
                continue
            job_id = entry.key
            if entry.deleted:
                self.requested.pop(job_id, None)
                continue
            try:
                reason = cancel_request_decoder.decode(entry.value or b"").reason
            except (msgspec.DecodeError, msgspec.ValidationError):
                reason = "cancelled by request"
            # New to us: arrived while we watch, or while a lost watch was being replaced.
            new = job_id not in self.requested and (self._loaded.is_set() or not replaying)
            self.requested[job_id] = reason
            self.requested.move_to_end(job_id)
            while len(self.requested) > MAX_REMEMBERED:
                self.requested.popitem(last=False)
            if new and self._on_new is not None:
                try:
                    await self._on_new(job_id, reason)
                except Exception:
                    log.exception("handling the cancel of %s failed", job_id)


class Canceller:
    """What a new cancel request does here: stop the job if it runs in this executor; end it
    "cancelled" if it is still queued; for a fan-out parent, do both for its children. Every
    replica sees every request; the compare-and-set writes make their work safe to repeat."""

    def __init__(
        self,
        store: JobStore,
        cancel_running: Callable[[str, str], bool],
        child_done: Callable[[str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.cancel_running = cancel_running
        self.child_done = child_done

    async def on_cancel(self, job_id: str, reason: str) -> None:
        if self.cancel_running(job_id, reason):
            return
        cur = await self.store.load(job_id)
        if cur.record is None or cur.terminal:
            return
        if cur.record.children:
            for child in cur.record.children:
                if not self.cancel_running(child, reason):
                    await self.cancel_queued(child, reason)
            await self.child_done(job_id)
        else:
            await self.cancel_queued(job_id, reason, cur)

    async def cancel_queued(self, job_id: str, reason: str, cur: Versioned | None = None) -> None:
        """End a job that no executor has started (a started one is stopped by its executor)."""
        now = utcnow()

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is None or r.status != "queued":
                return None
            return lifecycle.finish(r, "cancelled", now=now, error=reason)

        written, after = await self.store.advance(job_id, cur or await self.store.load(job_id), change)
        if written and after.record is not None and after.record.parent_id:
            await self.child_done(after.record.parent_id)
