"""What LLM runs cost a project: totals per UTC day and month in KV ``usage``, and its budgets.

Executors add every LLM response's tokens and cost (``UsageRecorder``); receivers read the
totals to refuse new work over a budget and to answer GET /api/usage.

Why KV records merged with compare-and-set, batched, and not a stream of usage reports: the
question asked on every run of a project with a budget is "what has it spent today and this
month", and a record per (project, day) and (project, month) answers it with one direct get.
A stream would have to be summed (or folded by yet another consumer) on each read. Writers
keep what they saw in memory and merge it every ``flush_every_s`` (like
``conveyor.shared.domain.integration``), so a busy project costs one write per period per second
per executor replica, not one per response; a crash loses at most that second's reports.
Between replicas the totals are as fresh as the last merge each one made: budgets are
enforced approximately (an overshoot of what the other replicas spent in the last second or
so), which the docs say.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts.events import Message, TokenUsage, utcnow
from conveyor.shared.domain.kvmerge import MergingWriter
from conveyor.shared.domain.tenancy import Project

log = logging.getLogger(__name__)

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")
_ADJECTIVE: dict[Period, str] = {"day": "daily", "month": "monthly"}


class UsageTotals(msgspec.Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, usage: TokenUsage) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_usd += usage.cost_usd


class PeriodUsage(Message, kw_only=True):
    """KV ``usage`` under ``<project>.day.<YYYY-MM-DD>`` or ``<project>.month.<YYYY-MM>`` (UTC)."""

    project: str
    period: Period
    start: str  # the day (YYYY-MM-DD) or month (YYYY-MM) it counts
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    agents: dict[str, UsageTotals] = {}
    updated_at: dt.datetime | None = None


usage_decoder = msgspec.json.Decoder(PeriodUsage)


def period_start(period: Period, at: dt.datetime) -> str:
    at = at.astimezone(dt.UTC)
    return at.strftime("%Y-%m-%d") if period == "day" else at.strftime("%Y-%m")


def usage_key(project: str, period: Period, at: dt.datetime) -> str:
    return f"{project}.{period}.{period_start(period, at)}"


def resets_at(period: Period, at: dt.datetime) -> dt.datetime:
    """When the period containing ``at`` ends: the next UTC midnight or first of the month."""
    at = at.astimezone(dt.UTC)
    if period == "day":
        return dt.datetime(at.year, at.month, at.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def usd(value: float) -> str:
    """Dollars to the micro-dollar, at least cents: $0.15, $0.00275, $100.00."""
    whole, _, cents = f"{value:.6f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def budget_of(project: Project, period: Period) -> float:
    return project.budget_day_usd if period == "day" else project.budget_month_usd


def has_budget(project: Project | None) -> bool:
    return project is not None and (project.budget_day_usd > 0 or project.budget_month_usd > 0)


@dataclass(frozen=True)
class BudgetStop:
    """A project's budget that is spent: which one, how much, and when it starts again."""

    project: str
    budget: Period
    spent_usd: float
    limit_usd: float
    resets_at: dt.datetime

    def message(self) -> str:
        return (
            f"project {self.project} spent {usd(self.spent_usd)} of its {_ADJECTIVE[self.budget]} budget "
            f"of {usd(self.limit_usd)}; it resets at {self.resets_at.isoformat().replace('+00:00', 'Z')}"
        )

    def fields(self) -> dict[str, object]:
        return {
            "budget": self.budget,
            "spent_usd": round(self.spent_usd, 6),
            "limit_usd": self.limit_usd,
            "resets_at": self.resets_at.isoformat().replace("+00:00", "Z"),
        }


def over_budget(
    project: Project, spent: dict[Period, float], at: dt.datetime | None = None
) -> BudgetStop | None:
    """The first budget (day, then month) ``spent`` has reached, or None."""
    at = at or utcnow()
    for period in PERIODS:
        limit = budget_of(project, period)
        if limit > 0 and spent.get(period, 0.0) >= limit:
            return BudgetStop(project.project_id, period, spent[period], limit, resets_at(period, at))
    return None


async def read_period(kv: bus.Kv, project: str, period: Period, at: dt.datetime) -> PeriodUsage:
    key = usage_key(project, period, at)
    try:
        entry = await kv.get(key)
    except bus.NotFound:
        return PeriodUsage(project=project, period=period, start=period_start(period, at))
    return usage_decoder.decode(entry.value or b"")


@dataclass
class _Pending:
    totals: UsageTotals = field(default_factory=UsageTotals)
    agents: dict[str, UsageTotals] = field(default_factory=dict)


class UsageRecorder(MergingWriter[_Pending, PeriodUsage]):
    """An executor's usage reports, merged into KV every ``flush_every_s``; and what this
    replica knows each project has spent (the last merged or read totals plus what it has not
    written yet), which the running jobs' budget checks read without a round trip."""

    what = "usage"

    def __init__(self, kv: bus.Kv, flush_every_s: float = 1.0) -> None:
        super().__init__(kv, flush_every_s)
        self._known: dict[str, tuple[float, float]] = {}  # usage key -> (cost, monotonic)

    def add(self, project: str, agent: str, usage: TokenUsage, at: dt.datetime | None = None) -> None:
        at = at or utcnow()
        for period in PERIODS:
            p = self.pending(usage_key(project, period, at))
            p.totals.add(usage)
            p.agents.setdefault(agent, UsageTotals()).add(usage)

    def spent(self, project: str, at: dt.datetime | None = None) -> dict[Period, float]:
        at = at or utcnow()
        out: dict[Period, float] = {}
        for period in PERIODS:
            key = usage_key(project, period, at)
            pending = self._pending.get(key)
            out[period] = self._known.get(key, (0.0, 0.0))[0] + (pending.totals.cost_usd if pending else 0.0)
        return out

    async def prime(self, project: str, *, max_age_s: float = 1.0) -> None:
        """Read the project's totals unless read or merged within ``max_age_s``."""
        at = utcnow()
        now = time.monotonic()
        for period in PERIODS:
            key = usage_key(project, period, at)
            known = self._known.get(key)
            if known is not None and now - known[1] < max_age_s:
                continue
            stored = await read_period(self.kv, project, period, at)
            self._known[key] = (stored.cost_usd, time.monotonic())

    async def flush(self) -> None:
        await super().flush()
        if len(self._known) > 10_000:  # old periods and projects gone quiet
            self._known.clear()

    def new_pending(self) -> _Pending:
        return _Pending()

    def fold(self, into: _Pending, more: _Pending) -> None:
        _fold(into.totals, more.totals)
        for agent, t in more.agents.items():
            _fold(into.agents.setdefault(agent, UsageTotals()), t)

    def decode(self, data: bytes) -> PeriodUsage:
        return usage_decoder.decode(data)

    def empty(self, key: str) -> PeriodUsage:
        project, period, start = key.split(".", 2)
        return PeriodUsage(project=project, period=period, start=start)  # type: ignore[arg-type]

    def merged(self, current: PeriodUsage, pending: _Pending) -> PeriodUsage:
        agents = {a: UsageTotals(**msgspec.structs.asdict(t)) for a, t in current.agents.items()}
        for agent, t in pending.agents.items():
            _fold(agents.setdefault(agent, UsageTotals()), t)
        return msgspec.structs.replace(
            current,
            input_tokens=current.input_tokens + pending.totals.input_tokens,
            output_tokens=current.output_tokens + pending.totals.output_tokens,
            cost_usd=current.cost_usd + pending.totals.cost_usd,
            agents=agents,
            updated_at=utcnow(),
        )

    def written(self, key: str, record: PeriodUsage) -> None:
        self._known[key] = (record.cost_usd, time.monotonic())


def _fold(into: UsageTotals, more: UsageTotals) -> None:
    into.input_tokens += more.input_tokens
    into.output_tokens += more.output_tokens
    into.cost_usd += more.cost_usd
