"""GET /api/jobs/{id}/stream: events from a KV watch, id: lines, Last-Event-ID, heartbeats,
and the stream closing after the terminal state."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from nats.js import JetStreamContext

from conveyor.receiver.state import STATE
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import encoder, job_record_decoder
from conveyor.shared.testing.fixtures import eventually


async def events(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE body into {"id", "event", "data"} dicts; comments come as {"comment"}."""
    current: dict[str, Any] = {}
    async for line in resp.aiter_lines():
        if line == "":
            if current:
                yield current
            current = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value


async def update(js: JetStreamContext, job_id: str, **changes: Any) -> None:
    kv = await js.key_value(subjects.KV_JOBS)
    record = job_record_decoder.decode((await kv.get(job_id)).value)
    changes.setdefault("updated_at", dt.datetime.now(dt.UTC))
    await kv.put(job_id, encoder.encode(msgspec.structs.replace(record, **changes)))


async def test_stream_follows_the_job_to_its_end(start_receiver, new_key, js) -> None:
    async with start_receiver(sse_heartbeat_s=0.2) as r:
        key = await new_key(r)
        h = {"Authorization": f"Bearer {key}"}
        job = (await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=h)).json()
        seen: list[dict[str, Any]] = []
        async with r.http.stream("GET", job["stream_url"], headers=h) as resp:
            assert resp.status_code == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["X-RateLimit-Limit"] == "60"
            async for ev in events(resp):
                seen.append(ev)
                data = [e for e in seen if "data" in e]
                if len(data) == 1 and ev.get("comment") == "heartbeat":
                    await update(js, job["job_id"], status="processing", progress=10)
                elif data and data[-1]["data"]["progress"] == 10 and "data" in ev:
                    await update(js, job["job_id"], progress=60)
                elif data and data[-1]["data"]["progress"] == 60 and "data" in ev:
                    await update(js, job["job_id"], status="completed", progress=100)
        # The server closed the stream after "completed".
        data = [e for e in seen if "data" in e]
        assert [(e["event"], e["data"]["status"], e["data"]["progress"]) for e in data] == [
            ("status", "queued", 0),
            ("status", "processing", 10),
            ("progress", "processing", 60),
            ("status", "completed", 100),
        ]
        ids = [int(e["id"]) for e in data]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert {"comment": "heartbeat"} in seen

        # Resuming after the second event replays only what came after it.
        async with r.http.stream(
            "GET", job["stream_url"], headers=h | {"Last-Event-ID": str(ids[1])}
        ) as resp:
            replay = [e async for e in events(resp) if "data" in e]
        assert [e["data"]["status"] for e in replay] == ["completed"]


async def test_stream_of_unknown_job_is_404(receiver, new_key) -> None:
    key = await new_key(receiver)
    resp = await receiver.http.get("/api/jobs/job_missing/stream", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 404 and resp.json()["error"] == "job_not_found"


async def test_any_replica_streams_a_job_another_accepted(start_receiver, new_key, js, lovable) -> None:
    async with start_receiver() as a, start_receiver() as b:
        key = await new_key(a)
        body = lovable.body()
        job = (await a.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))).json()
        h = {"Authorization": f"Bearer {key}"}
        async with b.http.stream("GET", job["stream_url"], headers=h) as resp:
            first = True
            async for ev in events(resp):
                if "data" in ev and first:
                    first = False
                    assert ev["data"]["status"] == "queued"
                    await update(js, job["job_id"], status="failed", error="boom")
                elif "data" in ev:
                    assert ev["data"]["status"] == "failed" and ev["data"]["error"] == "boom"
        assert not first  # saw the queued event, then the stream ended after "failed"


async def test_streams_are_capped_per_client_and_in_total(start_receiver, new_key) -> None:
    async with (
        start_receiver(
            sse_max_streams=5,
            sse_max_streams_per_client=2,
            trusted_proxies="127.0.0.0/8",
            reads_require_api_key=False,  # keyless streams are counted per client address
        ) as r,
        contextlib.AsyncExitStack() as open_streams,
    ):
        key = await new_key(r)
        keyed = {"Authorization": f"Bearer {key}"}
        job = (await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=keyed)).json()
        url = job["stream_url"]

        def client(address: str) -> dict[str, str]:
            return {"X-Forwarded-For": address}  # the trusted proxy (loopback) names the client

        async def start(headers: dict[str, str]) -> httpx.Response:
            return await open_streams.enter_async_context(r.http.stream("GET", url, headers=headers))

        async def refused(headers: dict[str, str], why: str) -> None:
            async with r.http.stream("GET", url, headers=headers) as resp:
                assert resp.status_code == 429
                body = json.loads(await resp.aread())
            assert body["error"] == "too_many_streams" and why in body["message"], body
            assert resp.headers["Retry-After"] == "5"

        first = await start(client("198.51.100.1"))
        await start(client("198.51.100.1"))
        assert first.status_code == 200
        # Without a key, a client address has two.
        await refused(client("198.51.100.1"), "for this client")
        # With one, the key has two, wherever it comes from.
        await start(keyed | client("198.51.100.2"))
        await start(keyed | client("198.51.100.3"))
        await refused(keyed | client("198.51.100.4"), "for this client")
        # And the process has five.
        await start(client("198.51.100.4"))
        await refused(client("198.51.100.5"), "serves 5 streams")
        # A stream that ends gives its slot back.
        await first.aclose()

        async def room() -> None:
            async with r.http.stream("GET", url, headers=client("198.51.100.5")) as resp:
                assert resp.status_code == 200

        await eventually(room)
    assert r.rt.app[STATE].streams.open == 0 and r.rt.app[STATE].streams.by_client == {}


async def test_an_api_key_in_the_query_is_taken_only_by_streams(receiver, new_key, lovable, bus) -> None:
    key = await new_key(receiver)
    job = (
        await receiver.http.post(
            "/api/jobs", json={"agent": "dev", "prompt": "x"}, headers={"Authorization": f"Bearer {key}"}
        )
    ).json()
    body = lovable.body()
    elsewhere = [
        ("GET", job["status_url"], None),
        ("GET", f"{job['status_url']}/result", None),
        ("POST", "/api/jobs", b'{"agent": "dev", "prompt": "y"}'),
        ("GET", "/api/admin/keys", None),
        ("POST", "/api/webhooks/lovable", body),
    ]
    for method, path, content in elsewhere:
        for query in (f"api_key={key}", f"api%5Fkey={key}", "x=1&api_key="):
            headers = lovable.headers(body) if "webhooks" in path else {}
            resp = await receiver.http.request(method, f"{path}?{query}", content=content, headers=headers)
            assert resp.status_code == 400, (method, path, query, resp.text)
            assert resp.json()["error"] == "api_key_in_query" and resp.json()["field"] == "api_key"
    # A header alongside does not make it acceptable: the key is in the URL all the same.
    bearer = {"Authorization": f"Bearer {key}"}
    resp = await receiver.http.get(f"{job['status_url']}?api_key={key}", headers=bearer)
    assert resp.status_code == 400
    assert await bus.count(subjects.EVENTS) == 0 and await bus.count(subjects.JOBS) == 1
    # EventSource cannot send a header: the stream takes it (and checks it).
    async with receiver.http.stream("GET", f"{job['stream_url']}?api_key={key}") as resp:
        assert resp.status_code == 200 and resp.headers["X-RateLimit-Limit"] == "60"
    resp = await receiver.http.get(f"{job['stream_url']}?api_key=cvk_wrong")
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_api_key")
    # A method no route takes is answered 405 first, as on every other path (what the fuzzer
    # found: TRACE on a stream with ?api_key= got the 400).
    resp = await receiver.http.request("TRACE", f"{job['stream_url']}?api_key={key}")
    assert resp.status_code == 405, resp.text
