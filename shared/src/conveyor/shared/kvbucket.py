"""KV reads and writes on the job path, sent as plain NATS requests over ``JsRequests``.

Every webhook creates a job record, every job reads its record and writes it back with a
compare-and-set, every callback creates an attempt log. nats-py wraps each in layers these
paths do not need (a fresh inbox and timer per request, a direct get lifted into a message
object with its timestamp parsed, name validation), which cost about a quarter of each call.
These send the subjects and headers nats-py sends (the bucket's own prefix, so a JetStream
domain or API prefix is kept) and raise the same nats-py errors; anything unusual (a deleted
key, a bucket without direct gets) goes through nats-py as before. Keys are the caller's to
check: these do not validate them.
"""

from __future__ import annotations

import asyncio

import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from conveyor.shared.jsrequests import EXPECTED_LAST_SUBJECT_SEQUENCE, JsRequests, PubAck

# What kv.create sends: write only if the key has no value (a delete marker counts as none
# to nats-py's create, which retries over it; callers of send_create handle "exists").
_CREATE = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}


class Bucket:
    """Direct reads, creates and compare-and-set writes of one KV bucket's keys."""

    def __init__(self, kv: KeyValue, requests: JsRequests) -> None:
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
        ack = await self.requests.publish(
            self.prefix + key, value, {EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        )
        return ack.seq

    async def send_create(
        self, key: str, value: bytes, *, timeout_s: float | None = None
    ) -> asyncio.Future[PubAck]:
        """Hand a create of ``key`` to the client without waiting: the future ends with the
        PubAck (its ``seq`` is the revision), or with the error JetStream answered (for a key
        that has a value: ``is_key_exists``), or a timeout."""
        return await self.requests.send(self.prefix + key, value, _CREATE, timeout_s=timeout_s)
