"""JetStream calls on the job path, sent as plain NATS requests.

Every job makes a few of these: the router's publish, a direct read of the job record, its
compare-and-set write, the result publish. nats-py wraps each in layers the job path does not
need (the PubAck parsed with ``json`` into a dataclass, a direct get lifted into a message
object with its timestamp parsed, name validation), which cost about a quarter of each call.
These send the same subjects and headers and raise the same nats-py errors; anything unusual
(a deleted key, a bucket without direct gets) goes through nats-py as before.
"""

from __future__ import annotations

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
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


async def publish(
    nc: Client, subject: str, payload: bytes, headers: dict[str, str], *, timeout: float = TIMEOUT_S
) -> PubAck:
    """``js.publish``: publish and await the PubAck; a JetStream error raises nats-py's error."""
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
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

    def __init__(self, kv: KeyValue, nc: Client) -> None:
        self.kv = kv
        self.nc = nc
        # The handle's own stream and subject prefix, so the subjects are the ones nats-py uses.
        self.prefix: str = kv._pre
        self.direct: bool = bool(kv._direct)
        self.get_prefix = f"$JS.API.DIRECT.GET.{kv._stream}.{kv._pre}"

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of ``key``, None when there is none."""
        if not self.direct:
            return await self._slow_get(key)
        msg = await self.nc.request(self.get_prefix + key, b"", timeout=TIMEOUT_S)
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
        ack = await publish(self.nc, self.prefix + key, value, {EXPECTED_LAST_SUBJECT_SEQ: str(last)})
        return ack.seq
