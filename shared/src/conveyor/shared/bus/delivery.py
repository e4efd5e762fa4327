"""One message delivered by a durable consumer, and the only way to settle it.

A handler gets a :class:`Delivery` (``subject``, ``data``, ``headers``, ``attempts``) and may
settle it itself: ``ack()``, ``nak(delay)``, ``term()``, or ``leave()`` (settle nothing: another
process owns the work now). ``in_progress()`` keeps it from being redelivered while work goes
on (``heartbeat`` sends it on a timer). What the handler left unsettled the consumer settles
when it returns or raises (consumer.py). Each settling call is sent at most once: a second
one is a no-op, so a handler and the consumer can never both answer the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

from nats.aio.msg import Msg

from conveyor.shared.bus import fastpaths, wire
from conveyor.shared.bus.errors import BadRequest, mapped

# $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, and the form with
# domain and account hash in front (nats-py's _V1_TOKEN_COUNT and _V2_TOKEN_COUNT).
_V1_TOKENS = 9
_V2_TOKENS = 12

_ACK = b""
_NAK = b"-NAK"
_WPI = b"+WPI"
_TERM = b"+TERM"


def _reply_tokens(reply: str) -> tuple[str, int, int, int]:
    """(stream, delivery count, stream sequence, stored at in ns) from a JetStream reply
    subject; ("", 1, 0, 0) for anything else (a core NATS message, as tests send)."""
    tokens = reply.split(".")
    try:
        if len(tokens) == _V1_TOKENS:
            return tokens[2], int(tokens[4]), int(tokens[5]), int(tokens[7])
        if len(tokens) >= _V2_TOKENS - 1:
            # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>...
            return tokens[4], int(tokens[6]), int(tokens[7]), int(tokens[9])
    except (ValueError, IndexError):
        pass
    return "", 1, 0, 0


class Delivery:
    """A JetStream message handed to a handler; see the module docstring."""

    __slots__ = ("_msg", "_settled", "data", "headers", "reply", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.headers: dict[str, str] | None = msg.headers
        self.reply: str = msg.reply
        self._settled = False

    @property
    def attempts(self) -> int:
        """Which delivery this is (1 for the first), read from the reply subject alone
        (nats-py's ``msg.metadata`` also builds a datetime and two dataclasses)."""
        return _reply_tokens(self.reply)[1]

    @property
    def stream(self) -> str:
        return _reply_tokens(self.reply)[0]

    @property
    def stream_seq(self) -> int:
        """The message's sequence in its stream (0 when not from a stream)."""
        return _reply_tokens(self.reply)[2]

    @property
    def timestamp(self) -> dt.datetime:
        """When the stream stored it (the epoch when not from a stream)."""
        return dt.datetime.fromtimestamp(_reply_tokens(self.reply)[3] / 1_000_000_000, dt.UTC)

    @property
    def settled(self) -> bool:
        """Whether it was acked, NAKed, terminated or left."""
        return self._settled

    def leave(self) -> None:
        """Settle nothing, and have the consumer treat it as settled: another process owns the
        work now (its in-progress acks keep the message; if it dies, JetStream redelivers)."""
        self._settled = True

    async def _answer(self, body: bytes, *, settles: bool = True) -> None:
        if self._settled:
            return
        if not self.reply:
            raise BadRequest("not a JetStream message: no reply subject to acknowledge")
        if settles:
            self._settled = True
        with mapped():
            if fastpaths.on():
                await wire.publish(self._msg._client, self.reply, body)
            else:
                await self._msg._client.publish(self.reply, body)

    async def ack(self) -> None:
        """Done: JetStream forgets it."""
        await self._answer(_ACK)

    async def nak(self, delay: float | None = None) -> None:
        """Not done: redeliver after ``delay`` seconds (at once without one)."""
        body = _NAK if not delay else b'-NAK {"delay": %d}' % int(delay * 1_000_000_000)
        await self._answer(body)

    async def term(self) -> None:
        """Never redeliver (it was dead-lettered, or is not worth another try)."""
        await self._answer(_TERM)

    async def in_progress(self) -> None:
        """Still working: restart the AckWait clock (does not settle)."""
        await self._answer(_WPI, settles=False)


@contextlib.asynccontextmanager
async def heartbeat(delivery: Delivery, every_s: float) -> AsyncIterator[None]:
    """Send in-progress acks every ``every_s`` while the block runs, so a long job is never
    redelivered while its worker is alive, and a dead worker's job comes back after AckWait."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await delivery.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
