"""Usage totals in KV ``usage``: several executors' recorders merging into the same records
(compare-and-set) without losing a report, what one recorder knows between merges, budgets
and their periods."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from nats.js import JetStreamContext

from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import TokenUsage
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.domain.usage import UsageRecorder, over_budget, read_period, resets_at, usd

NOW = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)


async def test_replicas_merge_every_report_into_the_day_and_month(nats_bus: bus.Bus) -> None:
    kv = (await nats_bus.declare([], [subjects.KV_USAGE]))[subjects.KV_USAGE]
    replicas = [UsageRecorder(kv) for _ in range(4)]

    async def work(recorder: UsageRecorder, n: int) -> None:
        for i in range(50):
            agent = "dev" if i % 2 else "qa"
            recorder.add(
                "p1", agent, TokenUsage(model="m", input_tokens=n, output_tokens=1, cost_usd=0.001), NOW
            )
            if i % 10 == 9:
                await recorder.flush()  # the replicas' merges interleave: compare-and-set retries

    await asyncio.gather(*(work(r, n + 1) for n, r in enumerate(replicas)))
    for period in ("day", "month"):
        stored = await read_period(kv, "p1", period, NOW)  # type: ignore[arg-type]
        assert stored.input_tokens == 50 * (1 + 2 + 3 + 4)
        assert stored.output_tokens == 200
        assert abs(stored.cost_usd - 0.2) < 1e-9
        assert stored.agents["dev"].output_tokens == stored.agents["qa"].output_tokens == 100
    assert stored.start == "2026-12"
    # What a replica knows after its merge: every replica's spend so far, and its own since.
    late = UsageRecorder(kv)
    late.add("p1", "dev", TokenUsage(cost_usd=0.05), NOW)
    assert abs(late.spent("p1", NOW)["month"] - 0.05) < 1e-9  # not merged: only its own
    await late.flush()
    assert abs(late.spent("p1", NOW)["month"] - 0.25) < 1e-9


async def test_a_report_not_written_is_kept_for_the_next_flush(
    js: JetStreamContext, nats_bus: bus.Bus
) -> None:
    kv = (await nats_bus.declare([], [subjects.KV_USAGE]))[subjects.KV_USAGE]
    recorder = UsageRecorder(kv)
    recorder.add("p2", "qa", TokenUsage(input_tokens=5, cost_usd=0.5), NOW)
    assert recorder.spent("p2", NOW) == {"day": 0.5, "month": 0.5}  # counted before it is written
    await js.delete_key_value(subjects.KV_USAGE)
    with pytest.raises(bus.BusError):
        await recorder.flush()
    kv = (await nats_bus.declare([], [subjects.KV_USAGE]))[subjects.KV_USAGE]
    recorder.kv = kv
    await recorder.flush()
    assert (await read_period(kv, "p2", "day", NOW)).input_tokens == 5


def test_budgets_their_periods_and_how_they_read() -> None:
    project = Project.default(project_id="p", budget_day_usd=1.0, budget_month_usd=10.0)
    assert over_budget(project, {"day": 0.99, "month": 5.0}, NOW) is None
    stop = over_budget(project, {"day": 1.0, "month": 5.0}, NOW)
    assert stop is not None and stop.budget == "day"
    assert stop.resets_at == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    stop = over_budget(project, {"day": 0.5, "month": 12.5}, NOW)
    assert stop is not None and stop.budget == "month"
    assert stop.message() == (
        "project p spent $12.50 of its monthly budget of $10.00; it resets at 2027-01-01T00:00:00Z"
    )
    assert resets_at("month", dt.datetime(2026, 2, 10, tzinfo=dt.UTC)) == dt.datetime(
        2026, 3, 1, tzinfo=dt.UTC
    )
    assert resets_at("day", dt.datetime(2026, 2, 28, 12, tzinfo=dt.UTC)) == dt.datetime(
        2026, 3, 1, tzinfo=dt.UTC
    )
    assert [usd(v) for v in (0.15, 0.00275, 100, 0.1 + 0.2)] == ["$0.15", "$0.00275", "$100.00", "$0.30"]
    assert over_budget(Project.default(), {"day": 1e9, "month": 1e9}, NOW) is None  # no budget
