"""JetStream requests whose replies come back on one subscription of our own.

``js.publish`` and ``nc.request`` in nats-py cost, per call, a fresh inbox token (NUID plus
random bytes from the OS), a future with a done-callback, an ``asyncio.wait_for`` timer and,
for a publish, a JSON parse into a dataclass. On the hot paths (the receiver's event and job
record, the executor's job record and result) that machinery cost about as much CPU as the
work around it. Here each request gets a counter token under one inbox prefix, goes out
through ``wire.publish``, replies resolve the waiting future straight from the client's
read loop (``reader.deliver_directly``), one timer expires overdue waits in batches, and
PubAcks are decoded by msgspec. The runner keeps one per connection (``Runtime.requests``);
each call may set its own timeout.

Deadlines are kept in one FIFO queue per timeout value: the callers use a few fixed timeouts
(settings), and within one timeout deadlines only grow, so each wait costs an append and a
popleft. A heap cost two O(log n) steps per wait over every wait of the last timeout period
(110,000 at 11,000 webhooks/s): 3% of the receiver's CPU.

JetStream sees the same messages as before (Nats-Msg-Id, Nats-Expected-Stream,
Nats-Expected-Last-Subject-Sequence), so what it guarantees is unchanged: a PubAck means the
message is stored, ``duplicate`` means it was seen before, and a KV create or compare-and-set
fails when the key's revision is not the expected one. Errors are the bus's (errors.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from conveyor.shared.bus import reader, wire
from conveyor.shared.bus.errors import (
    WRONG_LAST_SEQUENCE,
    BusError,
    Conflict,
    Timeout,
    Unavailable,
    translate,
)

EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_SWEEP_S = 0.05  # expiry resolution: waits end at most this much after their deadline


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(PubAck)


def _ack_error(err: _ApiError, headers: dict[str, str] | None) -> BaseException:
    """The bus error for this PubAck error (Conflict: the key's revision was not the one given)."""
    if err.err_code in WRONG_LAST_SEQUENCE and headers and EXPECTED_LAST_SUBJECT_SEQUENCE in headers:
        return Conflict(err.description, code=err.code, err_code=err.err_code)
    try:  # Unavailable for 503, BadRequest for 400, ...: as nats-py reads the code
        nats.js.errors.APIError.from_error(msgspec.structs.asdict(err))
    except nats.js.errors.APIError as exc:
        return translate(exc)
    return BusError(err.description, code=err.code, err_code=err.err_code)


class JsRequests:
    """Request/reply to JetStream, many in flight on one ``<inbox>.*`` subscription."""

    def __init__(self, nc: NATS, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = ""
        self._tokens = itertools.count()
        # token -> (future, headers sent when the reply is a PubAck, else None)
        self._waiting: dict[str, tuple[asyncio.Future[Any], dict[str, str] | None]] = {}
        # timeout -> (deadline, token) in the order sent, so in deadline order
        self._deadlines: dict[float, deque[tuple[float, str]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await reader.deliver_directly(self._nc, self._prefix + "*", self._on_reply)

    async def stop(self) -> None:
        """Unsubscribe; whoever still waits gets Unavailable instead of its timeout."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        self._deadlines.clear()
        waiting, self._waiting = self._waiting, {}
        for fut, _ in waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable("connection closed"))

    async def _send(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        ack_headers: dict[str, str] | None,
        timeout_s: float | None,
    ) -> asyncio.Future[Any]:
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting[token] = (fut, ack_headers)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + timeout
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = deque()
        queue.append((deadline, token))
        if deadline + _SWEEP_S < self._timer_at:  # sooner than the sweep already planned
            self._plan(loop, deadline + _SWEEP_S)
        try:
            await wire.send(self._nc, subject, data, self._prefix + token, headers)
        except BaseException as exc:
            self._waiting.pop(token, None)
            if isinstance(exc, nats.errors.Error):
                raise translate(exc) from exc
            raise
        return fut

    def _plan(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._expire), at

    async def send(
        self, subject: str, data: bytes, headers: dict[str, str], *, timeout_s: float | None = None
    ) -> asyncio.Future[PubAck]:
        """Hand a JetStream publish to the client; the returned future ends with its PubAck, or
        with the error JetStream answered, or ``Timeout`` after the timeout.
        Two sends before awaiting either go out in one flush."""
        return await self._send(subject, data, headers, headers, timeout_s)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str], *, timeout_s: float | None = None
    ) -> PubAck:
        """``js.publish``: the PubAck, or the bus error for what JetStream answered."""
        ack: PubAck = await (await self.send(subject, data, headers, timeout_s=timeout_s))
        return ack

    async def publish_unacked(self, subject: str, data: bytes) -> None:
        """A plain publish onto a stream's subject: stored by JetStream, no acknowledgement asked
        for or waited on. For what may be lost without losing accepted work (a list entry)."""
        await wire.send(self._nc, subject, data)

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Msg:
        """``nc.request``: the reply message, or Timeout / Unavailable (no responders)."""
        msg: Msg = await (await self._send(subject, data, headers, None, timeout_s))
        return msg

    def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return
        fut, ack_headers = entry
        no_responders = not msg.data and msg.headers is not None and msg.headers.get("Status") == "503"
        if ack_headers is None:  # a plain request: the caller reads the reply itself
            if no_responders:
                fut.set_exception(Unavailable("no responders"))
            else:
                fut.set_result(msg)
            return
        if no_responders:
            fut.set_exception(Unavailable("no stream answered"))
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            fut.set_exception(BusError(f"unreadable PubAck: {exc}"))
            return
        if ack.error is None:
            fut.set_result(ack)
        else:
            fut.set_exception(_ack_error(ack.error, ack_headers))

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer, self._timer_at = None, math.inf
        waiting = self._waiting
        soonest = math.inf
        for timeout, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                entry = waiting.pop(queue.popleft()[1], None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(Timeout("no answer in time"))
            if queue:
                soonest = min(soonest, queue[0][0])
            else:
                del self._deadlines[timeout]
        if soonest < math.inf:
            self._plan(loop, soonest + _SWEEP_S)


def is_key_exists(exc: BaseException) -> bool:
    """Whether a KV create failed because the key has a value (or a delete marker)."""
    return isinstance(exc, Conflict)
