"""JetStream calls on the job path, sent as plain NATS requests.

Every job makes a few of these: the router's publish, a direct read of the job record, its
compare-and-set write, the result publish. nats-py wraps each in layers the job path does not
need (the PubAck parsed with ``json`` into a dataclass, a direct get lifted into a message
object with its timestamp parsed, name validation), which cost about a quarter of each call.
These send the same subjects and headers and raise the same nats-py errors; anything unusual
(a deleted key, a bucket without direct gets) goes through nats-py as before.

The requests share one wildcard reply subscription of our own (``Requests``): nc.request
draws random bytes from the OS for each reply subject and waits under asyncio.wait_for,
about a quarter of a request's cost again; a counter and one timer handle do the same job.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

TIMEOUT_S = 5.0  # nats-py's JetStream default
EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF / ...ConstantErr


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_puback = msgspec.json.Decoder(PubAck)


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError)


class Requests:
    """Request/reply over one ``<inbox>.*`` subscription: replies find their waiter by subject."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox() + "."
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._reply)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = TIMEOUT_S,
    ) -> Msg:
        """``nc.request``: the reply, or nats-py's TimeoutError / NoRespondersError."""
        reply = f"{self._prefix}{next(self._ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self.nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(reply, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


async def publish(
    requests: Requests, subject: str, payload: bytes, headers: dict[str, str], *, timeout: float = TIMEOUT_S
) -> PubAck:
    """``js.publish``: publish and await the PubAck; a JetStream error raises nats-py's error."""
    try:
        msg = await requests.request(subject, payload, headers, timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise nats.js.errors.NoStreamResponseError from exc
    ack = _puback.decode(msg.data)
    if ack.error is not None:
        err = ack.error
        if err.err_code in WRONG_LAST_SEQUENCE and EXPECTED_LAST_SUBJECT_SEQ in headers:
            raise nats.js.errors.KeyWrongLastSequenceError(description=err.description)
        nats.js.errors.APIError.from_error(msgspec.structs.asdict(err))  # raises
    return ack


class Bucket:
    """Direct reads and compare-and-set writes of one KV bucket's keys."""

    def __init__(self, kv: KeyValue, requests: Requests) -> None:
        self.kv = kv
        self.requests = requests
        # The handle's own stream and subject prefix, so the subjects are the ones nats-py uses.
        self.prefix: str = kv._pre
        self.direct: bool = bool(kv._direct)
        self.get_prefix = f"$JS.API.DIRECT.GET.{kv._stream}.{kv._pre}"

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of ``key``, None when there is none."""
        if not self.direct:
            return await self._slow_get(key)
        msg = await self.requests.request(self.get_prefix + key, b"")
        headers = msg.headers or {}
        if not msg.data:
            status = headers.get("Status")
            if status == "404":
                return None
            if status or headers.get("KV-Operation") in (KV_DEL, KV_PURGE):
                return await self._slow_get(key)  # nats-py says what it is
        if headers.get("Nats-Subject") != self.prefix + key or "Nats-Sequence" not in headers:
            return await self._slow_get(key)
        return msg.data, int(headers["Nats-Sequence"])

    async def _slow_get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return entry.value, entry.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` if its revision is still ``last``; KeyWrongLastSequenceError if not."""
        ack = await publish(self.requests, self.prefix + key, value, {EXPECTED_LAST_SUBJECT_SEQ: str(last)})
        return ack.seq
