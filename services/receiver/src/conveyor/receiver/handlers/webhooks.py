"""POST /api/webhooks/{source}: verify, rate-limit, publish to EVENTS, answer 202 with the job."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from conveyor.receiver.schemas import Accepted, Ignored
from conveyor.receiver.state import CORRELATION_ID, STATE, Receiver
from conveyor.shared import ids, subjects
from conveyor.shared.events import JobRecord, WebhookEvent, encoder, utcnow
from conveyor.shared.http import HTTPError

_OUTCOME = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def respond(status: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def accepted(st: Receiver, job_id: str, duplicate: bool) -> web.Response:
    """The 202 for work now in JetStream: where to read the job, and whether it is a repeat."""
    status_url, stream_url = st.urls(job_id)
    return respond(
        202,
        Accepted(job_id=job_id, status_url=status_url, stream_url=stream_url, duplicate=duplicate),
        {"Location": status_url},
    )


async def receive(request: web.Request) -> web.Response:
    st = request.app[STATE]
    name = request.match_info["source"]
    source = st.sources.get(name)
    if source is None:
        raise HTTPError(404, "unknown_source", f"no webhook source named {name[:64]!r}")
    try:
        return await _receive(request, st, name)
    except HTTPError as exc:
        st.metrics.webhook(name, _OUTCOME.get(exc.status, "bad_request")).inc()
        raise


async def _receive(request: web.Request, st: Receiver, name: str) -> web.Response:
    source = st.sources[name]
    if source.networks and not source.allows(st.client_address(request)):
        raise HTTPError(403, "forbidden_address", "this address may not send to this source")
    st.require_nats()
    body = await st.read_body(request)
    inbound = source.verify(request.headers, body)
    if inbound.ignored:
        st.metrics.webhook(name, "ignored").inc()
        return respond(
            202, Ignored(status="ignored", event=inbound.event_type, delivery_id=inbound.delivery_id)
        )
    project = inbound.project_id
    if source.scheme == "lovable":
        project = request.headers.get("X-Lovable-Project-Id") or project
    await st.limit_webhook(request, name, project)

    job_id = ids.job_id_for_delivery(name, inbound.delivery_id)
    now = utcnow()
    correlation = request[CORRELATION_ID]
    event = WebhookEvent(
        event_id=inbound.delivery_id,
        job_id=job_id,
        source=name,
        type=inbound.event_type,
        received_at=now,
        payload=msgspec.Raw(body),
        project_id=inbound.project_id,
        callback_url=source.callback_url,
        correlation_id=correlation,
    )
    record = JobRecord(
        job_id=job_id,
        status="queued",
        created_at=now,
        updated_at=now,
        source=name,
        event_type=inbound.event_type,
        project_id=inbound.project_id,
        callback_url=source.callback_url,
    )
    duplicate = await st.accept(
        subject=st.event_subject(name, inbound.event_type),
        stream=subjects.EVENTS,
        data=encoder.encode(event),
        msg_id=f"{name}:{inbound.delivery_id}",
        record=record,
        correlation_id=correlation,
    )
    st.metrics.webhook(name, "duplicate" if duplicate else "accepted").inc()
    now_s = time.time()
    st.last_webhook[name] = now_s
    st.metrics.last_webhook_at(name).set(now_s)
    return accepted(st, job_id, duplicate)
