"""deploy/compose.yml and the Dockerfiles: the shape the operations issue asks for."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from conveyor.shared.testing.nats_server import nats_server_binary

from .conftest import DEPLOY, ROOT, SERVICES


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


def test_three_node_nats_cluster_and_r3_everywhere() -> None:
    services = compose()["services"]
    nodes = [f"nats-{i}" for i in (1, 2, 3)]
    for node in nodes:
        assert services[node]["environment"]["NATS_SERVER_NAME"] == node
        # Go gives the garbage of written blocks back instead of holding twice the live heap.
        assert services[node]["environment"]["GOMEMLIMIT"] == "512MiB"
        assert services[node]["image"].endswith("/nats:${IMAGE_TAG:-latest}")
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    assert all(f"nats://{n}:6222" in conf for n in nodes) and "jetstream" in conf
    for svc in SERVICES:
        env = services[svc]["environment"]
        assert env["NATS_REPLICAS"] == "3", svc
        assert env["NATS_URL"] == ",".join(f"nats://{n}:4222" for n in nodes), svc
        assert set(services[svc]["depends_on"]) == set(nodes)


def test_replicas() -> None:
    services = compose()["services"]
    replicas = {svc: services[svc].get("deploy", {}).get("replicas", 1) for svc in SERVICES}
    assert replicas == {"receiver": 2, "executor": 2, "deliverer": 1, "deployer": 1}
    # podman-compose honours deploy.replicas only with the mode spelled out.
    assert all(services[s]["deploy"]["mode"] == "replicated" for s in ("receiver", "executor"))
    assert {"prometheus", "grafana", "node-exporter", "edge"} <= set(services)


def test_only_the_edge_and_grafana_are_published_and_on_loopback() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"edge", "grafana"}
    for ports in published.values():
        for port in ports:
            assert port.startswith("127.0.0.1:"), port
    # The edge is the receiver's port: it forwards to every receiver replica.
    assert "server-template receiver" in (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "receiver:3100" in (DEPLOY / "haproxy" / "haproxy.cfg").read_text()


def test_grafana_and_the_smoke_sink_are_behind_profiles() -> None:
    services = compose()["services"]
    assert services["grafana"]["profiles"] == ["grafana"]
    assert services["callback-sink"]["profiles"] == ["smoke"]
    assert compose()["x-podman"]["in_pod"] is False


def test_nats_config_is_valid() -> None:
    proc = subprocess.run(
        [nats_server_binary(), "-c", str(DEPLOY / "nats" / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"NATS_SERVER_NAME": "nats-1"},
    )
    assert proc.returncode == 0 and "is valid" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_service_dockerfiles() -> None:
    """One Dockerfile builds every service image; scripts/images.sh names the service."""
    text = (DEPLOY / "service" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2, "multi-stage"
    assert "COPY build/images/${SERVICE}/ /wheelhouse/" in text, "only this service's wheels"
    assert "PIP_NO_INDEX=1" in text
    assert re.search(r"^USER conveyor$", text, re.M), "non-root"
    assert "HEALTHCHECK" in text and "/health/live" in text
    assert 'ln -s "conveyor-${SERVICE}" /opt/conveyor/bin/conveyor-service' in text
    assert 'ENTRYPOINT ["conveyor-service"]' in text
    script = (ROOT / "scripts" / "images.sh").read_text()
    for svc in SERVICES:
        assert re.search(rf"^\s+{svc}\) args=\(--build-arg PORT=310\d", script, re.M), svc
    assert 'build "$svc" deploy/service/Dockerfile --build-arg "SERVICE=$svc"' in script


def _haproxy_lines() -> list[str]:
    """deploy/haproxy/haproxy.cfg without comments and blank lines."""
    lines = [
        line.split("#", 1)[0].strip()
        for line in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines()
    ]
    return [line for line in lines if line]


def test_the_edge_sets_the_client_address() -> None:
    """The receivers believe the X-Forwarded-For hop their trusted proxy wrote: the edge must
    replace what a client sent, not append to it (a client's own value would come first)."""
    lines = _haproxy_lines()
    assert "http-request set-header X-Forwarded-For %[src]" in lines
    assert "option forwardfor" not in lines
    assert compose()["services"]["receiver"]["environment"]["TRUSTED_PROXIES"]


def test_the_edge_logs_no_query_strings() -> None:
    """A query string may carry an API key (?api_key= on the Server-Sent Event routes)."""
    lines = _haproxy_lines()
    formats = [line for line in lines if line.startswith("log-format")]
    assert len(formats) == 1 and "%HPO" in formats[0]
    # %r (the request line, any flags) and %HU (the URI) carry the query; %HQ is the query.
    assert not re.search(r"%(\{[^}]*\})?r(?![a-z])|%HU|%HQ", formats[0])
    assert "option httplog" not in lines  # its format writes the whole request line


def test_the_edge_drops_slow_heads() -> None:
    assert any(re.fullmatch(r"timeout http-request \d+s", line) for line in _haproxy_lines())
