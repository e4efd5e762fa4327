"""JetStream publishes whose acknowledgements come back on one reply subscription.

``js.publish`` in nats-py is a request: per call a fresh inbox token (NUID plus random bytes
from the OS), a future with a done-callback, an ``asyncio.wait_for`` timer and a JSON parse
into a dataclass; ``kv.create`` is another one. For the receiver's hot path (one event and
one job record per request) that machinery cost about as much CPU as the HTTP handling.
Here each publish gets a counter token under one inbox prefix, replies resolve the waiting
future straight from the subscription callback, one timer expires overdue waits in batches,
and the acknowledgement is decoded by msgspec.

JetStream sees the same messages as before (Nats-Msg-Id, Nats-Expected-Stream,
Nats-Expected-Last-Subject-Sequence), so what it guarantees is unchanged: a PubAck means the
message is stored, ``duplicate`` means it was seen before, and a KV create fails when the key
exists.
"""

from __future__ import annotations

import asyncio
import collections
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err: the key exists
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


class Publisher:
    """Publish to JetStream and wait for the PubAck, many in flight on one subscription."""

    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def send(self, subject: str, data: bytes, headers: dict[str, str]) -> asyncio.Future[PubAck]:
        """Hand the message to the client; the returned future ends with its PubAck, or with
        the error JetStream answered, or ``nats.errors.TimeoutError`` after the timeout."""
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = fut
        self._deadlines.append((loop.time() + self._timeout_s, token))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0] + _SWEEP_S, self._expire)
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return fut

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        return await (await self.send(subject, data, headers))

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            fut.set_exception(nats.js.errors.Error(f"unreadable PubAck: {exc}"))
            return
        if ack.error is None:
            fut.set_result(ack)
            return
        try:  # the same error types js.publish raises (ServiceUnavailableError for 503, ...)
            nats.js.errors.APIError.from_error(msgspec.structs.asdict(ack.error))
        except nats.js.errors.APIError as exc:
            fut.set_exception(exc)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, token = deadlines.popleft()
            fut = self._waiting.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_exception(nats.errors.TimeoutError())
        self._timer = loop.call_at(deadlines[0][0] + _SWEEP_S, self._expire) if deadlines else None


def is_key_exists(exc: BaseException) -> bool:
    """Whether a KV create failed because the key has a value (or a delete marker)."""
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
