"""Deliverer metrics, on the service's registry.

The DLQ depth gauge is ``dlq_depth_messages``, not ``dlq_messages``: every service already
registers the counter ``dlq_messages`` (exposed as ``dlq_messages_total``, dead letters
written), and a gauge of the same family name would clash in the registry and in the
OpenMetrics exposition Prometheus negotiates.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("delivered", "retry", "dead_lettered", "skipped", "paused", "already_delivered")
TEST_OUTCOMES = ("delivered", "failed", "expired")
PROGRESS_OUTCOMES = ("delivered", "failed", "dropped", "skipped")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.callbacks = Counter(
            "callbacks",
            "Callback deliveries by outcome: delivered, retry (an attempt failed, another is "
            "scheduled), dead_lettered, skipped (no callback URL), paused (circuit open, no attempt), "
            "already_delivered (a redelivery of a result the attempt log shows delivered: not sent).",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "callback_duration_seconds",
            "Time of one callback attempt, DNS to answer, by outcome.",
            ["outcome"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.dlq_depth = Gauge(
            "dlq_depth_messages",
            "Messages now in the DLQ stream (every stage), refreshed from stream info.",
            registry=registry,
        )
        self.parked = Gauge(
            "parked_results_messages",
            "Messages now in the PARKED stream: results waiting for a later attempt (an open "
            "circuit or a retry), and parked results due and not yet taken.",
            registry=registry,
        )
        self.open_circuits = Gauge(
            "callback_circuits_open",
            "Endpoints whose circuit breaker is open in this process.",
            registry=registry,
        )
        self.test_sends = Counter(
            "callback_test_sends",
            "Test events sent on request, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.progress_callbacks = Counter(
            "progress_callbacks",
            "Progress callbacks by outcome: delivered, failed (sent once, not retried), dropped "
            "(too soon after the last for the job, too many in flight, or its result already "
            "went), skipped (no callback URL, or the project does not ask for them).",
            ["outcome"],
            registry=registry,
        )
        # Children looked up once (and exported as zeros from the start).
        self.outcome = {o: self.callbacks.labels(o) for o in OUTCOMES}
        self.took = {o: self.duration.labels(o) for o in ("delivered", "retry", "dead_lettered")}
        self.test_outcome = {o: self.test_sends.labels(o) for o in TEST_OUTCOMES}
        self.progress_outcome = {o: self.progress_callbacks.labels(o) for o in PROGRESS_OUTCOMES}
