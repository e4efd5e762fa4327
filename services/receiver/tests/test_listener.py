"""The lean webhook path (listener.py) against aiohttp's: same answers, and every request it
does not take reaches aiohttp intact, on the same connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import generate_latest

from conveyor.receiver.listener import parse_head
from conveyor.shared.contracts import subjects
from conveyor.shared.testing.rawhttp import Raw


def post(body: bytes, headers: dict[str, str], path: str = "/api/webhooks/lovable", **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in {**headers, **extra}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def metric(r: Any, name: str, **labels: str) -> float:
    text = generate_latest(r.rt.registry).decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}" if want else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def handed_over(r: Any) -> float:
    return metric(r, "receiver_connections_handed_over_total")


async def test_a_plain_webhook_is_answered_on_the_lean_path_and_lands_in_jetstream(
    receiver, lovable, bus
) -> None:
    body = lovable.body(id="evt_lean_1")
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(post(body, lovable.headers(body), **{"X-Correlation-ID": "corr-lean-1"}))
    answer = await conn.answer()
    conn.close()
    assert answer.status == 202, answer.body
    job = answer.json()
    assert job["duplicate"] is False
    assert answer.headers["location"] == job["status_url"]
    assert answer.headers["x-correlation-id"] == "corr-lean-1"
    assert answer.headers["content-type"] == "application/json"
    assert "date" in answer.headers
    assert "server" not in answer.headers  # aiohttp names itself; the lean path does not
    assert handed_over(receiver) == 0
    route = {"method": "POST", "route": "/api/webhooks/{source}", "status": "202"}
    assert metric(receiver, "http_requests_total", **route) == 1
    assert await bus.count(subjects.EVENTS) == 1
    assert job["job_id"] in await bus.job_keys()


async def _answers(r: Any, lovable: Any) -> list[tuple[int, Any, dict[str, str]]]:
    """The same eight requests, one connection each; what a caller can see of each answer."""
    ok = lovable.body(id="evt_same_1")
    odd = lovable.body("no.such_type", id="evt_same_2")
    cases = [
        post(ok, lovable.headers(ok)),
        post(ok, lovable.headers(ok)),  # a repeat: 202 duplicate
        post(ok, lovable.headers(ok, secret="wrong")),
        post(ok, lovable.headers(ok, timestamp=1)),
        post(ok, lovable.headers(ok), path="/api/webhooks/nobody"),
        post(b"   ", lovable.headers(b"   ")),
        post(b"{not json", lovable.headers(b"{not json")),
        post(odd, lovable.headers(odd)),
    ]
    seen = []
    for request in cases:
        conn = await Raw.open(r.rt.http_port)
        await conn.send(request)
        a = await conn.answer()
        conn.close()
        keep = {k: v for k, v in a.headers.items() if k in ("location", "retry-after", "content-type")}
        keep |= {k: "present" for k in a.headers if k.startswith("x-ratelimit")}
        seen.append((a.status, a.json(), keep))
    return seen


async def test_the_lean_path_answers_as_aiohttp_does(start_receiver, lovable, nats_url) -> None:
    async with start_receiver() as fast:
        lean = await _answers(fast, lovable)
        assert handed_over(fast) == 1  # the unknown source: aiohttp's router answers it
    # A fresh stream for the second receiver, so the first answer is not a duplicate there.
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.delete_stream(subjects.EVENTS)
    kv = await js.key_value(subjects.KV_JOBS)
    for key in await kv.keys():
        await kv.purge(key)
    await nc.close()
    async with start_receiver(fast_webhooks=False) as slow:
        aio = await _answers(slow, lovable)
    assert [s for s, _, _ in lean] == [202, 202, 401, 401, 404, 400, 400, 422]
    assert lean == aio


async def test_rate_limit_refusals_carry_the_limit_headers(start_receiver, lovable) -> None:
    async with start_receiver(rate_limit_max=1) as r:
        conn = await Raw.open(r.rt.http_port)
        statuses = []
        for n in range(2):
            body = lovable.body(id=f"evt_rl_{n}")
            await conn.send(post(body, lovable.headers(body)))
            a = await conn.answer()
            statuses.append(a.status)
            assert a.headers["x-ratelimit-limit"] == "1"
        conn.close()
        assert statuses == [202, 429]
        assert a.json()["error"] == "rate_limited"
        assert handed_over(r) == 0


async def test_pipelined_and_split_requests_are_answered_in_order(receiver, lovable) -> None:
    bodies = [lovable.body(id=f"evt_pipe_{n}") for n in range(3)]
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(b"".join(post(b, lovable.headers(b)) for b in bodies[:2]))
    third = post(bodies[2], lovable.headers(bodies[2]))
    for i in range(0, len(third), 7):  # a few bytes at a time
        await conn.send(third[i : i + 7])
        await asyncio.sleep(0)
    ids = [(await conn.answer()).json()["job_id"] for _ in range(3)]
    conn.close()
    status_ids = [json.loads(b)["id"] for b in bodies]
    assert len(set(ids)) == 3
    assert ids == [receiver.job_id("lovable", i) for i in status_ids]
    assert handed_over(receiver) == 0


async def test_other_requests_on_the_same_connection_go_to_aiohttp(receiver, lovable) -> None:
    conn = await Raw.open(receiver.rt.http_port)
    first = lovable.body(id="evt_mixed_1")
    await conn.send(post(first, lovable.headers(first)))
    job = (await conn.answer()).json()
    # Then a GET of that job on the same connection: aiohttp serves it, and the rest.
    await conn.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    live = await conn.answer()
    assert live.status == 200 and live.json() == {"status": "ok"}
    assert "aiohttp" in live.headers.get("server", "")
    second = lovable.body(id="evt_mixed_2")
    await conn.send(post(second, lovable.headers(second)))
    again = await conn.answer()
    conn.close()
    assert again.status == 202 and again.json()["job_id"] != job["job_id"]
    assert "aiohttp" in again.headers.get("server", "")
    assert handed_over(receiver) == 1


@pytest.mark.parametrize(
    ("name", "extra", "want"),
    [
        ("chunked", {"Transfer-Encoding": "chunked"}, 202),
        ("expect", {"Expect": "100-continue"}, 202),
        ("traceparent", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, 202),
    ],
)
async def test_framing_it_does_not_take_is_aiohttps(receiver, lovable, name, extra, want) -> None:
    body = lovable.body(id=f"evt_{name}")
    headers = lovable.headers(body) | extra
    if name == "chunked":
        lines = ["POST /api/webhooks/lovable HTTP/1.1", "Host: x", *[f"{k}: {v}" for k, v in headers.items()]]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        request = post(body, headers)
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(request)
    a = await conn.answer()
    if a.status == 100:
        a = await conn.answer()
    conn.close()
    assert a.status == want, a.body
    assert "aiohttp" in a.headers.get("server", "")
    assert handed_over(receiver) == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Both framings at once: the classic request-smuggling shape.
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # Two different lengths.
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        # A header folded onto the next line (obsolete, refused by aiohttp).
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-A: b\r\n c\r\n\r\n{}",
        # A bare LF inside the head.
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\nContent-Length: 2\r\n\r\n{}",
        # A space before the colon.
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}",
    ],
)
async def test_ambiguous_requests_are_aiohttps_to_judge(receiver, request_bytes, bus) -> None:
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(request_bytes)
    a = await conn.answer()
    conn.close()
    assert 400 <= a.status < 500, (a.status, a.body)
    assert handed_over(receiver) == 1
    await bus.assert_nothing_accepted()


async def test_a_body_over_the_limit_gets_aiohttps_413(start_receiver, lovable, bus) -> None:
    async with start_receiver(max_body_bytes=1000) as r:
        body = lovable.body(data={"x": "y" * 2000})
        conn = await Raw.open(r.rt.http_port)
        await conn.send(post(body, lovable.headers(body)))
        a = await conn.answer()
        conn.close()
        assert a.status == 413 and a.json()["error"] == "payload_too_large"
        assert handed_over(r) == 1
    await bus.assert_nothing_accepted()


async def test_connection_close_is_honoured(receiver, lovable) -> None:
    body = lovable.body(id="evt_close")
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(post(body, lovable.headers(body), Connection="close"))
    a = await conn.answer()
    assert a.status == 202 and a.headers["connection"] == "close"
    assert await conn.closed()


async def test_stopping_closes_idle_connections(start_receiver, lovable) -> None:
    async with start_receiver() as r:
        idle = await Raw.open(r.rt.http_port)
        body = lovable.body(id="evt_warm")
        await idle.send(post(body, lovable.headers(body)))
        assert (await idle.answer()).status == 202
    assert await idle.closed()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0",
        b"POST /api/webhooks/lovable HTTP/1.0\r\nContent-Length: 0",
        b"POST /api/webhooks/lovable?x=1 HTTP/1.1\r\nContent-Length: 0",
        b"POST /api/webhooks/l%6Fvable HTTP/1.1\r\nContent-Length: 0",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: +5",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nX-Name: caf\xc3\xa9",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nX-Nul: a\x00b",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nConnection: Upgrade",
        b"POST /api/webhooks/lovable HTTP/1.1",  # no length
        # What aiohttp refuses (a 400 there): a repeated singleton header, too many headers,
        # a header line over its limit.
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nContent-Type: a\r\nContent-Type: b",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nUser-Agent: a\r\nUser-Agent: b",
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0" + b"\r\nX-A: b" * 128,
        b"POST /api/webhooks/lovable HTTP/1.1\r\nContent-Length: 0\r\nX-A: " + b"b" * 8190,
    ],
)
def test_parse_head_takes_only_plain_webhook_posts(head: bytes) -> None:
    assert parse_head(head) is None


def test_parse_head_reads_a_plain_one() -> None:
    head = parse_head(
        b"POST /api/webhooks/lovable HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n"
        b"X-Lovable-Signature:  sha256=ab \r\nconnection: keep-alive, close"
    )
    assert head is not None
    assert (head.source, head.length, head.close) == ("lovable", 12, True)
    assert head.headers.get("x-lovable-SIGNATURE") == "sha256=ab"
    assert "X-LOVABLE-SIGNATURE" in head.headers


async def test_a_body_in_small_pieces_is_read_once_its_head_is(receiver, lovable, monkeypatch) -> None:
    """A sender dribbling a large body is not a cost multiplier: the head is parsed once, the
    pieces are appended in place."""
    from conveyor.receiver import listener

    calls = []
    real = listener.parse_head

    def counting(head: bytes) -> Any:
        calls.append(len(head))
        return real(head)

    monkeypatch.setattr(listener, "parse_head", counting)
    body = lovable.body(id="evt_dribble", data={"blob": "z" * 200_000})
    request = post(body, lovable.headers(body))
    split = request.index(b"\r\n\r\n") + 4
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(request[:split])
    for i in range(split, len(request), 1000):
        await conn.send(request[i : i + 1000])
    a = await conn.answer()
    conn.close()
    assert a.status == 202, a.body
    assert len(calls) == 1
    assert handed_over(receiver) == 0


async def test_after_a_half_close_every_pipelined_request_is_answered(receiver, lovable, bus) -> None:
    bodies = [lovable.body(id=f"evt_half_{n}") for n in range(3)]
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(b"".join(post(b, lovable.headers(b)) for b in bodies))
    conn.writer.write_eof()  # the client sends no more, and still reads
    answers = [await conn.answer() for _ in range(3)]
    assert [a.status for a in answers] == [202, 202, 202]
    assert all("connection" not in a.headers for a in answers)
    assert await conn.closed()
    assert await bus.count(subjects.EVENTS) == 3


async def test_a_half_close_reaches_aiohttp_after_a_hand_over(receiver, lovable) -> None:
    # The webhook is in flight when EOF comes; the next request is aiohttp's to judge (chunked,
    # and never finished). aiohttp must hear of the EOF and close, as it does on its own path,
    # rather than wait for the rest of a body that cannot come.
    body = lovable.body()
    unfinished = b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
    conn = await Raw.open(receiver.rt.http_port)
    await conn.send(post(body, lovable.headers(body)) + unfinished)
    conn.writer.write_eof()
    assert (await conn.answer()).status == 202
    # Closed within the timeout (read() returns at EOF); aiohttp may have answered the
    # unfinished request from its head (no API key) first, or not, as on its own path.
    rest = await asyncio.wait_for(conn.reader.read(), 10)
    assert rest == b"" or rest.startswith(b"HTTP/1.1 401"), rest
    assert handed_over(receiver) == 1
