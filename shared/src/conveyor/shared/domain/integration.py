"""How a project's integration is doing: last webhook in, last callback out and its outcome,
failed callbacks in the last hour. KV ``integration`` under the project id.

Writers keep what happened in memory and merge it into the record every couple of seconds
(compare-and-set, so receivers and deliverers on many replicas can all write): a webhook or a
callback costs a dictionary update, not a KV round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts.events import Message, encoder

log = logging.getLogger(__name__)

WINDOW_MIN = 60  # failures are kept per minute for this many minutes


class IntegrationStatus(Message, frozen=True, kw_only=True):
    project: str
    last_webhook_at: dt.datetime | None = None
    last_callback_at: dt.datetime | None = None
    last_callback_outcome: str | None = None
    last_callback_status: int | None = None
    failures: dict[int, int] = {}
    """Failed callback attempts by unix minute (the last hour's)."""

    def failures_since(self, now: dt.datetime, minutes: int = WINDOW_MIN) -> int:
        first = _minute(now) - minutes + 1
        return sum(n for m, n in self.failures.items() if m >= first)


integration_decoder = msgspec.json.Decoder(IntegrationStatus)


def _minute(at: dt.datetime) -> int:
    return int(at.timestamp() // 60)


@dataclass
class _Pending:
    webhook_at: dt.datetime | None = None
    callback: tuple[dt.datetime, str, int | None] | None = None
    failures: dict[int, int] = field(default_factory=dict)


@dataclass
class IntegrationRecorder:
    kv: bus.Kv
    flush_every_s: float = 2.0
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def webhook(self, project: str, at: dt.datetime) -> None:
        p = self._pending.setdefault(project, _Pending())
        p.webhook_at = at if p.webhook_at is None else max(p.webhook_at, at)

    def callback(self, project: str, at: dt.datetime, outcome: str, status_code: int | None) -> None:
        p = self._pending.setdefault(project, _Pending())
        if p.callback is None or at >= p.callback[0]:
            p.callback = (at, outcome, status_code)
        if outcome != "delivered":
            minute = _minute(at)
            p.failures[minute] = p.failures.get(minute, 0) + 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="integration-status")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every_s)
            try:
                await self.flush()
            except Exception as exc:  # kept for the next round
                log.warning("integration status not written (%s); retrying", exc or type(exc).__name__)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        try:
            for project, p in list(pending.items()):
                await self._merge(project, p)
                del pending[project]
        finally:
            for project, p in pending.items():  # not written: merge back for the next round
                self._pending.setdefault(project, _Pending())
                self._requeue(project, p)

    def _requeue(self, project: str, p: _Pending) -> None:
        if p.webhook_at is not None:
            self.webhook(project, p.webhook_at)
        q = self._pending[project]
        if p.callback is not None and (q.callback is None or p.callback[0] >= q.callback[0]):
            q.callback = p.callback
        for minute, n in p.failures.items():
            q.failures[minute] = q.failures.get(minute, 0) + n

    async def _merge(self, project: str, p: _Pending) -> None:
        for _ in range(10):
            try:
                entry = await self.kv.get(project)
                current = integration_decoder.decode(entry.value or b"")
                revision: int | None = entry.revision
            except bus.NotFound:
                current, revision = IntegrationStatus(project=project), None
            merged = _merged(current, p)
            try:
                if revision is None:
                    await self.kv.create(project, encoder.encode(merged))
                else:
                    await self.kv.update(project, encoder.encode(merged), last=revision)
                return
            except (bus.Conflict, bus.BusError):
                continue  # another replica wrote meanwhile: read and merge again
        raise RuntimeError(f"integration status of {project}: the record kept changing")


def _merged(current: IntegrationStatus, p: _Pending) -> IntegrationStatus:
    webhook_at = current.last_webhook_at
    if p.webhook_at is not None and (webhook_at is None or p.webhook_at > webhook_at):
        webhook_at = p.webhook_at
    changes: dict[str, object] = {"last_webhook_at": webhook_at}
    if p.callback is not None and (
        current.last_callback_at is None or p.callback[0] >= current.last_callback_at
    ):
        at, outcome, status = p.callback
        changes.update(last_callback_at=at, last_callback_outcome=outcome, last_callback_status=status)
    if p.failures:
        latest = max(p.failures)
        failures = {m: n for m, n in current.failures.items() if m > latest - WINDOW_MIN}
        for minute, n in p.failures.items():
            failures[minute] = failures.get(minute, 0) + n
        changes["failures"] = failures
    return msgspec.structs.replace(current, **changes)
