"""A real Prometheus (Debian's binary) scrapes the four services running as real processes
against a real nats-server, evaluates the shipped alert rules, and answers every dashboard
query."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, free_port, service_env

from .conftest import PROMETHEUS_DIR, SERVICES
from .test_grafana import dashboard_exprs

SIGNING = "whsec_b3BzLWNhbGxiYWNrLXNpZ25pbmcta2V5LTAx"

# One series each service exports from the start, beyond the runner's common ones.
OWN_SERIES = {
    "receiver": 'http_requests_total{job="receiver", route="/health/ready"}',
    "executor": 'agent_execution_duration_seconds_bucket{job="executor", le="300.0"}',
    "deliverer": 'callbacks_total{job="deliverer", outcome="delivered"}',
    "deployer": 'deployments_total{job="deployer"}',
}
# Metrics the rules and dashboard use that appear only once something happens (a first dead
# letter) or come from node-exporter, which is not part of this test.
LAZY = {"dlq_messages_total"}
_METRIC = re.compile(r"(?<![:\w])([a-z][a-z0-9_]*_(?:total|bytes|seconds|messages|progress|bucket|count))\b")


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "rules" / "conveyor.yml")],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for name, port in self.targets.items()
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    async def start(self) -> None:
        config = self.write_config()
        log = open(self.workdir / "prometheus.log", "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture
async def services(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = service_env(
        nats_server.url,
        LOVABLE_WEBHOOK_SECRET="ops-webhook-secret",
        CALLBACK_SIGNING_SECRETS=SIGNING,
        ADMIN_API_KEY="ops-admin-key",
        DATA_DIR=str(tmp_path / "deployer"),
        SHUTDOWN_GRACE_S="2",
    )
    procs = {svc: ServiceProcess(svc, env, tmp_path / "logs" / f"{svc}.log") for svc in SERVICES}
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))


@pytest.fixture
async def prometheus(
    prometheus_bin: str, services: dict[str, ServiceProcess], tmp_path: Path
) -> AsyncIterator[Prometheus]:
    (tmp_path / "prom").mkdir()
    prom = Prometheus(prometheus_bin, tmp_path / "prom", {n: p.port for n, p in services.items()})
    await prom.start()
    try:
        yield prom
    finally:
        await prom.stop()


def referenced_metrics() -> set[str]:
    rules = (PROMETHEUS_DIR / "rules" / "conveyor.yml").read_text()
    names = set(_METRIC.findall(rules + " " + " ".join(dashboard_exprs())))
    names = {re.sub(r"_(bucket|count)$", "", n) if n.endswith(("_bucket", "_count")) else n for n in names}
    # The dashboard selects the per-service message counters by a name pattern.
    names |= {f"{svc}_messages_total" for svc in ("executor", "deliverer", "deployer")}
    return {n for n in names if not n.startswith("node_")} - LAZY


async def test_prometheus_scrapes_one_series_from_each_service(prometheus: Prometheus) -> None:
    async with httpx.AsyncClient(timeout=5) as http:

        async def all_up() -> None:
            rows = await prometheus.query(http, "up")
            up = {r["metric"]["job"]: r["value"][1] for r in rows}
            assert up == dict.fromkeys(SERVICES, "1"), up

        with contextlib.suppress(AssertionError):
            await eventually(all_up, timeout=20, interval=0.25)
        await all_up()

        for svc in SERVICES:
            rss = await prometheus.query(http, f'process_resident_memory_bytes{{job="{svc}"}}')
            assert len(rss) == 1 and float(rss[0]["value"][1]) > 10e6, (svc, rss)
            own = await prometheus.query(http, OWN_SERIES[svc])
            assert own, (svc, OWN_SERIES[svc])
            pending = await prometheus.query(http, f'consumer_pending_messages{{job="{svc}"}}')
            if svc != "receiver":  # the receiver consumes nothing; the others report their consumers
                assert pending, (svc, "consumer_pending_messages")

        # Every metric the alert rules and the dashboard use is one the services export.
        for name in sorted(referenced_metrics()):
            rows = await prometheus.query(http, f'count({{__name__=~"{name}(_bucket|_count)?"}})')
            assert rows, f"no service exports {name}"

        # The dashboard's queries run without error against the live data.
        for expr in dashboard_exprs():
            await prometheus.query(http, expr)

        # The shipped rules evaluate cleanly against the real series.
        async def rules_evaluated() -> list[dict[str, Any]]:
            r = await http.get(f"{prometheus.url}/api/v1/rules")
            rules = [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]
            assert rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
            return rules

        rules = await eventually(rules_evaluated, timeout=10, interval=0.25)
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        assert firing == [], firing
