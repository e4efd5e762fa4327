"""How a project's integration is doing: last webhook in, last callback out and its outcome,
failed callbacks in the last hour. KV ``integration`` under the project id.

Writers keep what happened in memory and merge it into the record every couple of seconds
(compare-and-set, so receivers and deliverers on many replicas can all write): a webhook or a
callback costs a dictionary update, not a KV round trip.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts.events import Message
from conveyor.shared.domain.kvmerge import MergingWriter

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


class IntegrationRecorder(MergingWriter[_Pending, IntegrationStatus]):
    what = "integration status"

    def __init__(self, kv: bus.Kv, flush_every_s: float = 2.0) -> None:
        super().__init__(kv, flush_every_s)

    def webhook(self, project: str, at: dt.datetime) -> None:
        p = self.pending(project)
        p.webhook_at = at if p.webhook_at is None else max(p.webhook_at, at)

    def callback(self, project: str, at: dt.datetime, outcome: str, status_code: int | None) -> None:
        p = self.pending(project)
        if p.callback is None or at >= p.callback[0]:
            p.callback = (at, outcome, status_code)
        if outcome != "delivered":
            minute = _minute(at)
            p.failures[minute] = p.failures.get(minute, 0) + 1

    def new_pending(self) -> _Pending:
        return _Pending()

    def fold(self, into: _Pending, more: _Pending) -> None:
        if more.webhook_at is not None:
            into.webhook_at = (
                more.webhook_at if into.webhook_at is None else max(into.webhook_at, more.webhook_at)
            )
        if more.callback is not None and (into.callback is None or more.callback[0] >= into.callback[0]):
            into.callback = more.callback
        for minute, n in more.failures.items():
            into.failures[minute] = into.failures.get(minute, 0) + n

    def decode(self, data: bytes) -> IntegrationStatus:
        return integration_decoder.decode(data)

    def empty(self, key: str) -> IntegrationStatus:
        return IntegrationStatus(project=key)

    def merged(self, current: IntegrationStatus, pending: _Pending) -> IntegrationStatus:
        return _merged(current, pending)


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
