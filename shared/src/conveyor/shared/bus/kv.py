"""KV buckets: the one way to read and write a key, with the job path's fast paths inside.

Every webhook creates a job record, every job reads its record and writes it back with a
compare-and-set, every callback creates an attempt log. nats-py wraps each in layers these
paths do not need (a fresh inbox and timer per request, a direct get lifted into a message
object with its timestamp parsed, name validation), which cost about a quarter of each call.
With the fast paths on (fastpaths.py), :class:`Kv` sends gets, compare-and-set updates and
hot creates as plain requests over ``JsRequests``, with the subjects and headers nats-py
sends (the bucket's own prefix, so a JetStream domain or API prefix is kept); anything
unusual (a deleted key, a bucket without direct gets) and everything else goes through
nats-py. Keys are the caller's to check: the fast paths do not validate them. Errors are
the bus's (errors.py): NotFound, Conflict, Timeout, Unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple

import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from conveyor.shared.bus import fastpaths
from conveyor.shared.bus.errors import NotFound, mapped
from conveyor.shared.bus.jsrequests import EXPECTED_LAST_SUBJECT_SEQUENCE, JsRequests, PubAck

# What kv.create sends: write only if the key has no value (a delete marker counts as none
# to nats-py's create, which retries over it; callers of send_create handle Conflict).
_CREATE = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
_DELETES = (KV_DEL, KV_PURGE)


class Entry(NamedTuple):
    """One value of a key. ``deleted``: a delete or purge marker (in a watch only)."""

    key: str
    value: bytes
    revision: int
    deleted: bool = False


class Kv:
    """One KV bucket: get, create, compare-and-set update, put, delete, keys, watch."""

    def __init__(self, kv: KeyValue, requests: JsRequests) -> None:
        self._kv = kv
        self._requests = requests
        self.name: str = kv._name
        # The handle's own stream and subject prefix, so the subjects are the ones nats-py uses.
        self._prefix: str = kv._pre
        self._direct: bool = bool(kv._direct)
        self._get_prefix = f"$JS.API.DIRECT.GET.{kv._stream}.{kv._pre}"

    async def lookup(self, key: str) -> Entry | None:
        """The value of ``key``, None when there is none (or it was deleted)."""
        if not (self._direct and fastpaths.on()):
            return await self._slow_get(key)
        msg = await self._requests.request(self._get_prefix + key, b"")
        headers = msg.headers or {}
        if not msg.data:
            status = headers.get("Status")
            if status == "404":
                return None
            if status or headers.get("KV-Operation") in _DELETES:
                return await self._slow_get(key)  # nats-py says what it is
        if headers.get("Nats-Subject") != self._prefix + key or "Nats-Sequence" not in headers:
            return await self._slow_get(key)
        return Entry(key, msg.data, int(headers["Nats-Sequence"]))

    async def get(self, key: str) -> Entry:
        """The value of ``key``; NotFound when there is none (or it was deleted)."""
        entry = await self.lookup(key)
        if entry is None:
            raise NotFound(f"{self.name}: no key {key}")
        return entry

    async def _slow_get(self, key: str) -> Entry | None:
        try:
            with mapped():
                entry = await self._kv.get(key)
        except NotFound:
            return None
        return Entry(key, entry.value or b"", entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        """Write ``key`` only if it has no value (a deleted key counts as none); its revision.
        Conflict when it has one."""
        with mapped():
            return await self._kv.create(key, value)

    async def send_create(
        self, key: str, value: bytes, *, timeout_s: float | None = None
    ) -> asyncio.Future[PubAck]:
        """Hand a create of ``key`` to the client without waiting: the future ends with the
        PubAck (its ``seq`` is the revision), or Conflict (the key has a value or a delete
        marker), Timeout, Unavailable. Two sends before awaiting either go out in one flush."""
        return await self._requests.send(self._prefix + key, value, _CREATE, timeout_s=timeout_s)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` if its revision is still ``last``; the new revision. Conflict if not."""
        if fastpaths.on():
            ack = await self._requests.publish(
                self._prefix + key, value, {EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
            )
            return ack.seq
        with mapped():
            return await self._kv.update(key, value, last=last)

    async def put(self, key: str, value: bytes) -> int:
        """Write ``key`` whatever it holds (last writer wins); the new revision."""
        with mapped():
            return await self._kv.put(key, value)

    async def delete(self, key: str, *, last: int | None = None) -> None:
        """Delete ``key`` (a marker; history stays); with ``last``, only if that is still its
        revision (Conflict if not)."""
        with mapped():
            await self._kv.delete(key, last=last)

    async def purge(self, key: str) -> None:
        """Delete ``key`` and its history."""
        with mapped():
            await self._kv.purge(key)

    async def keys(self) -> list[str]:
        """Every key with a value; [] for an empty bucket."""
        try:
            with mapped():
                return list(await self._kv.keys())
        except NotFound:  # nats-py's NoKeysError
            return []

    async def watch(self, key: str = ">", *, inactive_threshold: float | None = None) -> Watcher:
        """Watch ``key`` (a NATS wildcard: ">" is the whole bucket): see :class:`Watcher`."""
        with mapped():
            watcher = await self._kv.watch(key, inactive_threshold=inactive_threshold)
        return Watcher(watcher)


class Watcher:
    """A watch: first the last value of each key, then None ("caught up"), then every change.
    ``async for entry in watcher`` or ``await watcher.next(timeout)``; ``stop()`` at the end."""

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self._watcher = watcher

    @staticmethod
    def _entry(entry: KeyValue.Entry | None) -> Entry | None:
        if entry is None:
            return None
        return Entry(entry.key, entry.value or b"", entry.revision or 0, entry.operation in _DELETES)

    async def next(self, timeout: float) -> Entry | None:
        """The next entry (None: the replay is over); Timeout when none comes in time."""
        with mapped():
            return self._entry(await self._watcher.updates(timeout=timeout))

    async def __aiter__(self) -> AsyncIterator[Entry | None]:
        async for entry in self._watcher:
            yield self._entry(entry)

    async def alive(self) -> bool:
        """Whether the server still has the watch (a NATS restart drops it without a word)."""
        try:
            await self._watcher._sub.consumer_info()
        except (Exception, nats.js.errors.Error):
            return False
        return True

    async def stop(self) -> None:
        with mapped():
            await self._watcher.stop()
