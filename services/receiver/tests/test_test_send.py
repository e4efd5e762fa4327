"""POST /api/webhooks/test: the request goes out on ctl.test_send.<id> (stream CONTROL) and
the answer is what the deliverer records under test_<id> in KV deliveries. The test plays
the deliverer's side of that contract on JetStream itself."""

from __future__ import annotations

import asyncio
import datetime as dt

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import DeliveryAttempt, DeliveryLog, encoder, send_test_decoder


async def answer_next_request(
    js: JetStreamContext, *, status_code: int | None, outcome: str, seq: int = 1
) -> str:
    """Take test-send request number ``seq`` from CONTROL and record an outcome for it."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)
    sub = await js.subscribe("ctl.test_send.>", stream=subjects.CONTROL, config=config)
    try:
        msg = await sub.next_msg(timeout=10)
    finally:
        await sub.unsubscribe()
    req = send_test_decoder.decode(msg.data)
    assert msg.subject == subjects.control("test_send", req.id)
    assert msg.headers and msg.headers[subjects.MSG_ID] == f"test-{req.id}"
    attempt = DeliveryAttempt(
        at=dt.datetime.now(dt.UTC),
        url=req.url,
        status_code=status_code,
        latency_ms=3.2,
        outcome=outcome,  # type: ignore[arg-type]
        error=None if outcome == "delivered" else "HTTP 500",
    )
    log = DeliveryLog(job_id=f"test_{req.id}", attempts=[attempt], delivered=outcome == "delivered")
    kv = await js.key_value(subjects.KV_DELIVERIES)
    await kv.put(f"test_{req.id}", encoder.encode(log))
    return req.id


async def test_reports_the_deliverers_outcome(receiver, new_key, js) -> None:
    h = {"Authorization": f"Bearer {await new_key(receiver)}"}
    cases = ((204, "delivered", "delivered"), (500, "failed", "failed"))
    for seq, (status_code, outcome, expected) in enumerate(cases, start=1):
        peer = asyncio.create_task(answer_next_request(js, status_code=status_code, outcome=outcome, seq=seq))
        await asyncio.sleep(0)
        resp = await receiver.http.post(
            "/api/webhooks/test", json={"url": "https://hooks.test/in"}, headers=h
        )
        test_id = await peer
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["id"], body["status"], body["url"]) == (test_id, expected, "https://hooks.test/in")
        assert body["attempts"][0]["status_code"] == status_code
        assert body["status_url"] == f"/api/webhooks/test/{test_id}"


async def test_pending_then_status_url(start_receiver, new_key, js) -> None:
    async with start_receiver(test_send_wait_s=0.3) as r:
        h = {"Authorization": f"Bearer {await new_key(r)}"}
        resp = await r.http.post("/api/webhooks/test", json={"url": "http://127.0.0.1:9/x"}, headers=h)
        assert resp.status_code == 202
        pending = resp.json()
        assert pending["status"] == "pending" and resp.headers["Location"] == pending["status_url"]
        again = await r.http.get(pending["status_url"], headers=h)
        assert again.status_code == 202 and again.json()["status"] == "pending"

        await answer_next_request(js, status_code=200, outcome="delivered")
        done = await r.http.get(pending["status_url"], headers=h)
        assert done.status_code == 200 and done.json()["status"] == "delivered"
        assert done.json()["url"] == "http://127.0.0.1:9/x"

        assert (await r.http.get("/api/webhooks/test/0123abcd", headers=h)).status_code == 404


async def test_validation_and_auth(receiver, new_key, bus) -> None:
    assert (await receiver.http.post("/api/webhooks/test", json={"url": "https://x.test"})).status_code == 401
    h = {"Authorization": f"Bearer {await new_key(receiver)}"}
    for body in ({"url": "not a url"}, {"url": "ftp://x.test/"}, {"uri": "https://x.test"}, {"url": ""}):
        resp = await receiver.http.post("/api/webhooks/test", json=body, headers=h)
        assert resp.status_code == 422, body
    # Parseable, but no resolver can take the host: refused with the reason.
    for url, why in (
        (f"https://{'a' * 64}.x.test/", "longer than 63 characters"),
        ("https://hooks..x.test/", "empty label"),
    ):
        resp = await receiver.http.post("/api/webhooks/test", json={"url": url}, headers=h)
        assert resp.status_code == 422 and resp.json()["field"] == "url", resp.text
        assert why in resp.json()["message"]
    assert await bus.count(subjects.CONTROL) == 0


async def test_credentials_in_the_url_are_sent_on_but_not_answered(receiver, new_key, js) -> None:
    h = {"Authorization": f"Bearer {await new_key(receiver)}"}
    url = "https://hook-user:s3cret-pw@hooks.test/in"
    peer = asyncio.create_task(answer_next_request(js, status_code=204, outcome="delivered"))
    await asyncio.sleep(0)
    resp = await receiver.http.post("/api/webhooks/test", json={"url": url}, headers=h)
    await peer
    assert resp.status_code == 200, resp.text
    assert resp.json()["url"] == "https://hook-user:***@hooks.test/in"
    # The deliverer gets the URL as given: it sends the credentials as Basic auth.
    msg = await js.get_last_msg(subjects.CONTROL, "ctl.test_send.>")
    assert send_test_decoder.decode(msg.data).url == url


async def test_a_test_send_is_its_projects(receiver, js, make_project, project_key) -> None:
    await make_project(receiver, "alpha")
    await make_project(receiver, "beta")
    alpha, beta = await project_key(receiver, "alpha"), await project_key(receiver, "beta")
    peer = asyncio.create_task(answer_next_request(js, status_code=204, outcome="delivered"))
    await asyncio.sleep(0)
    resp = await receiver.http.post(
        "/api/webhooks/test", json={"url": "https://hooks.test/in"}, headers=alpha
    )
    test_id = await peer
    assert resp.status_code == 200, resp.text
    # The request names the project whose secret the deliverer signs it with.
    sub = await js.subscribe("ctl.test_send.>", stream=subjects.CONTROL, config=ConsumerConfig())
    sent = send_test_decoder.decode((await sub.next_msg(timeout=5)).data)
    await sub.unsubscribe()
    assert (sent.id, sent.project) == (test_id, "alpha")
    assert (await receiver.http.get(f"/api/webhooks/test/{test_id}", headers=alpha)).status_code == 200
    theirs = await receiver.http.get(f"/api/webhooks/test/{test_id}", headers=beta)
    missing = await receiver.http.get(f"/api/webhooks/test/{'0' * 32}", headers=beta)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"] == "test_not_found"
