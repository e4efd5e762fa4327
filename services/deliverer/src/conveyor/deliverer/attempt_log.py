"""The delivery-attempt log in KV ``deliveries`` (DeliveryLog under the job id).

One write per attempt. A first delivery does not read: it creates the key, and only when
the key exists already (a replayed dead letter keeps its history) it reads and appends.
Redeliveries read the log, because the log is also how attempts are counted: the attempts
since the last terminal entry are this round's, and a delivery paused by a circuit
breaker writes nothing, so it is not an attempt.

The record of a final outcome (delivered, skipped) does not hold its message: nothing reads
it before the result is settled. A first such record is sent as the very message
``kv.create`` sends (``kvbucket.Bucket.send_create``), and nobody waits for it: the answer
is read when it comes. JetStream's "the key exists" answer falls back to reading and
appending; any other failure, or no answer in time, is logged, as a failed background write
always was. That saves nats-py's request machinery per callback (a fresh inbox token, a
future, a wait_for timer, a JSON parse into a dataclass): about 30 us of CPU.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from typing import Any

from conveyor.shared import bus
from conveyor.shared.contracts.events import DeliveryAttempt, DeliveryLog, delivery_log_decoder, encoder

log = logging.getLogger(__name__)

TERMINAL = frozenset({"delivered", "dead_lettered", "skipped"})
# Enough to read a story of several replays; older attempts fall off the front.
MAX_ATTEMPTS_KEPT = 50

_VALID_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+\Z")  # nats-py's rule for KV keys


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
    def __init__(
        self,
        kv: bus.Kv,
        *,
        max_background: int = 1024,
        answer_timeout_s: float = 10.0,
    ) -> None:
        self.kv = kv
        self._answer_timeout_s = answer_timeout_s
        self._slots = asyncio.Semaphore(max_background)
        self._pending: set[asyncio.Task[None]] = set()
        # Records sent without waiting, until JetStream answers (or the wait times out).
        self._unanswered: set[asyncio.Future[bus.PubAck]] = set()

    async def read(self, job_id: str) -> DeliveryLog | None:
        try:
            got = await self.kv.get(job_id)
        except bus.NotFound:
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
        except bus.Conflict:
            await self.kv.put(job_id, encoder.encode(_with(await self.read(job_id), job_id, attempt)))

    async def append_later(
        self, job_id: str, attempt: DeliveryAttempt, *, known: bool, entry: DeliveryLog | None
    ) -> None:
        """Write without holding the caller: used after the final outcome, whose message can be
        settled at once. Bounded: past ``max_background`` writes in flight, the caller waits."""
        await self._slots.acquire()
        if known or not _VALID_KEY.match(job_id):
            self._spawn(self.append(job_id, attempt, known=known, entry=entry), job_id, slot=True)
            return
        data = encoder.encode(_with(None, job_id, attempt))
        try:
            answer = await self.kv.send_create(job_id, data, timeout_s=self._answer_timeout_s)
        except Exception as exc:
            self._slots.release()
            log.warning("could not record delivery attempt of %s: %s", job_id, exc)
            return
        self._unanswered.add(answer)
        answer.add_done_callback(lambda fut: self._answered(fut, job_id, attempt))

    def _answered(self, answer: asyncio.Future[bus.PubAck], job_id: str, attempt: DeliveryAttempt) -> None:
        self._unanswered.discard(answer)
        self._slots.release()
        exc = answer.exception()
        if exc is None:
            return
        if isinstance(exc, bus.Conflict):
            # A replayed dead letter (the log has its history) or a deleted key: kv.create
            # recreates a deleted key, and a key with a value is read and appended to.
            self._spawn(self.append(job_id, attempt, known=False, entry=None), job_id, slot=False)
            return
        if isinstance(exc, bus.Timeout):
            log.warning(
                "could not record delivery attempt of %s: no answer in %gs", job_id, self._answer_timeout_s
            )
        elif isinstance(exc, bus.Unavailable):
            log.warning("could not record delivery attempt of %s: no stream answered", job_id)
        else:
            log.warning("could not record delivery attempt of %s: %s", job_id, exc)

    def _spawn(self, write: Coroutine[Any, Any, None], job_id: str, *, slot: bool) -> None:
        task = asyncio.create_task(self._write(write, job_id, slot))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, write: Coroutine[Any, Any, None], job_id: str, slot: bool) -> None:
        try:
            await write
        except Exception as exc:  # the callback itself is settled; only its record is lost
            log.warning("could not record delivery attempt of %s: %s", job_id, exc)
        finally:
            if slot:
                self._slots.release()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait for background writes and for the answers of records sent (at shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._pending or self._unanswered) and loop.time() < deadline:
            if self._pending:
                await asyncio.wait(self._pending, timeout=max(0.0, deadline - loop.time()))
            else:
                await asyncio.sleep(0.01)
