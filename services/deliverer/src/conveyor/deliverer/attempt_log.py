"""The delivery-attempt log in KV ``deliveries`` (DeliveryLog under the job id).

One write per attempt. A first delivery does not read: it creates the key, and only when
the key exists already (a replayed dead letter keeps its history) it reads and appends.
Redeliveries read the log, because the log is also how attempts are counted: the attempts
since the last terminal entry are this round's, and a delivery paused by a circuit
breaker writes nothing, so it is not an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from conveyor.shared.events import DeliveryAttempt, DeliveryLog, delivery_log_decoder, encoder

log = logging.getLogger(__name__)

TERMINAL = frozenset({"delivered", "dead_lettered", "skipped"})
# Enough to read a story of several replays; older attempts fall off the front.
MAX_ATTEMPTS_KEPT = 50


def round_attempts(entry: DeliveryLog | None) -> int:
    """Attempts made since the last terminal entry (delivered, dead-lettered, skipped)."""
    if entry is None:
        return 0
    n = 0
    for a in reversed(entry.attempts):
        if a.outcome in TERMINAL:
            break
        n += 1
    return n


def _with(entry: DeliveryLog | None, job_id: str, attempt: DeliveryAttempt) -> DeliveryLog:
    attempts = [*(entry.attempts if entry else []), attempt][-MAX_ATTEMPTS_KEPT:]
    delivered = attempt.outcome == "delivered" or (entry is not None and entry.delivered)
    return DeliveryLog(job_id=job_id, attempts=attempts, delivered=delivered)


class AttemptLog:
    def __init__(self, kv: KeyValue, *, max_background: int = 1024) -> None:
        self.kv = kv
        self._slots = asyncio.Semaphore(max_background)
        self._pending: set[asyncio.Task[None]] = set()

    async def read(self, job_id: str) -> DeliveryLog | None:
        try:
            got = await self.kv.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return delivery_log_decoder.decode(got.value) if got.value else None

    async def append(
        self, job_id: str, attempt: DeliveryAttempt, *, known: bool, entry: DeliveryLog | None
    ) -> None:
        """Record ``attempt``. ``known``: ``entry`` is the log as read now (None: no log yet);
        otherwise the log was not read and is created, or appended to if it exists."""
        if known:
            await self.kv.put(job_id, encoder.encode(_with(entry, job_id, attempt)))
            return
        try:
            await self.kv.create(job_id, encoder.encode(_with(None, job_id, attempt)))
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.kv.put(job_id, encoder.encode(_with(await self.read(job_id), job_id, attempt)))

    async def append_later(
        self, job_id: str, attempt: DeliveryAttempt, *, known: bool, entry: DeliveryLog | None
    ) -> None:
        """Write without holding the caller: used after the final outcome, whose message can be
        settled at once. Bounded: past ``max_background`` writes in flight, the caller waits."""
        await self._slots.acquire()
        task = asyncio.create_task(
            self._write(self.append(job_id, attempt, known=known, entry=entry), job_id)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, write: Coroutine[Any, Any, None], job_id: str) -> None:
        try:
            await write
        except Exception as exc:  # the callback itself is settled; only its record is lost
            log.warning("could not record delivery attempt of %s: %s", job_id, exc)
        finally:
            self._slots.release()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait for background writes (at shutdown)."""
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), timeout)
