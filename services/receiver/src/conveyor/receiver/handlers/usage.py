"""GET /api/usage: what a project's LLM runs cost today and this month (UTC), per agent, and
its budgets. The totals are the ones the executors merge into KV ``usage`` about every second."""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.state import STATE
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import utcnow
from conveyor.shared.domain.tenancy import DEFAULT_PROJECT
from conveyor.shared.domain.usage import PeriodUsage, UsageTotals, budget_of, read_period, resets_at
from conveyor.shared.runtime.http import HTTPError


class PeriodView(msgspec.Struct, frozen=True, kw_only=True):
    start: str  # the UTC day (YYYY-MM-DD) or month (YYYY-MM)
    input_tokens: int
    output_tokens: int
    cost_usd: float
    agents: dict[str, UsageTotals]
    budget_usd: float | None  # None: no budget
    resets_at: dt.datetime


class UsageView(msgspec.Struct, frozen=True, kw_only=True):
    project: str
    day: PeriodView
    month: PeriodView


def _view(stored: PeriodUsage, budget: float, at: dt.datetime) -> PeriodView:
    return PeriodView(
        start=stored.start,
        input_tokens=stored.input_tokens,
        output_tokens=stored.output_tokens,
        cost_usd=round(stored.cost_usd, 6),
        agents={
            a: UsageTotals(
                input_tokens=t.input_tokens, output_tokens=t.output_tokens, cost_usd=round(t.cost_usd, 6)
            )
            for a, t in sorted(stored.agents.items())
        },
        budget_usd=budget or None,
        resets_at=resets_at(stored.period, at),
    )


async def get(request: web.Request) -> web.Response:
    """The key's project (admin and organisation keys: ``?project=``, else the default)."""
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    requested = request.query.get("project") or principal.scope.project_id or DEFAULT_PROJECT
    project = st.directory.get(requested) if subjects.is_token(requested) else None
    if project is None or not st.sees(principal, project.project_id):
        raise HTTPError(404, "project_not_found", f"no project {requested[:64]!r}", field="project")
    kv = st.bucket(subjects.KV_USAGE)
    at = utcnow()
    with st.nats_errors():
        day = await read_period(kv, project.project_id, "day", at)
        month = await read_period(kv, project.project_id, "month", at)
    return respond(
        200,
        UsageView(
            project=project.project_id,
            day=_view(day, budget_of(project, "day"), at),
            month=_view(month, budget_of(project, "month"), at),
        ),
    )
