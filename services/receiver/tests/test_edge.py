"""Cross-cutting behaviour of the edge: correlation ids, trace context into NATS, metrics,
health endpoints, settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor.receiver.config import Settings
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.contracts.events import JobRecord, encoder
from conveyor.shared.runtime.config import load_settings
from conveyor.shared.testing.fixtures import cyclic_garbage

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_server_span_is_the_parent_of_the_published_event(start_receiver, lovable, js) -> None:
    spans = InMemorySpanExporter()
    async with start_receiver(span_exporter=spans) as r:
        body = lovable.body()
        headers = lovable.headers(body) | {"traceparent": TRACEPARENT, "X-Correlation-ID": "c-1"}
        resp = await r.http.post("/api/webhooks/lovable", content=body, headers=headers)
        assert resp.status_code == 202
        assert resp.headers["X-Correlation-ID"] == "c-1"
    msg = await js.get_last_msg(subjects.EVENTS, "events.lovable.project.created")
    assert msg.headers is not None
    assert msg.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert msg.headers[subjects.H_CORRELATION_ID] == "c-1"
    (span,) = [s for s in spans.get_finished_spans() if s.name == "POST /api/webhooks/{source}"]
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.attributes and span.attributes["http.response.status_code"] == 202


async def test_without_an_exporter_the_callers_trace_still_travels(receiver, lovable, js) -> None:
    body = lovable.body()
    headers = lovable.headers(body) | {"traceparent": TRACEPARENT}
    assert (
        await receiver.http.post("/api/webhooks/lovable", content=body, headers=headers)
    ).status_code == 202
    msg = await js.get_last_msg(subjects.EVENTS, "events.lovable.project.created")
    assert msg.headers is not None and msg.headers["traceparent"] == TRACEPARENT


async def test_correlation_id_made_when_missing_or_unusable(receiver) -> None:
    resp = await receiver.http.post("/api/jobs", json={})
    assert len(resp.headers["X-Correlation-ID"]) == 32
    resp = await receiver.http.post(
        "/api/jobs", json={}, headers={"X-Correlation-ID": "bad value with spaces"}
    )
    assert resp.headers["X-Correlation-ID"] != "bad value with spaces"
    assert resp.json()["error"] == "missing_api_key"


async def test_metrics(receiver, lovable) -> None:
    body = lovable.body()
    await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body, secret="x"))
    assert (await receiver.http.get("/no/such/path")).status_code == 404
    text = (await receiver.http.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/api/webhooks/{source}",status="202"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/api/webhooks/{source}",status="401"} 1.0' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "http_request_duration_seconds_bucket" in text
    assert 'receiver_webhooks_total{outcome="accepted",source="lovable"} 1.0' in text
    assert 'receiver_webhooks_total{outcome="unauthorized",source="lovable"} 1.0' in text
    assert 'receiver_publish_seconds_count{stream="EVENTS"} 1.0' in text
    assert 'receiver_webhooks_total{outcome="duplicate",source="lovable"} 0.0' in text  # preset
    assert 'receiver_last_webhook_timestamp_seconds{source="lovable"}' in text


async def test_health_endpoints(receiver, lovable, js) -> None:
    health = (await receiver.http.get("/health")).json()
    assert health["status"] == "ok" and health["nats_connected"] is True and health["queue_depth"] == 0
    assert health["uptime"] >= 0
    lov = (await receiver.http.get("/health/lovable")).json()
    assert lov == {"last_webhook_received": None, "secret_configured": True, "callback_url_configured": False}
    body = lovable.body()
    await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    lov = (await receiver.http.get("/health/lovable")).json()
    assert lov["last_webhook_received"] is not None

    kv = await js.key_value(subjects.KV_JOBS)
    now = dt.datetime.now(dt.UTC)
    for n, status in enumerate(["completed", "completed", "failed", "timeout", "processing"]):
        record = JobRecord(job_id=f"job_{n}", status=status, created_at=now, updated_at=now, finished_at=now)  # type: ignore[arg-type]
        await kv.put(record.job_id, encoder.encode(record))
    agent = (await receiver.http.get("/health/agent")).json()
    assert agent["agents_available"] == ["dev", "qa", "architect", "pm", "ux-design-expert", "pr-review"]
    assert agent["error_rate"] == 0.5 and agent["sample_size"] == 6
    assert agent["last_execution"] is not None and agent["workers_waiting"] == 0


def test_settings_from_env_and_toml(tmp_path: Path) -> None:
    s = load_settings(
        Settings, {"LOVABLE_WEBHOOK_SECRET": "lovable-test-secret", "RATE_LIMIT_MAX": "7"}, section="receiver"
    )
    assert s.port == 3100 and s.rate_limit_max == 7 and s.rate_limit_window_ms == 60_000
    assert s.known_agents == ["dev", "qa", "architect", "pm", "ux-design-expert", "pr-review"]

    toml = tmp_path / "conveyor.toml"
    toml.write_text(
        "[receiver]\n"
        'agents = ["dev", "reviewer"]\n'
        "[[receiver.webhook_sources]]\n"
        'name = "acme"\nscheme = "standard"\nsecrets = ["whsec_YWNtZS1zdGFuZGFyZC1zZWNyZXQ="]\n'
        'allow_ips = ["10.0.0.0/8"]\n'
    )
    s = load_settings(Settings, {"CONVEYOR_CONFIG": str(toml), "PORT": "4000"}, section="receiver")
    assert s.port == 4000 and s.known_agents == [
        "dev",
        "qa",
        "architect",
        "pm",
        "ux-design-expert",
        "pr-review",
        "reviewer",
    ]
    assert [(w.name, w.scheme, w.allow_ips) for w in s.webhook_sources] == [
        ("acme", "standard", ["10.0.0.0/8"])
    ]

    env_sources = (
        '[{"name": "gh", "scheme": "github", "secrets": ["github-test-secret"], "event_types": ["push"]}]'
    )
    # The executor's agent tables in AGENTS are understood too (only the name matters here).
    agents = '["lint", {"name": "docs", "backend": "builtin"}]'
    s = load_settings(Settings, {"WEBHOOK_SOURCES": env_sources, "AGENTS": agents}, section="receiver")
    assert s.webhook_sources[0].event_types == ["push"]
    assert s.known_agents[-2:] == ["lint", "docs"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"WEBHOOK_SOURCES": '[{"name": "x", "scheme": "ftp", "secrets": ["github-test-secret"]}]'},
            "WEBHOOK_SOURCES",
        ),
        # (A source without secrets is valid: only projects with secrets of their own can send.)
        ({"WEBHOOK_SOURCES": '[{"name": "x", "scheme": "github", "allow_ips": ["no"]}]'}, "WEBHOOK_SOURCES"),
        (
            {"WEBHOOK_SOURCES": '[{"name": "test", "scheme": "github", "secrets": ["github-test-secret"]}]'},
            "WEBHOOK_SOURCES",
        ),
        ({"RATE_LIMIT_MAX": "lots"}, "RATE_LIMIT_MAX"),
        ({"TRUSTED_PROXIES": "not-a-network"}, ""),
        ({"AGENTS": '["bad agent"]'}, "AGENTS"),
        ({"MAX_BODY_BYTES_IN_FLIGHT": "1000"}, "MAX_BODY_BYTES_IN_FLIGHT"),  # under MAX_BODY_BYTES
        ({"HEADER_TIMEOUT_S": "0"}, "HEADER_TIMEOUT_S"),
        ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
        ({"SSE_MAX_STREAMS_PER_CLIENT": "0"}, "SSE_MAX_STREAMS_PER_CLIENT"),
    ],
)
def test_bad_settings_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, env, section="receiver")
    assert named in str(err.value)


async def test_unknown_paths_and_methods_leave_no_request_in_a_cycle(receiver) -> None:
    # aiohttp answers these by raising an exception its route object holds; kept with its
    # traceback, each request would wait for the collector (a flood of 404s made a 10 ms
    # collection every 700 or so requests, and now and then a full one of 30-100 ms).
    with cyclic_garbage() as garbage:
        for n in range(20):
            assert (await receiver.http.get(f"/no/such/path/{n}")).status_code == 404
            assert (await receiver.http.request("PATCH", "/api/webhooks/lovable")).status_code == 405
    kept = [o for o in garbage if isinstance(o, web.BaseRequest)]
    garbage.clear()
    assert kept == []


async def test_hostile_ids_and_headers_get_4xx_and_leave_the_nats_connection_alone(receiver, lovable) -> None:
    # "%0A" decodes to a newline, which once passed the job-id check (Python's "$" matches
    # before it) and went into a NATS protocol line.
    reconnects = receiver.rt.bus.reconnects
    resp = await receiver.http.get("/api/jobs/abc%0A", headers={"Authorization": "Bearer admin-test-key"})
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"] == "job_not_found"
    resp = await receiver.http.get("/api/jobs/abc", headers={"Authorization": b"Bearer \xff\xfe"})
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert (error["error"], error["field"]) == ("invalid_header", "Authorization")
    resp = await receiver.http.get("/api/jobs/abc", headers={"Authorization": "Bearer caf\u00e9".encode()})
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_api_key"
    body = lovable.body()
    resp = await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    assert resp.status_code == 202, resp.text
    assert receiver.rt.bus.reconnects == reconnects
