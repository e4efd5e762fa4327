"""Deployer metrics, bound to the service's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from conveyor.shared.contracts.deploys import STEPS, TERMINAL_DEPLOYMENT_STATUSES


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deployments = Counter(
            "deployments",
            "Deployments finished, by final status.",
            ["status"],
            registry=registry,
        )
        self.step_seconds = Histogram(
            "deployment_step_duration_seconds",
            "Time one pipeline step took, by step.",
            ["step"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.in_progress = Gauge(
            "deployments_in_progress",
            "Deployments this replica is running now (holding their site's lease).",
            registry=registry,
        )
        self.waiting = Gauge(
            "deployments_waiting",
            "Deployments this replica holds while another deployment of the same site runs.",
            registry=registry,
        )
        for status in sorted(TERMINAL_DEPLOYMENT_STATUSES):
            self.deployments.labels(status)
        for step in STEPS:
            self.step_seconds.labels(step)
