"""A KV bucket kept in memory through a watch: small buckets read on every request.

The watch first replays the bucket (the last value of each key), then streams changes. The
watch is an ephemeral consumer, which a NATS restart loses without telling the client, so
it is checked now and then and made again when gone (the new one replays everything, so
nothing written meanwhile is missed). Values that do not decode are logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec

from conveyor.shared.bus.kv import Kv, Watcher

log = logging.getLogger(__name__)

T = TypeVar("T")


async def keep_watching(
    kv: Kv,
    name: str,
    read: Callable[[Watcher], Awaitable[None]],
    *,
    check_every_s: float = 5.0,
) -> None:
    """Watch all of ``kv`` for ever, handing each watch to ``read``. The watch is an ephemeral
    consumer, which a NATS restart loses without telling the client: it is checked now and
    then and made again when gone (the new one replays the bucket, so nothing written
    meanwhile is missed). Runs until cancelled."""
    delay = 0.5
    while True:
        try:
            watcher = await kv.watch()
        except Exception as exc:
            log.warning("cannot watch kv %s (%s); retrying", name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, check_every_s)
            continue
        delay = 0.5
        reader = asyncio.create_task(read(watcher))
        try:
            while not reader.done():
                await asyncio.wait({reader}, timeout=check_every_s)
                if reader.done():
                    break
                if not await watcher.alive():
                    log.warning("watch of kv %s lost; watching again", name)
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            with contextlib.suppress(Exception):
                await watcher.stop()


class KvMirror(Generic[T]):
    def __init__(
        self,
        kv: Kv,
        name: str,
        decode: Callable[[bytes], T],
        *,
        on_change: Callable[[str, T | None], None] | None = None,
        check_every_s: float = 5.0,
    ) -> None:
        self.kv = kv
        self.name = name
        self.decode = decode
        self.on_change = on_change
        self.check_every_s = check_every_s
        self.values: dict[str, T] = {}
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"mirror-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loaded.wait(), timeout)
        if not self.loaded.is_set():
            log.warning("kv %s still loading after %.0fs; continuing", self.name, timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def put_local(self, key: str, value: T | None) -> None:
        """What this process just wrote, seen at once (the watch brings it again, harmlessly)."""
        self._set(key, value)

    def _set(self, key: str, value: T | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        if self.on_change is not None:
            self.on_change(key, value)

    async def _supervise(self) -> None:
        await keep_watching(self.kv, self.name, self._read, check_every_s=self.check_every_s)

    async def _read(self, watcher: Watcher) -> None:
        seen: set[str] = set()
        replaying = True
        async for entry in watcher:
            if entry is None:  # the replay is over: keys gone while we were not watching go too
                if replaying:
                    for key in [k for k in self.values if k not in seen]:
                        self._set(key, None)
                    replaying = False
                self.loaded.set()
                continue
            if replaying:
                seen.add(entry.key)
            if entry.deleted:
                self._set(entry.key, None)
                continue
            try:
                self._set(entry.key, self.decode(entry.value))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("kv %s: key %s does not decode (%s); skipped", self.name, entry.key, exc)
