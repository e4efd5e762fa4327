"""The deliverer in-process against a real nats-server and a real callback sink."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conveyor.deliverer.config import Settings
from conveyor.deliverer.parking import pause_s
from conveyor.deliverer.service import SPEC
from conveyor.shared.contracts import events, subjects
from conveyor.shared.contracts.events import DeliveryLog, delivery_log_decoder, encoder, utcnow
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.runner import Runtime, serve
from conveyor.shared.testing.fixtures import eventually

SECRET_OLD = "whsec_b2xkLWNhbGxiYWNrLXNpZ25pbmcta2V5LTAwMQ=="
SECRET_NEW = "whsec_bmV3LWNhbGxiYWNrLXNpZ25pbmcta2V5LTAwMg=="


def settings(nats_url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "port": 0,
        "callback_signing_secrets": Secret(SECRET_NEW),
        "callback_allowed_networks": "127.0.0.0/8,::1/128",
        "callback_retry_schedule_s": "0.2,0.4",
        "callback_timeout_s": 5.0,
        "dlq_gauge_interval_s": 0.1,
        "shutdown_grace_s": 2.0,
    }
    return Settings(**{**base, **kw})


@asynccontextmanager
async def deliverer(
    s: Settings, registry: CollectorRegistry | None = None, spans: InMemorySpanExporter | None = None
) -> AsyncIterator[Runtime[Settings]]:
    async with serve(SPEC, s, registry=registry, span_exporter=spans) as rt:
        yield rt


async def read_log(kv: KeyValue, key: str) -> DeliveryLog:
    return delivery_log_decoder.decode((await kv.get(key)).value or b"")


async def log_when(kv: KeyValue, key: str, outcomes: list[str], timeout: float = 15) -> DeliveryLog:
    async def check() -> DeliveryLog:
        log = await read_log(kv, key)
        assert [a.outcome for a in log.attempts] == outcomes
        return log

    return await eventually(check, timeout=timeout)


async def scrape(rt: Runtime[Settings]) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{rt.http_port}/metrics")).text


async def test_fails_twice_then_delivered_on_the_third_attempt(
    nats_url: str,
    js: JetStreamContext,
    sink: Any,
    publish_result: Any,
    make_result: Any,
    registry: CollectorRegistry,
) -> None:
    sink.plan = [500, 503]
    async with deliverer(settings(nats_url), registry) as rt:
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_flaky", sink.url())
        log = await log_when(kv, "job_flaky", ["retry", "retry", "delivered"])
        metrics = await scrape(rt)

    assert log.delivered and log.job_id == "job_flaky"
    assert [a.status_code for a in log.attempts] == [500, 503, 200]
    assert [a.url for a in log.attempts] == [sink.url()] * 3
    assert log.attempts[0].error is not None and log.attempts[0].error.startswith("HTTP 500")
    assert all(a.latency_ms >= 0 for a in log.attempts) and log.attempts[0].at < log.attempts[2].at
    assert [r.answered for r in sink.requests] == [500, 503, 200]

    expected = msgspec.json.decode(encoder.encode(make_result("job_flaky", sink.url()).result))
    for r in sink.requests:
        assert r.headers["webhook-id"] == "result-job_flaky"
        assert r.headers["content-type"] == "application/json"
        assert Webhook(SECRET_NEW).verify(r.body, r.headers) == expected
    body = json.loads(sink.requests[-1].body)
    assert body["jobId"] == "job_flaky" and body["lovableProjectId"] == "proj-7" and body["agentId"] == "qa"
    assert body["status"] == "completed" and body["executionTime"] == 1234
    assert body["result"] == {
        "summary": "3 findings",
        "files_changed": ["app.py"],
        "suggestions": ["add tests"],
    }

    assert 'callbacks_total{outcome="delivered"} 1.0' in metrics
    assert 'callbacks_total{outcome="retry"} 2.0' in metrics
    assert 'callback_duration_seconds_count{outcome="delivered"} 1.0' in metrics
    # Each retry waited parked, not unacknowledged: the executor's message was settled once,
    # the parked copies once each, and nothing is left in PARKED.
    assert 'deliverer_messages_total{consumer="deliverer",outcome="ok"} 1.0' in metrics
    assert 'deliverer_messages_total{consumer="deliverer-parked",outcome="ok"} 2.0' in metrics
    assert (await js.stream_info(subjects.PARKED)).state.messages == 0
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(log.attempts, log.attempts[1:], strict=False)]
    assert gaps[0] >= 0.2 * 0.8 and gaps[1] >= 0.4 * 0.8  # the schedule, less its jitter


async def test_dead_letter_then_cli_replay_delivers_exactly_once(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, registry: CollectorRegistry
) -> None:
    sink.status = 500
    async with deliverer(settings(nats_url, callback_max_attempts=2), registry) as rt:
        kv = await js.key_value(subjects.KV_DELIVERIES)
        published = await publish_result("job_dead", sink.url())
        await log_when(kv, "job_dead", ["retry", "dead_lettered"])

        async def dead() -> Any:
            return await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_dead")

        letter = await eventually(dead)
        assert letter.data == published  # byte for byte
        h = letter.headers or {}
        assert h[subjects.H_ORIGINAL_SUBJECT] == "results.job_dead"
        # Filed under the executor's subject (a replay goes back there); the failing attempt
        # was taken from the parked copy, and the stream says so.
        assert h[subjects.H_ORIGINAL_STREAM] == subjects.PARKED
        assert h[subjects.H_STAGE] == "deliver"
        assert h[subjects.H_LAST_STATUS] == "500"
        assert h[subjects.H_ATTEMPTS] == "2"
        assert h[subjects.H_ERROR].startswith("HTTP 500") and "attempt 2 of 2" in h[subjects.H_ERROR]
        assert dt.datetime.fromisoformat(h[subjects.H_FAILED_AT]) <= utcnow()
        assert sink.answered(500) == 2

        async def gauge_shows(n: int) -> None:
            assert f"dlq_depth_messages {n:.1f}" in await scrape(rt)

        await eventually(lambda: gauge_shows(1))
        assert 'callbacks_total{outcome="dead_lettered"} 1.0' in await scrape(rt)
        assert 'dlq_messages_total{stage="deliver"} 1.0' in await scrape(rt)

        sink.status = 200  # the endpoint is fixed
        listed = await conveyor_cli(nats_url, "dlq", "list", "--json")
        rows = [json.loads(line) for line in listed.splitlines()]
        assert [(r["seq"], r["original_subject"], r["last_status"]) for r in rows] == [
            (letter.seq, "results.job_dead", "500")
        ]
        out = await conveyor_cli(nats_url, "dlq", "replay", str(letter.seq))
        assert "replayed 1 of 1" in out

        log = await log_when(kv, "job_dead", ["retry", "dead_lettered", "delivered"])
        assert log.delivered
        await assert_settled(js)
        assert (await js.stream_info(subjects.DLQ)).state.messages == 0
        await eventually(lambda: gauge_shows(0))
    assert sink.answered(200) == 1  # delivered exactly once
    assert Webhook(SECRET_NEW).verify(sink.requests[-1].body, sink.requests[-1].headers)


async def assert_settled(js: JetStreamContext) -> None:
    """Nothing left for the deliverer: no message pending, none awaiting an ack, none parked."""

    async def settled() -> None:
        for stream, durable in (
            (subjects.RESULTS, subjects.DELIVERER),
            (subjects.PARKED, subjects.DELIVERER_PARKED),
        ):
            info = await js.consumer_info(stream, durable)
            assert info.num_pending == 0 and info.num_ack_pending == 0
        assert (await js.stream_info(subjects.PARKED)).state.messages == 0  # nothing parked

    await eventually(settled)


async def conveyor_cli(nats_url: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor.cli",
        *args,
        "--server",
        nats_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (out, err)
    return out.decode()


async def test_client_errors_and_redirects_are_final_at_once(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    sink.status = 400
    async with deliverer(settings(nats_url, callback_max_attempts=5)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_400", sink.url())
        log = await log_when(kv, "job_400", ["dead_lettered"])
        assert log.attempts[0].status_code == 400 and not log.delivered
        sink.status = 302
        sink.answer_headers = {"Location": "http://127.0.0.1:1/elsewhere"}
        await publish_result("job_302", sink.url())
        log = await log_when(kv, "job_302", ["dead_lettered"])
        assert log.attempts[0].error is not None and "not followed" in log.attempts[0].error
        assert "elsewhere" not in log.attempts[0].error  # where it points is logged, not stored
        dead = await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_302")
        assert (dead.headers or {})[subjects.H_LAST_STATUS] == "302"
        assert (dead.headers or {})[subjects.H_ATTEMPTS] == "1"
    assert [r.answered for r in sink.requests] == [400, 302]


async def test_429_and_408_are_retried_honouring_retry_after(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    sink.plan = [429, 408]
    sink.answer_headers = {"Retry-After": "1"}  # longer than the schedule's 0.2 s and 0.4 s
    async with deliverer(settings(nats_url, callback_max_attempts=4)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_429", sink.url())
        log = await log_when(kv, "job_429", ["retry", "retry", "delivered"])
    assert [a.status_code for a in log.attempts] == [429, 408, 200]
    # JetStream cannot redeliver before the NAK delay: each retry waited the full Retry-After.
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(log.attempts, log.attempts[1:], strict=False)]
    assert all(g >= 1.0 for g in gaps), gaps


async def test_timeouts_and_connection_errors_are_retried(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    sink.delays = [2.0]  # the first answer comes after the attempt's deadline
    async with deliverer(settings(nats_url, callback_timeout_s=0.5, callback_max_attempts=4)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_slow", sink.url())
        log = await log_when(kv, "job_slow", ["retry", "delivered"])
        assert log.attempts[0].error == "timed out after 0.5s" and log.attempts[0].status_code is None
        # Nothing listens here: a connection error is retried, then dead-lettered.
        await publish_result("job_refused", "http://127.0.0.1:9/nothing-listens")
        log = await log_when(kv, "job_refused", ["retry", "retry", "retry", "dead_lettered"])
        assert all(a.status_code is None and a.error for a in log.attempts)
        dead = await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_refused")
        assert subjects.H_LAST_STATUS not in (dead.headers or {})  # no answer, no status
        assert (dead.headers or {})[subjects.H_ATTEMPTS] == "4"


async def test_secret_rotation_signs_with_every_secret(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    other = "whsec_ZW5kcG9pbnQtb25seS1zZWNyZXQ="
    s = settings(
        nats_url,
        callback_signing_secrets=Secret(f"{SECRET_NEW},{SECRET_OLD}"),
        callback_endpoint_secrets=Secret(json.dumps({sink.url("/special"): other})),
    )
    async with deliverer(s):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_rotate", sink.url())
        await publish_result("job_special", sink.url("/special"))
        await log_when(kv, "job_rotate", ["delivered"])
        await log_when(kv, "job_special", ["delivered"])

    by_id = {r.headers["webhook-id"]: r for r in sink.requests}
    rotated = by_id["result-job_rotate"]
    assert len(rotated.headers["webhook-signature"].split()) == 2
    # A receiver still on the old secret and one already on the new both accept it.
    Webhook(SECRET_OLD).verify(rotated.body, rotated.headers)
    Webhook(SECRET_NEW).verify(rotated.body, rotated.headers)
    special = by_id["result-job_special"]
    Webhook(other).verify(special.body, special.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_NEW).verify(special.body, special.headers)


async def test_ssrf_guard_dead_letters_internal_urls(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    async with deliverer(settings(nats_url, callback_allowed_networks="")):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        cases = {
            "job_lo": (sink.url(), "loopback"),
            "job_private": ("http://10.0.0.1/cb", "private"),
            "job_meta": ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
            "job_v6": (f"http://[::1]:{sink.port}/cb", "loopback"),
            "job_name": (f"http://localhost:{sink.port}/cb", "loopback"),
        }
        for job, (url, _) in cases.items():
            await publish_result(job, url)
        for job, (_, reason) in cases.items():
            log = await log_when(kv, job, ["dead_lettered"])
            assert log.attempts[0].error and f"is a {reason} address" in log.attempts[0].error
            dead = await js.get_last_msg(subjects.DLQ, f"dlq.deliver.results.{job}")
            assert f"is a {reason} address" in (dead.headers or {})[subjects.H_ERROR]
    assert sink.requests == []


async def test_no_url_is_skipped_and_lovable_uses_its_default(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    async with deliverer(settings(nats_url, lovable_callback_url=sink.url("/lovable"))):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_nourl", None, source="api")
        await publish_result("job_lovable", None, source="lovable")
        log = await log_when(kv, "job_nourl", ["skipped"])
        assert log.attempts[0].error == "no callback URL" and not log.delivered
        await log_when(kv, "job_lovable", ["delivered"])
        await assert_settled(js)
    assert [r.headers["webhook-id"] for r in sink.requests] == ["result-job_lovable"]


async def test_circuit_breaker_pauses_without_counting_attempts(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, registry: CollectorRegistry
) -> None:
    sink.status = 503
    s = settings(
        nats_url,
        callback_breaker_threshold=2,
        callback_breaker_cooldown_s=1.0,
        callback_retry_schedule_s="0.05",
        callback_retry_jitter=0.0,
        callback_max_attempts=50,
    )
    async with deliverer(s, registry) as rt:
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_cb", sink.url())

        async def paused_a_few_times() -> None:
            assert registry.get_sample_value("callbacks_total", {"outcome": "paused"}) >= 3

        await eventually(paused_a_few_times, timeout=20)
        # The paused result waits in PARKED, not unacknowledged in either consumer.
        for stream, durable in (
            (subjects.RESULTS, subjects.DELIVERER),
            (subjects.PARKED, subjects.DELIVERER_PARKED),
        ):
            assert (await js.consumer_info(stream, durable)).num_ack_pending <= 1  # 1: the attempt now
        sink.status = 200
        log = await log_when_delivered(kv, "job_cb")
        delivered = [
            (await js.consumer_info(stream, durable)).delivered.consumer_seq  # type: ignore[union-attr]
            for stream, durable in (
                (subjects.RESULTS, subjects.DELIVERER),
                (subjects.PARKED, subjects.DELIVERER_PARKED),
            )
        ]
        paused = registry.get_sample_value("callbacks_total", {"outcome": "paused"})
        metrics = await scrape(rt)

    # Every recorded attempt reached the sink; paused deliveries reached nothing and count for nothing.
    assert len(log.attempts) == len(sink.requests)
    assert delivered[0] == 1  # the executor's message: taken once, then parked
    assert sum(delivered) == len(log.attempts) + paused
    assert paused >= 3
    assert "callback_circuits_open" in metrics and "parked_results_messages" in metrics


async def log_when_delivered(kv: KeyValue, key: str) -> DeliveryLog:
    async def check() -> DeliveryLog:
        log = await read_log(kv, key)
        assert log.delivered
        return log

    return await eventually(check, timeout=15)


async def test_test_send_posts_one_signed_event(nats_url: str, js: JetStreamContext, sink: Any) -> None:
    async with deliverer(settings(nats_url)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        requests = {
            "ok1": events.SendTestEvent(id="ok1", url=sink.url("/hook"), requested_at=utcnow()),
            "internal": events.SendTestEvent(
                id="internal", url="http://10.0.0.1/hook", requested_at=utcnow()
            ),
            "old": events.SendTestEvent(
                id="old", url=sink.url("/hook"), requested_at=utcnow() - dt.timedelta(minutes=30)
            ),
        }
        for rid, req in requests.items():
            await js.publish(subjects.control(subjects.TEST_SEND_VERB, rid), encoder.encode(req))
        ok = await log_when(kv, "test_ok1", ["delivered"])
        assert ok.delivered and ok.attempts[0].status_code == 200 and ok.job_id == "test_ok1"
        internal = await log_when(kv, "test_internal", ["failed"])
        assert internal.attempts[0].error and "is a private address" in internal.attempts[0].error
        old = await log_when(kv, "test_old", ["failed"])
        assert old.attempts[0].error and old.attempts[0].error.startswith("request expired")

    assert len(sink.requests) == 1
    r = sink.requests[0]
    assert r.headers["webhook-id"] == "test_ok1"
    event = Webhook(SECRET_NEW).verify(r.body, r.headers)
    assert event["type"] == "conveyor.test" and event["data"]["id"] == "ok1"
    assert dt.datetime.fromisoformat(event["timestamp"]) <= utcnow()


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.mark.parametrize("exported", [True, False])
async def test_trace_context_reaches_the_callback(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, exported: bool
) -> None:
    spans = InMemorySpanExporter() if exported else None
    async with deliverer(settings(nats_url), spans=spans):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_traced", sink.url(), headers={"traceparent": PARENT})
        await log_when(kv, "job_traced", ["delivered"])
    traceparent = sink.requests[0].headers["traceparent"]
    assert traceparent.split("-")[1] == TRACE_ID  # one trace from the webhook to the callback
    if spans is not None:
        (span,) = [s for s in spans.get_finished_spans() if s.name == "results.* process"]
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert traceparent.split("-")[2] == format(span.context.span_id, "016x")
    else:
        assert traceparent == PARENT  # no span of ours: the caller's context goes on unchanged


async def test_a_redelivery_of_a_delivered_result_is_not_sent_again(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, registry: CollectorRegistry
) -> None:
    """Delivered, then the ack is lost (a NATS node went away between the two): JetStream
    hands the result over again, and the attempt log says the endpoint has it."""
    async with deliverer(settings(nats_url), registry) as rt:
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_once", sink.url())
        delivered = await log_when(kv, "job_once", ["delivered"])
    # The same message again, as a redelivery: taken (delivery 1) and NAKed, with no deliverer
    # running, so the deliverer's next look at it is its second delivery.
    sub = await js.pull_subscribe_bind(subjects.DELIVERER, subjects.RESULTS)
    await js.purge_stream(subjects.RESULTS)
    data = await publish_result("job_once_again", sink.url())
    copied = msgspec.structs.replace(delivered, job_id="job_once_again")
    await kv.put("job_once_again", encoder.encode(copied))
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.data == data and msg.metadata.num_delivered == 1
    await msg.nak()
    async with deliverer(settings(nats_url), CollectorRegistry()) as rt:

        async def settled() -> None:
            info = await js.consumer_info(subjects.RESULTS, subjects.DELIVERER)
            assert info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(settled, timeout=15)
        metrics = await scrape(rt)
    assert [r.answered for r in sink.requests] == [200]  # the first delivery only
    assert 'callbacks_total{outcome="already_delivered"} 1.0' in metrics
    assert [a.outcome for a in (await read_log(kv, "job_once_again")).attempts] == ["delivered"]


async def test_a_probe_that_finds_the_result_delivered_releases_the_circuit(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, registry: CollectorRegistry
) -> None:
    """Half-open, the probe is a redelivery of a result the attempt log says was delivered: it
    sends nothing, and the next result to that endpoint must still go out."""
    sink.status = 503
    s = settings(
        nats_url, callback_breaker_threshold=1, callback_breaker_cooldown_s=1.5, callback_max_attempts=1
    )
    async with deliverer(s, registry):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_opens", sink.url())
        await log_when(kv, "job_opens", ["dead_lettered"])  # one failure: the circuit is open
        # Delivery 1 is paused by the open circuit; delivery 2, after the cool-down, is the probe.
        delivered = events.DeliveryAttempt(at=utcnow(), url=sink.url(), status_code=200, latency_ms=1.0)
        log = DeliveryLog(job_id="job_sent_before", attempts=[delivered], delivered=True)
        await kv.put("job_sent_before", encoder.encode(log))
        await publish_result("job_sent_before", sink.url())

        async def probe_found_it_delivered() -> None:
            assert registry.get_sample_value("callbacks_total", {"outcome": "already_delivered"}) == 1

        await eventually(probe_found_it_delivered, timeout=15)
        sink.status = 200
        await publish_result("job_after", sink.url())
        await log_when(kv, "job_after", ["delivered"], timeout=10)
    assert [r.answered for r in sink.requests] == [503, 200]


# --- parking: a result that must wait is stored in PARKED, not held unacknowledged ----------


async def test_a_dead_endpoint_does_not_hold_up_the_others_past_the_ack_pending_limit(
    nats_url: str,
    js: JetStreamContext,
    sink: Any,
    other_sink: Any,
    publish_result: Any,
    registry: CollectorRegistry,
) -> None:
    dead, live = sink, other_sink
    dead.status = 503
    s = settings(
        nats_url,
        callback_max_ack_pending=8,  # far fewer than the dead endpoint's results
        callback_concurrency=4,
        callback_batch=4,
        callback_breaker_threshold=2,
        callback_breaker_cooldown_s=1.0,
        callback_retry_schedule_s="0.3",
        callback_retry_max_delay_s=3.0,
        callback_max_attempts=100,
    )
    async with deliverer(s, registry):
        for i in range(30):
            await publish_result(f"job_dead_{i}", dead.url())
        for i in range(10):
            await publish_result(f"job_live_{i}", live.url())

        async def live_all_delivered() -> None:
            assert live.answered(200) == 10

        # With NAKs, the dead endpoint's 30 results filled all 8 ack-pending slots, again and
        # again, and the live endpoint's results behind them were never handed out.
        await eventually(live_all_delivered, timeout=15)
        info = await js.consumer_info(subjects.RESULTS, subjects.DELIVERER)
        assert info.num_ack_pending <= 4 and info.num_pending == 0
        parked = (await js.stream_info(subjects.PARKED)).state.messages
        assert parked >= 20, parked  # the dead endpoint's results wait here
        assert registry.get_sample_value("callbacks_total", {"outcome": "paused"}) >= 1

        dead.status = 200  # the endpoint comes back: every parked result goes out, once

        async def dead_all_delivered() -> None:
            assert dead.answered(200) == 30

        await eventually(dead_all_delivered, timeout=30)
        await assert_settled(js)
    ids = Counter(r.headers["webhook-id"] for r in dead.requests if r.answered == 200)
    assert set(ids) == {f"result-job_dead_{i}" for i in range(30)} and max(ids.values()) == 1


@pytest.mark.parametrize(
    ("pauses", "wait", "low", "high"),
    [
        (1, 0.7, 0.7, 0.7),  # the first pause: what the circuit has left, nothing more
        (2, 0.7, 60.0, 66.0),  # then the cool-down doubled per pause, spread by up to 10%
        (3, 0.7, 120.0, 132.0),
        (20, 0.7, 600.0, 600.0 * 1.1),  # capped
        (2, 90.0, 90.0, 90.0),  # never shorter than the circuit's own wait
    ],
)
def test_a_result_paused_again_and_again_is_parked_for_longer(
    pauses: int, wait: float, low: float, high: float
) -> None:
    for _ in range(50):
        assert low <= pause_s(pauses, wait, 30.0, 600.0) <= high


async def test_a_parking_failure_falls_back_to_waiting_unacknowledged(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, registry: CollectorRegistry
) -> None:
    """Without the PARKED stream, a retry is a NAK with the same delay, as before parking."""
    sink.plan = [500]
    async with deliverer(settings(nats_url, callback_retry_jitter=0.0), registry):
        await js.delete_stream(subjects.PARKED)
        await publish_result("job_unparked", sink.url())

        async def delivered() -> None:
            assert sink.answered(200) == 1

        await eventually(delivered, timeout=10)
        await asyncio.sleep(0)
    assert [r.answered for r in sink.requests] == [500, 200]
    metrics = registry.get_sample_value(
        "deliverer_messages_total", {"consumer": subjects.DELIVERER, "outcome": "retried"}
    )
    assert metrics == 1.0


# --- hostile callback URLs and answers ------------------------------------------------------


def basic(userinfo: bytes) -> str:
    return "Basic " + base64.b64encode(userinfo).decode()


async def test_credentials_in_the_url_go_as_basic_auth_and_are_never_stored_or_logged(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink.plan = [500, 200]
    with_password = f"http://cb-user:pa%3Ass-w0rd@127.0.0.1:{sink.port}/cb"
    with_token = f"http://tok-3n@127.0.0.1:{sink.port}/cb"  # the user part is the secret
    async with deliverer(settings(nats_url, callback_max_attempts=3)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_creds", with_password)
        log = await log_when(kv, "job_creds", ["retry", "delivered"])
        sink.status = 400  # final at once: dead-lettered
        published = await publish_result("job_token", with_token)
        dead_log = await log_when(kv, "job_token", ["dead_lettered"])

        async def dead() -> Any:
            return await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_token")

        letter = await eventually(dead)
        stored = [(await kv.get(k)).value or b"" for k in ("job_creds", "job_token")]

    # Sent: every attempt carries the credentials as Basic auth, the password percent-decoded.
    assert [r.headers.get("authorization") for r in sink.requests] == [
        basic(b"cb-user:pa:ss-w0rd"),
        basic(b"cb-user:pa:ss-w0rd"),
        basic(b"tok-3n:"),
    ]
    # Stored and shown: the URL with the password (or the lone token) hidden.
    assert [a.url for a in log.attempts] == [f"http://cb-user:***@127.0.0.1:{sink.port}/cb"] * 2
    assert dead_log.attempts[0].url == f"http://***@127.0.0.1:{sink.port}/cb"
    error = (letter.headers or {})[subjects.H_ERROR]
    assert f"http://***@127.0.0.1:{sink.port}/cb" in error
    for secret in ("pa%3Ass-w0rd", "pa:ss-w0rd", "ss-w0rd", "tok-3n"):
        assert all(secret.encode() not in value for value in stored), secret
        assert secret not in error
        assert secret not in caplog.text, secret
    assert letter.data == published  # the message itself keeps them: a replay must send them


PAGE = b"internal-only: db password hunter2 " + b"x" * 400


async def test_answers_are_logged_but_never_stored_where_the_api_reads(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed answer's body is what the deliverer read from the URL: kept out of the attempt
    log (GET /api/jobs/{id}/deliveries, POST /api/webhooks/test) and the DLQ headers, or a
    caller could use the deliverer to read pages back."""
    caplog.set_level(logging.INFO)
    sink.answer_body = PAGE
    sink.plan = [503]
    sink.status = 404
    async with deliverer(settings(nats_url, callback_max_attempts=3)):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_echo", sink.url())
        log = await log_when(kv, "job_echo", ["retry", "dead_lettered"])

        async def dead() -> Any:
            return await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_echo")

        letter = await eventually(dead)
        req = events.SendTestEvent(id="echo", url=sink.url("/hook"), requested_at=utcnow())
        await js.publish(subjects.control(subjects.TEST_SEND_VERB, "echo"), encoder.encode(req))
        test_log = await log_when(kv, "test_echo", ["failed"])
        stored = [(await kv.get(k)).value or b"" for k in ("job_echo", "test_echo")]

    assert [a.error for a in log.attempts] == ["HTTP 503", "HTTP 404"]
    assert [a.status_code for a in log.attempts] == [503, 404]
    assert test_log.attempts[0].error == "HTTP 404"
    assert all(b"hunter2" not in value for value in stored)
    assert all("hunter2" not in v for v in (letter.headers or {}).values())
    # The operator still sees what the endpoint said, cut to 200 bytes: the retry's parking
    # line, the dead letter's line and the test send's line.
    lines = [r.getMessage() for r in caplog.records if "hunter2" in r.getMessage()]
    assert len(lines) == 3, lines
    assert all(PAGE[:200].decode() in line and PAGE[:201].decode() not in line for line in lines)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"http://{'a' * 64}.example/cb", "longer than 63 characters"),
        ("http://hooks..example/cb", "empty label"),
        ("http://" + "a." * 127 + "example/cb", "longer than 253 characters"),
        ("http://2130706433/cb", "ends in a number"),  # 127.0.0.1 in disguise
        ("http://xn--zz.example/cb", "not valid punycode"),
    ],
)
async def test_a_callback_url_that_cannot_be_dialled_is_dead_lettered_at_once(
    nats_url: str,
    js: JetStreamContext,
    publish_result: Any,
    registry: CollectorRegistry,
    url: str,
    why: str,
) -> None:
    async with deliverer(settings(nats_url, callback_max_attempts=5), registry):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_undiallable", url)
        log = await log_when(kv, "job_undiallable", ["dead_lettered"])

        async def dead() -> Any:
            return await js.get_last_msg(subjects.DLQ, "dlq.deliver.results.job_undiallable")

        letter = await eventually(dead)
        await assert_settled(js)
    error = log.attempts[0].error
    assert error is not None and error.startswith("invalid callback URL") and why in error
    h = letter.headers or {}
    assert h[subjects.H_ATTEMPTS] == "1" and why in h[subjects.H_ERROR]
    # Permanent: settled once as a dead letter, never an unexpected error retried.
    for outcome in ("error", "retried"):
        sample = {"consumer": subjects.DELIVERER, "outcome": outcome}
        assert not registry.get_sample_value("deliverer_messages_total", sample)
    assert (
        registry.get_sample_value(
            "deliverer_messages_total", {"consumer": subjects.DELIVERER, "outcome": "dead_lettered"}
        )
        == 1.0
    )
