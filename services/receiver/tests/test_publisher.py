"""The publisher (PubAcks on one reply subscription) against a real nats-server, and what the
webhook route does when the event cannot be stored but its record could."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from conveyor.receiver.state import publish_failure
from conveyor.shared import bus
from conveyor.shared.bus.errors import translate
from conveyor.shared.bus.jsrequests import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_STREAM,
    JsRequests,
    is_key_exists,
)
from conveyor.shared.bus.streams import ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects

CREATE = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}


@pytest.fixture
async def publisher(nc: NATS, js: JetStreamContext) -> JsRequests:
    await ensure_streams(js, [subjects.EVENTS])
    await ensure_kv(js, [subjects.KV_JOBS])
    pub = JsRequests(nc, timeout_s=2.0)
    await pub.start()
    return pub


async def test_acks_carry_sequence_and_duplicate(publisher: JsRequests) -> None:
    headers = {subjects.MSG_ID: "lovable:d1", EXPECTED_STREAM: subjects.EVENTS}
    futures = [await publisher.send("events.lovable.project.created", b"{}", dict(headers)) for _ in range(3)]
    acks = [await f for f in futures]
    assert [(a.stream, a.seq, a.duplicate) for a in acks] == [
        ("EVENTS", 1, False),
        ("EVENTS", 1, True),
        ("EVENTS", 1, True),
    ]
    other = await publisher.publish("events.lovable.project.created", b"{}", {subjects.MSG_ID: "lovable:d2"})
    assert (other.seq, other.duplicate) == (2, False)


async def test_wrong_stream_and_no_stream_are_errors(publisher: JsRequests) -> None:
    with pytest.raises(bus.BadRequest) as info:
        await publisher.publish("events.lovable.x", b"{}", {EXPECTED_STREAM: "JOBS"})
    assert info.value.code == 400
    with pytest.raises(bus.Unavailable):
        await publisher.publish("nowhere.x", b"{}", {})


async def test_kv_create_fails_when_the_key_exists_or_was_deleted(
    publisher: JsRequests, js: JetStreamContext
) -> None:
    subject = f"$KV.{subjects.KV_JOBS}.job_1"
    ack = await publisher.publish(subject, b"a", dict(CREATE))
    assert ack.seq > 0
    with pytest.raises(bus.Conflict) as info:
        await publisher.publish(subject, b"b", dict(CREATE))
    assert is_key_exists(info.value)
    kv = await js.key_value(subjects.KV_JOBS)
    await kv.delete("job_1")
    with pytest.raises(bus.Conflict) as info:
        await publisher.publish(subject, b"c", dict(CREATE))
    assert is_key_exists(info.value)  # a delete marker counts too: then the caller uses kv.create
    await kv.create("job_1", b"c")
    assert (await kv.get("job_1")).value == b"c"


async def test_unanswered_publish_times_out(nc: NATS) -> None:
    pub = JsRequests(nc, timeout_s=0.2)
    await pub.start()
    await nc.subscribe("quiet.x")  # takes the message and never answers
    with pytest.raises(bus.Timeout):
        await pub.publish("quiet.x", b"{}", {})
    await ensure_streams(nc.jetstream(), [subjects.EVENTS])
    ack = await pub.publish("events.lovable.project.created", b"{}", {})
    assert ack.seq == 1


async def test_each_call_keeps_its_own_timeout_and_stop_ends_every_wait(nc: NATS) -> None:
    pub = JsRequests(nc, timeout_s=30.0)
    await pub.start()
    await nc.subscribe("quiet.>")  # takes every message and never answers
    loop = asyncio.get_running_loop()
    slow = await pub.send("quiet.slow", b"{}", {})  # the default, 30 s: sent first
    started = loop.time()
    with pytest.raises(bus.Timeout):
        await pub.publish("quiet.fast", b"{}", {}, timeout_s=0.2)
    assert loop.time() - started < 5  # not held behind the earlier, longer wait
    assert not slow.done()
    await pub.stop()
    with pytest.raises(bus.Unavailable):
        await slow


async def test_event_not_stored_leaves_no_record_and_a_retry_recreates_it(
    receiver, lovable, bus, js: JetStreamContext
) -> None:
    await js.delete_stream(subjects.EVENTS)  # publishes to events.> now have no stream to go to
    body = lovable.body(id="evt_retry")
    resp = await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    assert resp.status_code == 503 and resp.json()["error"] == "unavailable"
    kv = await js.key_value(subjects.KV_JOBS)
    assert await bus.job_keys() == []  # the record made alongside was removed (a delete marker)

    await ensure_streams(js, [subjects.EVENTS])
    resp = await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    assert resp.status_code == 202, resp.text
    entry = await kv.get(resp.json()["job_id"])
    assert b'"status":"queued"' in (entry.value or b"")
    assert await bus.count(subjects.EVENTS) == 1


async def test_an_unreadable_answer_is_a_503_not_a_500(
    receiver, lovable, bus, js: JetStreamContext, nc: NATS
) -> None:
    # No stream takes events.>, and something that is not JetStream answers in its place.
    await js.delete_stream(subjects.EVENTS)

    async def impostor(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(b"this is not a PubAck")

    sub = await nc.subscribe("events.>", cb=impostor)
    body = lovable.body(id="evt_garbled")
    resp = await receiver.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    await sub.unsubscribe()
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "unavailable" and "Retry-After" in resp.headers
    assert await bus.job_keys() == []  # the record made alongside was removed again


def test_every_nats_failure_of_a_write_says_what_in_its_503() -> None:
    """KV errors are APIErrors without a description; reading one (as the bus raises it) must
    not turn the 503 into a 500 (an AttributeError inside the error handling)."""
    assert publish_failure(translate(nats.js.errors.KeyNotFoundError())) == (
        "NATS JetStream refused the message (nats: key not found)"
    )
    assert "(boom)" in publish_failure(translate(nats.js.errors.APIError(code=500, description="boom")))
    assert "did not acknowledge (Timeout)" in publish_failure(translate(nats.errors.TimeoutError()))
    assert "gave no usable answer (BusError)" in publish_failure(bus.BusError("unreadable PubAck"))
    with pytest.raises(ZeroDivisionError):
        publish_failure(ZeroDivisionError())
