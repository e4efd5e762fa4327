"""POST /api/webhooks/{source}: verify, rate-limit, publish to EVENTS, answer 202 with the job."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import msgspec
from aiohttp import web

from conveyor.receiver.schemas import Accepted, Ignored
from conveyor.receiver.sources import Source, peer_host
from conveyor.receiver.state import CORRELATION_ID, RATE_LIMIT, STATE, Receiver
from conveyor.shared.contracts import ids, lifecycle, subjects
from conveyor.shared.contracts.events import WebhookEvent, encoder, utcnow
from conveyor.shared.domain.ratelimit import Decision
from conveyor.shared.runtime.http import HTTPError

_OUTCOME = {
    400: "bad_request",
    401: "unauthorized",
    402: "budget_exceeded",
    403: "forbidden",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def respond(status: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> web.Response:
    return as_response(Answer(status, encoder.encode(body), headers))


def as_response(answer: Answer) -> web.Response:
    return web.Response(
        body=answer.body, status=answer.status, content_type="application/json", headers=answer.headers
    )


def accepted(st: Receiver, job_id: str, duplicate: bool) -> web.Response:
    return as_response(accepted_answer(st, job_id, duplicate))


def accepted_answer(st: Receiver, job_id: str, duplicate: bool) -> Answer:
    """The 202 for work now in JetStream: where to read the job, and whether it is a repeat."""
    status_url, stream_url = st.urls(job_id)
    accepted = Accepted(job_id=job_id, status_url=status_url, stream_url=stream_url, duplicate=duplicate)
    return Answer(202, encoder.encode(accepted), {"Location": status_url})


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str] | None = None


class Call:
    """One webhook POST as both HTTP paths see it: aiohttp's route and the lean path in
    listener.py. Headers are looked up by any case, as aiohttp's are."""

    __slots__ = ("body", "correlation", "headers", "peer", "rate_limit", "source", "st")

    def __init__(
        self,
        st: Receiver,
        source: str,
        headers: Mapping[str, str],
        body: Callable[[], Awaitable[bytes]],
        peer: str | None,
        correlation: str,
    ) -> None:
        self.st = st
        self.source = source
        self.headers = headers
        self.body = body  # read only once the sender may send (known source, allowed address)
        self.peer = peer
        self.correlation = correlation
        self.rate_limit: Decision | None = None  # for the answer's headers, refused or not

    def address(self) -> str | None:
        return self.st.address_of(self.peer, self.headers)


async def receive(request: web.Request) -> web.Response:
    """The aiohttp route (connections the lean path handed over, or all of them when it is off)."""
    st = request.app[STATE]

    async def body() -> bytes:
        return await st.read_body(request)

    call = Call(
        st,
        request.match_info["source"],
        request.headers,
        body,
        peer_host(request.transport),
        request[CORRELATION_ID],
    )
    try:
        answer = await take(call)
    finally:
        if call.rate_limit is not None:
            request[RATE_LIMIT] = call.rate_limit
    return as_response(answer)


async def take(call: Call) -> Answer:
    """Verify, rate-limit and accept one webhook: the answer, or HTTPError for a refusal."""
    st, name = call.st, call.source
    source = st.sources.get(name)
    if source is None:
        raise HTTPError(404, "unknown_source", f"no webhook source named {name[:64]!r}")
    try:
        return await _take(call, st, source)
    except HTTPError as exc:
        st.metrics.webhook(name, _OUTCOME.get(exc.status, "bad_request")).inc()
        raise


async def _take(call: Call, st: Receiver, source: Source) -> Answer:
    name = call.source
    if source.networks and not source.allows(call.address()):
        raise HTTPError(403, "forbidden_address", "this address may not send to this source")
    st.require_nats()
    body = await call.body()
    project, secrets = st.webhook_project(source, body)
    inbound = source.verify(call.headers, body, secrets=secrets)
    if inbound.ignored:
        st.metrics.webhook(name, "ignored").inc()
        ignored = Ignored(status="ignored", event=inbound.event_type, delivery_id=inbound.delivery_id)
        return Answer(202, encoder.encode(ignored))
    if not project.enabled:
        # Answered, so the sender does not retry; not run until the project is enabled.
        st.metrics.webhook(name, "disabled").inc()
        disabled = Ignored(
            status="disabled",
            event=inbound.event_type,
            delivery_id=inbound.delivery_id,
            project=project.project_id,
            message="this project is disabled: the webhook was verified and not run",
        )
        return Answer(202, encoder.encode(disabled))
    await st.limit_work(project)
    # The signed project id, never a header: a replayer must not pick its own bucket.
    call.rate_limit = await st.limit_webhook(name, inbound.project_id, call.address)
    if call.rate_limit is not None:
        st.refuse_over(call.rate_limit, "webhook")

    job_id = ids.job_id_for_delivery(st.job_id_key, name, inbound.dedupe_key)
    now = utcnow()
    callback_url = source.callback_url if project is st.directory.default else project.callback_for(name)
    event = WebhookEvent(
        event_id=inbound.delivery_id,
        job_id=job_id,
        source=name,
        type=inbound.event_type,
        received_at=now,
        payload=msgspec.Raw(body),
        project_id=inbound.project_id,
        callback_url=callback_url,
        correlation_id=call.correlation,
        project=project.project_id,
    )
    record = lifecycle.new(
        job_id,
        created_at=now,
        source=name,
        event_type=inbound.event_type,
        project_id=inbound.project_id,
        callback_url=callback_url,
        project=project.project_id,
    )
    duplicate = await st.accept(
        subject=st.event_subject(name, inbound.event_type),
        stream=subjects.EVENTS,
        data=encoder.encode(event),
        msg_id=f"{name}:{inbound.dedupe_key}",
        record=record,
        correlation_id=call.correlation,
    )
    st.metrics.webhook(name, "duplicate" if duplicate else "accepted").inc()
    if st.integration is not None:
        st.integration.webhook(project.project_id, now)
    now_s = time.time()
    st.last_webhook[name] = now_s
    st.metrics.last_webhook_at(name).set(now_s)
    return accepted_answer(st, job_id, duplicate)
