"""deploy/prometheus: the config and the alert rules are valid, and each alert fires as promised."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import PROMETHEUS_DIR, SERVICES

RULES = PROMETHEUS_DIR / "rules" / "conveyor.yml"


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_config_is_valid_and_loads_the_rules(promtool: str) -> None:
    out = run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert "SUCCESS: 1 rule files found" in out
    assert f"{RULES.relative_to(PROMETHEUS_DIR)}" in out or "conveyor.yml" in out


def test_rules_are_valid(promtool: str) -> None:
    assert "SUCCESS" in run([promtool, "check", "rules", str(RULES)])


def test_rule_unit_tests_pass(promtool: str) -> None:
    # Each alert has a case past its threshold (fires, with labels and annotations) and, where
    # a threshold could be misread, one at or below it (quiet).
    out = run([promtool, "test", "rules", "conveyor_test.yml"], cwd=PROMETHEUS_DIR / "tests")
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "tests" / "conveyor_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(alerts())


@pytest.mark.parametrize(
    ("alert", "severity", "needle"),
    [
        ("WebhookResponseSlow", "warning", "> 0.5"),
        ("AgentExecutionSlow", "warning", 'le="300.0"'),
        ("AgentExecutionTooLong", "critical", 'le="900.0"'),
        ("DeadLettersHigh", "critical", "[1h])) > 3"),
        ("QueueDepthHigh", "warning", "> 50"),
        ("ServiceMemoryHigh", "warning", "> 0.8"),
        ("HostMemoryHigh", "warning", "> 0.8"),
        ("DiskAlmostFull", "critical", "> 0.9"),
        ("BudgetRefusing", "warning", "[15m])) > 0"),
        ("LLMSpendHigh", "warning", "conveyor:llm_spend_alert_usd_per_hour"),
    ],
)
def test_promised_thresholds(alert: str, severity: str, needle: str) -> None:
    rule = alerts()[alert]
    assert rule["labels"]["severity"] == severity
    assert needle in " ".join(rule["expr"].split())
    assert rule["annotations"]["runbook"].startswith("docs/operations.md#")


def test_runbook_anchors_exist_in_operations_doc() -> None:
    doc = (PROMETHEUS_DIR.parents[1] / "docs" / "operations.md").read_text().lower()
    for name, rule in alerts().items():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == name.lower()
        assert f"### {anchor}" in doc, f"docs/operations.md has no '### {name}' section"


def test_every_service_is_scraped() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    ports = {"receiver": 3100, "executor": 3101, "deliverer": 3102, "deployer": 3103}
    for svc in SERVICES:
        sd = jobs[svc]["dns_sd_configs"][0]
        assert sd["names"] == [svc] and sd["type"] == "A" and sd["port"] == ports[svc]
