"""POST /api/webhooks/test: ask the deliverer to send a signed test event, report the outcome.

The request goes out on ``ctl.test_send.<id>`` (stream CONTROL); the deliverer records the
attempt under ``test_<id>`` in KV ``deliveries``. The receiver polls that key for up to
TEST_SEND_WAIT_S: a final outcome answers 200 (status delivered or failed); otherwise 202
with status "pending" and a status URL (GET /api/webhooks/test/{id}) to poll later.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from aiohttp import web

from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.schemas import TestSendCreate, TestSendOutcome
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import (
    DeliveryLog,
    SendTestEvent,
    delivery_log_decoder,
    encoder,
    send_test_decoder,
    utcnow,
)
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.urls import callback_url_problem, redact_url

_create_decoder = msgspec.json.Decoder(TestSendCreate)
_FINAL = {"delivered", "failed", "dead_lettered", "skipped"}
_POLL_S = 0.1


def _key(test_id: str) -> str:
    return f"test_{test_id}"


def _status_url(st: Receiver, test_id: str) -> str:
    return f"{st.settings.public_url.rstrip('/')}/api/webhooks/test/{test_id}"


def _outcome(st: Receiver, test_id: str, url: str | None, log: DeliveryLog | None) -> TestSendOutcome:
    status = "pending"
    if log is not None and log.delivered:
        status = "delivered"
    elif log is not None and log.attempts and log.attempts[-1].outcome in _FINAL:
        status = "failed"
    attempts = log.attempts if log is not None else []
    if url is None and attempts:
        url = attempts[-1].url
    return TestSendOutcome(
        id=test_id, status=status, status_url=_status_url(st, test_id), url=url, attempts=attempts
    )


async def _read(st: Receiver, test_id: str) -> DeliveryLog | None:
    kv = st.bucket(subjects.KV_DELIVERIES)
    with st.nats_errors():
        try:
            entry = await kv.get(_key(test_id))
        except bus.NotFound:
            return None
    return delivery_log_decoder.decode(entry.value or b"")


async def create(request: web.Request) -> web.Response:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    js = st.require_nats()
    body: TestSendCreate = decode_json(_create_decoder, await st.read_body(request))
    project = st.writable(principal, body.project)
    if problem := callback_url_problem(body.url):
        raise HTTPError(422, "invalid_field", f"url: {problem}", field="url")
    test_id = uuid.uuid4().hex
    req = SendTestEvent(id=test_id, url=body.url, requested_at=utcnow(), project=project.project_id)
    with st.nats_errors():
        await js.publish(
            subjects.control("test_send", test_id),
            encoder.encode(req),
            timeout_s=st.settings.publish_timeout_s,
            stream=subjects.CONTROL,
            msg_id=f"test-{test_id}",
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + st.settings.test_send_wait_s
    while True:
        outcome = _outcome(st, test_id, redact_url(body.url), await _read(st, test_id))
        if outcome.status != "pending":
            return respond(200, outcome)
        if loop.time() >= deadline or st.rt.stopping.is_set():
            return respond(202, outcome, {"Location": outcome.status_url})
        await asyncio.sleep(_POLL_S)


async def status(request: web.Request) -> web.Response:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    test_id = request.match_info["test_id"]
    missing = HTTPError(404, "test_not_found", f"no test send {test_id[:100]!r}")
    if not subjects.is_token(test_id):
        raise missing
    # The request says whose it is (CONTROL keeps it a day, longer than a test send is asked for).
    js = st.require_nats()
    with st.nats_errors():
        try:
            sent = await js.last_msg(subjects.CONTROL, subjects.control("test_send", test_id))
        except bus.NotFound:
            raise missing from None
    if not st.sees(principal, send_test_decoder.decode(sent.data).project):
        raise missing  # another project's, answered as a missing one
    log = await _read(st, test_id)
    outcome = _outcome(st, test_id, None, log)
    return respond(200 if outcome.status != "pending" else 202, outcome)
