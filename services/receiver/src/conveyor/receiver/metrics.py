"""Receiver metrics (http_requests_total and http_request_duration_seconds come from the runner)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

WEBHOOK_OUTCOMES = (
    "accepted",
    "duplicate",
    "ignored",
    "unauthorized",
    "bad_request",
    "invalid",
    "too_large",
    "forbidden",
    "rate_limited",
    "budget_exceeded",
    "unavailable",
)


class Children:
    """A metric's label children, looked up once: ``labels()`` takes a lock and builds a key
    on every call, which the webhook route did three times a request. Only for labels with
    few values (configured sources, streams, outcomes)."""

    def __init__(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhooks = Counter(
            "receiver_webhooks",
            "Webhooks answered, by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.jobs = Counter(
            "receiver_jobs_submitted",
            "POST /api/jobs answers, by agent and outcome (accepted, duplicate).",
            ["agent", "outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "receiver_rate_limited",
            "Requests refused with 429, by scope (webhook, api_key, read).",
            ["scope"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "receiver_publish_seconds",
            "Time from publish to PubAck plus KV record, by stream.",
            ["stream"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.sse_streams = Gauge(
            "receiver_sse_streams", "Server-Sent Event streams open now.", registry=registry
        )
        self.last_webhook = Gauge(
            "receiver_last_webhook_timestamp_seconds",
            "Unix time of the last accepted webhook, by source.",
            ["source"],
            registry=registry,
        )

        self.budget_refused = Counter(
            "receiver_budget_refusals",
            "Work refused with 402 because its project's budget is spent, by budget (day, month).",
            ["budget"],
            registry=registry,
        )
        self.handed_over = Counter(
            "receiver_connections_handed_over",
            "Connections the lean webhook path passed to aiohttp: they sent something other than "
            "a plain webhook POST (another route, chunked, Expect, trace context).",
            registry=registry,
        )

        self.webhook = Children(self.webhooks)  # (source, outcome)
        self.last_webhook_at = Children(self.last_webhook)  # (source,)
        self.publish_time = Children(self.publish_seconds)  # (stream,)

    def preset(self, sources: list[str]) -> None:
        """Label values known at start, so dashboards see zeros rather than gaps."""
        for source in sources:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook(source, outcome)
        for scope in ("webhook", "api_key", "read", "project", "global", "stream"):
            self.rate_limited.labels(scope)
        for budget in ("day", "month"):
            self.budget_refused.labels(budget)
