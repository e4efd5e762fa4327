"""The executor's Prometheus metrics (dlq_messages_total{stage} comes from the shared consumer)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from conveyor.shared.contracts.events import TokenUsage
from conveyor.shared.domain.tenancy import DEFAULT_PROJECT

STATUSES = ("completed", "failed", "timeout", "cancelled")


class Metrics:
    def __init__(self, registry: CollectorRegistry, agents: Iterable[str]) -> None:
        self.duration = Histogram(
            "agent_execution_duration_seconds",
            "Time one attempt of an agent ran, by agent and outcome.",
            ["agent", "status"],
            registry=registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800),
        )
        self.in_progress = Gauge(
            "jobs_in_progress",
            "Agent runs in progress in this executor, by agent.",
            ["agent"],
            registry=registry,
        )
        self.retries = Counter(
            "job_retries",
            "Attempts that failed transiently and were scheduled again, by agent.",
            ["agent"],
            registry=registry,
        )
        self.routed = Counter(
            "executor_events_routed",
            "Events routed to agents, by outcome (single, fanout, unroutable).",
            ["outcome"],
            registry=registry,
        )
        self.limited = Counter(
            "executor_jobs_limited",
            "Jobs moved to their project's own queue because the project has a running limit.",
            registry=registry,
        )
        self.limited_projects = Gauge(
            "executor_limited_projects",
            "Projects whose limited queue this executor pulls from now.",
            registry=registry,
        )
        # LLM usage, per agent and per project apart (not their product: agents x projects
        # series would grow with every project that runs every agent).
        self.agent_tokens = Counter(
            "agent_llm_tokens",
            "LLM tokens used, by agent and direction (input, output).",
            ["agent", "direction"],
            registry=registry,
        )
        self.agent_cost = Counter(
            "agent_llm_cost_usd",
            "What LLM tokens cost in US dollars (PRICES), by agent.",
            ["agent"],
            registry=registry,
        )
        self.project_tokens = Counter(
            "project_llm_tokens",
            "LLM tokens used, by project and direction (input, output).",
            ["project", "direction"],
            registry=registry,
        )
        self.project_cost = Counter(
            "project_llm_cost_usd",
            "What LLM tokens cost in US dollars (PRICES), by project.",
            ["project"],
            registry=registry,
        )
        self.budget_stops = Counter(
            "jobs_stopped_at_budget",
            "Jobs ended because their project's budget was spent, by budget (day, month).",
            ["budget"],
            registry=registry,
        )
        # Children looked up once: labels() on every job shows in a no-op job's profile.
        self.running = {a: self.in_progress.labels(a) for a in agents}
        self.retried = {a: self.retries.labels(a) for a in agents}
        self.took = {(a, s): self.duration.labels(a, s) for a in self.running for s in STATUSES}
        for outcome in ("single", "fanout", "unroutable"):
            self.routed.labels(outcome)
        # Zeros from the start, so the budget and spend alerts have series to read.
        for budget in ("day", "month"):
            self.budget_stops.labels(budget)
        self.project_cost.labels(DEFAULT_PROJECT)

    def count_usage(self, project: str, agent: str, usage: TokenUsage) -> None:
        self.agent_tokens.labels(agent, "input").inc(usage.input_tokens)
        self.agent_tokens.labels(agent, "output").inc(usage.output_tokens)
        self.agent_cost.labels(agent).inc(usage.cost_usd)
        self.project_tokens.labels(project, "input").inc(usage.input_tokens)
        self.project_tokens.labels(project, "output").inc(usage.output_tokens)
        self.project_cost.labels(project).inc(usage.cost_usd)
