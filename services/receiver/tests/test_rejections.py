"""Every webhook rejection: its status, its JSON error body, and that nothing reached JetStream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from conveyor.receiver.config import WebhookSource
from conveyor.shared.contracts import subjects
from conveyor.shared.runtime.config import Secret
from conveyor.shared.testing.fixtures import forget_message_ids

Case = Callable[[Any], tuple[str, bytes, dict[str, str]]]
URL = "/api/webhooks/lovable"


def _valid(lv: Any, **over: Any) -> tuple[bytes, dict[str, str]]:
    body = lv.body(**over)
    return body, lv.headers(body)


def missing_signature(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv)
    del headers["X-Lovable-Signature"]
    return URL, body, headers


def malformed_signature(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv)
    headers["X-Lovable-Signature"] = "md5=abc"
    return URL, body, headers


def wrong_signature(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = lv.body()
    return URL, body, lv.headers(body, secret="not-the-secret")


def tampered_body(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv)
    return URL, body.replace(b"demo", b"evil"), headers


def missing_timestamp(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv)
    del headers["X-Lovable-Timestamp"]
    return URL, body, headers


def stale_timestamp(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = lv.body()
    return URL, body, lv.headers(body, timestamp=int(time.time()) - 301)


def future_timestamp(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = lv.body()
    return URL, body, lv.headers(body, timestamp=int(time.time()) + 301)


def empty_body(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    return URL, b"", lv.headers(b"")


def invalid_json(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = b'{"id": "x", "type": '
    return URL, body, lv.headers(body)


def not_an_object(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = b"[1, 2, 3]"
    return URL, body, lv.headers(body)


def missing_field(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    payload = json.loads(lv.body())
    del payload["project_id"]
    body = json.dumps(payload).encode()
    return URL, body, lv.headers(body)


def unknown_event_type(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv, event_type="project.exploded")
    return URL, body, headers


def unknown_source(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body, headers = _valid(lv)
    return "/api/webhooks/nobody", body, headers


def non_ascii_signature(lv: Any) -> tuple[str, bytes, dict[str, Any]]:
    # 64 characters, none of them hex: as long as a real one, and UTF-8, so it reaches the check.
    body, headers = _valid(lv)
    headers["X-Lovable-Signature"] = ("sha256=" + "\u00e9" * 64).encode()
    return URL, body, headers


def signature_not_utf8(lv: Any) -> tuple[str, bytes, dict[str, Any]]:
    body, headers = _valid(lv)
    headers["X-Lovable-Signature"] = b"sha256=" + b"\xff" * 64
    return URL, body, headers


def project_header_not_utf8(lv: Any) -> tuple[str, bytes, dict[str, Any]]:
    body, headers = _valid(lv)
    headers["X-Lovable-Project-Id"] = b"proj-\xff"
    return URL, body, headers


def delivery_id_with_newline(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    # Python's "$" matches before a trailing newline: the id once passed, and broke the header block.
    body, headers = _valid(lv, id="evt_1\n")
    return URL, body, headers


def body_not_utf8(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = lv.body().replace(b"proj_1", b"proj_\xff")
    return URL, body, lv.headers(body)


def body_not_utf8_where_unread(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    # In a field the receiver skips: it would reach the executor unchecked.
    body = lv.body().replace(b"demo", b"demo\xff")
    return URL, body, lv.headers(body)


def nested_too_deeply(lv: Any) -> tuple[str, bytes, dict[str, str]]:
    body = lv.body(data={"x": 1}).replace(b'{"x": 1}', b'{"x":' * 5000 + b"1" + b"}" * 5000)
    return URL, body, lv.headers(body)


# name -> (request, status, error code, words in the message)
CASES: dict[str, tuple[Case, int, str, str]] = {
    "missing signature": (missing_signature, 401, "invalid_signature", "missing X-Lovable-Signature"),
    "malformed signature": (malformed_signature, 401, "invalid_signature", "malformed"),
    "wrong signature": (wrong_signature, 401, "invalid_signature", "does not match"),
    "tampered body": (tampered_body, 401, "invalid_signature", "does not match"),
    "missing timestamp": (missing_timestamp, 401, "invalid_signature", "missing timestamp"),
    "stale timestamp": (stale_timestamp, 401, "invalid_signature", "too old"),
    "future timestamp": (future_timestamp, 401, "invalid_signature", "in the future"),
    "empty body": (empty_body, 400, "empty_body", "empty"),
    "invalid json": (invalid_json, 400, "invalid_json", "not valid JSON"),
    "body not an object": (not_an_object, 422, "invalid_body", "JSON object"),
    "missing field": (missing_field, 422, "invalid_field", "project_id"),
    "unknown event type": (unknown_event_type, 422, "unknown_event_type", "project.exploded"),
    "unknown source": (unknown_source, 404, "unknown_source", "nobody"),
    "non-ASCII signature": (non_ascii_signature, 401, "invalid_signature", "malformed"),
    "signature not UTF-8": (signature_not_utf8, 400, "invalid_header", "X-Lovable-Signature"),
    "project header not UTF-8": (project_header_not_utf8, 400, "invalid_header", "X-Lovable-Project-Id"),
    "delivery id with a newline": (delivery_id_with_newline, 400, "invalid_delivery_id", "printable"),
    "body not UTF-8": (body_not_utf8, 400, "invalid_json", "not UTF-8"),
    "body not UTF-8 where unread": (body_not_utf8_where_unread, 400, "invalid_json", "not UTF-8"),
    "nested too deeply": (nested_too_deeply, 400, "invalid_json", "nested too deeply"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_rejection(name: str, receiver, lovable, bus) -> None:
    build, status, code, words = CASES[name]
    url, body, headers = build(lovable)
    resp = await receiver.http.post(url, content=body, headers=headers)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert error["error"] == code
    assert words in error["message"]
    assert resp.headers["Content-Type"].startswith("application/json")
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == "Signature"
    if code == "invalid_field":
        assert error["field"] == "project_id"
    await bus.assert_nothing_accepted()


async def _raw_request(port: int, head: bytes, body: bytes) -> AsyncIterator[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        yield await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_too_large_by_content_length_answered_before_the_body_arrives(receiver, lovable, bus) -> None:
    announced = 2 * 1024 * 1024
    partial = lovable.body()  # a few hundred bytes of the 2 MiB announced; the rest never comes
    sig = lovable.headers(partial)
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Lovable-Timestamp: {sig['X-Lovable-Timestamp']}\r\n"
        f"X-Lovable-Signature: {sig['X-Lovable-Signature']}\r\n"
        f"Content-Length: {announced}\r\n\r\n"
    ).encode()
    async for answer in _raw_request(receiver.rt.http_port, head, partial):
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
        assert b"Connection: close" in rest
        body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "payload_too_large"
    await bus.assert_nothing_accepted()


async def test_too_large_with_expect_continue_refused_before_the_body_is_sent(receiver, lovable, bus) -> None:
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n"
    ).encode()
    async for answer in _raw_request(receiver.rt.http_port, head, b""):
        assert answer.startswith(b"HTTP/1.1 413 ")  # not "100 Continue": the body is never sent
        assert b'"payload_too_large"' in answer
    await bus.assert_nothing_accepted()


async def test_too_large_chunked_body_refused(receiver, lovable, bus) -> None:
    chunk = b" " * 65536

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):  # 1.25 MiB, no Content-Length
            yield chunk

    resp = await receiver.http.post(URL, content=chunks(), headers=lovable.headers(b"{}"))
    assert resp.status_code == 413
    assert resp.json()["error"] == "payload_too_large"
    await bus.assert_nothing_accepted()


def _source(**kw: Any) -> WebhookSource:
    raw = {"name": "lovable", "scheme": "lovable", "secrets": ["lovable-test-secret"], **kw}
    return msgspec.convert(raw, WebhookSource, dec_hook=lambda t, v: Secret(v) if t is Secret else v)


async def test_address_outside_allowlist_forbidden(start_receiver, lovable, bus) -> None:
    async with start_receiver(webhook_sources=[_source(allow_ips=["10.9.0.0/16"])]) as r:
        body, headers = _valid(lovable)
        resp = await r.http.post(URL, content=body, headers=headers)
        assert resp.status_code == 403
        assert resp.json()["error"] == "forbidden_address"
        # X-Forwarded-For from an untrusted peer is not believed.
        resp = await r.http.post(URL, content=body, headers=headers | {"X-Forwarded-For": "10.9.1.1"})
        assert resp.status_code == 403
    await bus.assert_nothing_accepted()


async def test_forwarded_for_honoured_only_from_trusted_proxies(start_receiver, lovable, bus) -> None:
    async with start_receiver(
        webhook_sources=[_source(allow_ips=["10.9.0.0/16"])], trusted_proxies="127.0.0.0/8"
    ) as r:
        body, headers = _valid(lovable)
        # The loopback peer is a trusted proxy: the right-most untrusted hop is the client.
        resp = await r.http.post(
            URL, content=body, headers=headers | {"X-Forwarded-For": "10.9.1.1, 127.0.0.5"}
        )
        assert resp.status_code == 202, resp.text
        resp = await r.http.post(
            URL, content=body, headers=headers | {"X-Forwarded-For": "10.9.1.1, 192.0.2.7"}
        )
        assert resp.status_code == 403
        assert await bus.count("EVENTS") == 1


async def test_a_forwarded_for_the_client_wrote_is_not_believed(start_receiver, lovable, bus) -> None:
    """Behind a proxy that appends (HAProxy's ``option forwardfor`` adds its own field after
    the client's), the client's own X-Forwarded-For comes first: it must not choose the
    address the allowlist sees."""
    async with start_receiver(
        webhook_sources=[_source(allow_ips=["10.9.0.0/16"])], trusted_proxies="127.0.0.0/8"
    ) as r:
        body, headers = _valid(lovable)
        forged = [*headers.items(), ("X-Forwarded-For", "10.9.1.1"), ("X-Forwarded-For", "192.0.2.7")]
        resp = await r.http.post(URL, content=body, headers=forged)
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "forbidden_address"
        # Nor when they come in one field, or behind a made-up "proxy" hop.
        for value in ("10.9.1.1, 192.0.2.7", "10.9.1.1, not-an-address", "10.9.1.1,"):
            resp = await r.http.post(URL, content=body, headers=headers | {"X-Forwarded-For": value})
            assert resp.status_code == 403, (value, resp.text)
        # The proxy's own field, last, names the client.
        fair = [*headers.items(), ("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-For", "10.9.1.1")]
        resp = await r.http.post(URL, content=body, headers=fair)
        assert resp.status_code == 202, resp.text
        assert await bus.count("EVENTS") == 1


async def test_made_up_forwarded_for_values_make_no_limit_keys(start_receiver, new_key, js) -> None:
    """Keyless reads are limited per client address: values a client makes up in
    X-Forwarded-For must neither escape the limit nor make a rate-limit key each."""
    async with start_receiver(
        read_rate_limit_max=2, trusted_proxies="127.0.0.0/8", reads_require_api_key=False
    ) as r:
        key = await new_key(r)
        auth = {"Authorization": f"Bearer {key}"}
        job = (await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=auth)).json()
        made_up = ["garbage-1", "", "10.0.0.1%eth0", "1.2.3.4:80", "fe80::1%1", "x" * 300]
        answers = [
            await r.http.get(job["status_url"], headers={"X-Forwarded-For": value}) for value in made_up
        ]
        # All of them are the proxy's own address (the peer): one budget of 2.
        assert [a.status_code for a in answers] == [200, 200, 429, 429, 429, 429]
        # Real addresses the proxy vouches for have their own budgets.
        for address in ("192.0.2.1", "192.0.2.2"):
            resp = await r.http.get(job["status_url"], headers={"X-Forwarded-For": address})
            assert resp.status_code == 200, resp.text
        kv = await js.key_value(subjects.KV_RATELIMITS)
        reads = [k for k in await kv.keys() if k.startswith("r.")]
        assert len(reads) == 3


def test_client_address_walks_from_the_peer() -> None:
    from conveyor.receiver.sources import parse_networks
    from conveyor.receiver.state import client_address

    trusted = parse_networks("10.0.0.0/8, 127.0.0.1/32, fd00::/8")
    cases = [
        # (peer, X-Forwarded-For fields, client)
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer is the client
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["198.51.100.66, 198.51.100.1"], "198.51.100.1"),  # the right-most untrusted
        ("10.0.0.2", ["198.51.100.66", "198.51.100.1"], "198.51.100.1"),  # over two fields
        ("10.0.0.2", ["198.51.100.66, 198.51.100.1, 10.1.1.1"], "198.51.100.1"),  # through a proxy
        ("10.0.0.2", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # every hop trusted: the left-most
        ("10.0.0.2", ["198.51.100.66, junk"], "10.0.0.2"),  # not an address: the proxy that passed it
        ("10.0.0.2", ["198.51.100.66, junk, 10.1.1.1"], "10.1.1.1"),
        ("10.0.0.2", [" 198.51.100.1 "], "198.51.100.1"),
        ("10.0.0.2", ["2001:db8::1"], "2001:db8::1"),
        ("10.0.0.2", ["2001:DB8:0::1"], "2001:db8::1"),  # one spelling per address
        ("10.0.0.2", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),  # a dual-stack peer
        ("10.0.0.2", [", ".join(["10.3.3.3"] * 40)], "10.3.3.3"),  # a long chain: walked 16 deep
        ("fd00::5", ["198.51.100.1"], "198.51.100.1"),
    ]
    for peer, fields, want in cases:
        assert client_address(peer, fields, trusted) == want, (peer, fields)
    assert client_address("10.0.0.2", ["198.51.100.1"], ()) == "10.0.0.2"  # no proxies trusted


async def test_rate_limited_webhook_gets_429_with_retry_after(start_receiver, lovable, bus) -> None:
    async with start_receiver(rate_limit_max=2, rate_limit_window_ms=60_000) as r:
        answers = []
        for _ in range(3):
            body, headers = _valid(lovable, project_id="p1")
            answers.append(await r.http.post(URL, content=body, headers=headers))
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
        refused = answers[2]
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-RateLimit-Limit"] == "2"
        # Another project (the signed body's project_id) has its own budget.
        body, headers = _valid(lovable, project_id="p2")
        resp = await r.http.post(URL, content=body, headers=headers)
        assert resp.status_code == 202
        assert await bus.count("EVENTS") == 3


async def test_a_repeat_after_the_duplicate_window_is_answered_as_a_duplicate(receiver, lovable, bus) -> None:
    """Once EVENTS has forgotten a delivery id (a day later), a repeat is stored again, but the
    job's record (kept 7 days) shows it was accepted before: the sender hears "duplicate" and
    the same job id (the executor, finding the job over, sends no second callback)."""
    body, headers = _valid(lovable, id="evt_late")
    first = await receiver.http.post(URL, content=body, headers=headers)
    await forget_message_ids(bus.js, "EVENTS", "events.probe")
    again = await receiver.http.post(URL, content=body, headers=lovable.headers(body))
    assert first.status_code == again.status_code == 202
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert again.json()["job_id"] == first.json()["job_id"]
    assert await bus.count("EVENTS") == 2  # stored again: only the record tells
    assert len(await bus.job_keys()) == 1


async def test_replayed_delivery_is_accepted_once(receiver, lovable, bus) -> None:
    body, headers = _valid(lovable, id="evt_same")
    first = await receiver.http.post(URL, content=body, headers=headers)
    again = await receiver.http.post(URL, content=body, headers=lovable.headers(body))
    assert first.status_code == again.status_code == 202
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert first.json()["job_id"] == again.json()["job_id"]
    assert await bus.count("EVENTS") == 1
    assert len(await bus.job_keys()) == 1


async def test_a_body_the_bus_cannot_carry_gets_413_not_a_retry_later(receiver, lovable, bus) -> None:
    # Under MAX_BODY_BYTES (1 MiB), but with the event's envelope over the server's
    # max_payload (1 MiB by default): a 503 would have the sender retry forever.
    limit = receiver.rt.bus.max_payload
    body = lovable.body(data={"blob": ""})
    body = body.replace(b'"blob": ""', b'"blob": "' + b"x" * (limit - len(body) - 16) + b'"')
    assert len(body) < limit
    resp = await receiver.http.post(URL, content=body, headers=lovable.headers(body))
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"] == "payload_too_large"
    assert "max_payload" in resp.json()["message"]
    await bus.assert_nothing_accepted()
