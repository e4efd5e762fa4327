"""Rate limits whose counts live in JetStream KV (bucket ``ratelimits``), so every replica
counts against the same number. The receiver counts requests; the executor counts schedule
firings against the API key that owns the schedule (:func:`hit_key`), on the same keys.

One KV key per scope holds ``"<window start ms> <count>"``. A window opens at the first hit
after the previous one ended and lasts ``window_s``. Every change is a compare-and-set
(``kv.create`` for a new key, ``kv.update`` with the revision last seen); a conflict means
another replica counted first, so the key is re-read and the step retried. Hits on one key
that arrive while a write is in flight are counted together in the next write: one KV round
trip per batch, not per request, which keeps a busy key fast and conflicts rare.

When a window still has a large budget (at least ``PREFETCH_FROM`` left), a write also
claims a few slots ahead (1% of what is left, at most ``PREFETCH_MAX``) that this process
then hands out without a round trip. The count in KV always includes them, so the limit is
never exceeded; claimed slots a process did not use by the end of the window are simply
not used (at most 1% of a large budget per replica). Small limits are counted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.shared import bus

PREFETCH_FROM = 200
PREFETCH_MAX = 256
MINUTE = 60.0
DAY = 86_400.0


class LimiterUnavailable(Exception):
    """The count could not be read or written (NATS down, or too many conflicts)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until the window ends

    def header_lines(self) -> bytes:
        """The limit headers as HTTP/1.1 lines, in one format: the lean webhook path writes its
        answers itself (a dict and six encodes cost it 1% of a webhook)."""
        lines = _LINES % (self.limit, self.remaining, max(0, math.ceil(self.reset_s)))
        if not self.allowed:
            lines += b"Retry-After: %d\r\n" % max(1, math.ceil(self.reset_s))
        return lines

    def headers(self) -> dict[str, str]:
        """The same headers, for aiohttp's responses."""
        return dict(line.split(": ", 1) for line in self.header_lines().decode().split("\r\n")[:-1])


_LINES = b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n"


UNLIMITED = Decision(True, 0, 0, 0.0)


@dataclass(slots=True)
class _Window:
    revision: int
    start: float  # unix seconds
    count: int

    def encode(self) -> bytes:
        return f"{int(self.start * 1000)} {self.count}".encode()


@dataclass(slots=True)
class _Key:
    window_s: float
    window: _Window | None = None  # last value this process saw (None: unknown)
    reserved: int = 0  # slots of ``window`` claimed in KV and not yet handed out
    waiting: list[asyncio.Future[Decision]] = field(default_factory=list)
    busy: bool = False


class RateLimiter:
    """Counts hits per key in KV; see the module docstring for the algorithm."""

    def __init__(
        self,
        kv: bus.Kv,
        *,
        clock: Callable[[], float] = time.time,
        max_conflicts: int = 50,
        claim_ahead: bool = True,
    ) -> None:
        self._kv = kv
        self._clock = clock
        self._max_conflicts = max_conflicts
        # Off where hits are rare (schedule firings): slots claimed there would mostly go unused.
        self._prefetch_from = PREFETCH_FROM if claim_ahead else math.inf
        self._keys: dict[str, _Key] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def local(self, key: str, limit: int, window_s: float) -> Decision | None:
        """Count one hit on ``key`` when this process can decide alone (unlimited, a slot
        claimed ahead, a full window); None when KV has to be asked: then call :meth:`hit`."""
        if limit <= 0:
            return UNLIMITED
        state = self._keys.get(key)
        w = state.window if state is not None else None
        if state is None or w is None:
            return None
        now = self._clock()
        if now >= w.start + window_s:
            return None
        if state.reserved > 0:  # claimed ahead: no round trip
            state.reserved -= 1
            return Decision(True, limit, limit - w.count + state.reserved, w.start + window_s - now)
        # Counts only grow inside a window, so a full one seen here is full everywhere.
        if w.count >= limit:
            return Decision(False, limit, 0, w.start + window_s - now)
        return None

    async def hit(self, key: str, limit: int, window_s: float) -> Decision:
        """Count one hit on ``key``; ``limit`` <= 0 means unlimited."""
        if (decision := self.local(key, limit, window_s)) is not None:
            return decision
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= 20_000:
                self._prune()
            state = self._keys[key] = _Key(window_s)
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        state.waiting.append(fut)
        if not state.busy:
            state.busy = True
            task = asyncio.create_task(self._drain(key, state, limit, window_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self, key: str, state: _Key, limit: int, window_s: float) -> None:
        try:
            while state.waiting:
                batch, state.waiting = state.waiting, []
                try:
                    first, granted, window = await self._take(key, state, len(batch), limit, window_s)
                except Exception as exc:
                    err = exc if isinstance(exc, LimiterUnavailable) else LimiterUnavailable(str(exc))
                    for f in batch:
                        if not f.done():
                            f.set_exception(err)
                    continue
                reset = window.start + window_s - self._clock()
                for i, f in enumerate(batch):
                    if f.done():  # the request went away; its slot stays used
                        continue
                    if i < granted:
                        # Slots claimed ahead are still this window's to give: not subtracted.
                        f.set_result(Decision(True, limit, max(0, limit - (first + i + 1)), reset))
                    else:
                        f.set_result(Decision(False, limit, 0, reset))
        finally:
            state.busy = False
            for f in state.waiting:  # cancelled mid-write (shutdown)
                if not f.done():
                    f.set_exception(LimiterUnavailable("rate limiter stopped"))
            state.waiting.clear()

    async def _take(
        self, key: str, state: _Key, n: int, limit: int, window_s: float
    ) -> tuple[int, int, _Window]:
        """Add up to ``n`` hits (plus a prefetch); return (count before, hits granted to the
        batch, the window written). What is claimed beyond the batch goes to ``reserved``."""
        state.reserved = 0  # a new write is only needed once the reservation is spent
        for _ in range(self._max_conflicts):
            if state.window is None:
                state.window = await self._read(key)
            w = state.window
            now = self._clock()
            if w is None or now >= w.start + window_s:
                first, start = 0, now
            elif w.count >= limit:
                return w.count, 0, w
            else:
                first, start = w.count, w.start
            left = limit - first
            claim = min(left, n + (min(PREFETCH_MAX, left // 100) if left >= self._prefetch_from else 0))
            new = _Window(0, start, first + claim)
            try:
                if w is None:
                    new.revision = await self._kv.create(key, new.encode())
                else:
                    new.revision = await self._kv.update(key, new.encode(), last=w.revision)
            except bus.Conflict:
                state.window = None  # another replica counted first: read it next round
                continue
            state.window = new
            granted = min(n, claim)
            state.reserved = claim - granted
            return first, granted, new
        raise LimiterUnavailable(f"too many concurrent updates of {key}")

    async def _read(self, key: str) -> _Window | None:
        try:
            entry = await self._kv.get(key)
        except bus.NotFound:
            return None
        try:
            start_ms, count = (entry.value or b"").split()
            return _Window(entry.revision, int(start_ms) / 1000, int(count))
        except ValueError:  # unreadable: start a new window over it
            return _Window(entry.revision, 0.0, 0)

    def _prune(self) -> None:
        """Forget ended windows; if that is not enough, forget every idle key (the cache only
        saves round trips: a forgotten key is read again on its next hit)."""
        now = self._clock()
        for key, state in list(self._keys.items()):
            w = state.window
            if not state.busy and (w is None or now >= w.start + state.window_s):
                del self._keys[key]
        if len(self._keys) >= 10_000:
            for key, state in list(self._keys.items()):
                if not state.busy:
                    del self._keys[key]


async def hit_key(limiter: RateLimiter, key_id: str, per_minute: int, per_day: int) -> Decision | None:
    """Count one use of API key ``key_id`` against its per-minute and per-day limits (0 =
    unlimited); None when it has neither. Both windows are charged; the decision returned is a
    refusing one if any, else the one with fewer left."""
    if per_minute <= 0 and per_day <= 0:
        return None
    minute, day = await asyncio.gather(
        limiter.hit(f"k.{key_id}.m", per_minute, MINUTE),
        limiter.hit(f"k.{key_id}.d", per_day, DAY),
    )
    decisions = [d for d in (minute, day) if d.limit > 0]
    refused = [d for d in decisions if not d.allowed]
    return refused[0] if refused else min(decisions, key=lambda d: d.remaining)
