"""deploy/grafana: provisioning and the dashboard are valid, and every query in it parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .conftest import DEPLOY

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "conveyor.json"
# Grafana's own variables are not PromQL: give each one a value Prometheus understands.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana variables replaced."""
    exprs = []
    for p in panels(dashboard()):
        for t in p["targets"]:
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            exprs.append(expr)
    return exprs


def test_dashboard_is_valid_json_with_unique_ids() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] == "Conveyor"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(doc):
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "prometheus"
        assert all(t["refId"] and t["expr"] for t in p["targets"]), p["title"]
        assert not re.search(r"\$(?!__)", json.dumps(p["targets"])), "only Grafana's built-in variables"


def test_datasource_and_provider_match_the_dashboard_and_compose() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "conveyor.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(dashboard_exprs())
    for metric in (
        "http_requests_total",  # throughput
        "http_request_duration_seconds_bucket",  # latency percentiles
        "consumer_pending_messages",  # queue depth
        "dlq_messages_total",  # dead letters
        "agent_execution_duration_seconds_bucket",  # agent durations
        "callbacks_total",  # deliveries
        "deployments_total",  # deployments
        "deployment_step_duration_seconds_bucket",
    ):
        assert metric in text, metric
    assert "histogram_quantile(0.95" in text and "histogram_quantile(0.99" in text


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    # promtool parses each rule's expression: one recording rule per dashboard query.
    exprs = dashboard_exprs()
    records = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    rules = {"groups": [{"name": "dashboard", "rules": records}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
