"""POST /api/webhooks/{source}/status: a sender asks how its project's integration is doing.

Signed exactly like a webhook to the same source (Lovable: X-Lovable-Timestamp and
X-Lovable-Signature over "{timestamp}.{body}"), with a body naming the project the way its
webhooks do (``{"project_id": ...}``), so only the holder of that project's webhook secret can
ask. The answer: enabled, the last webhook received, the last callback and its outcome, and
failed callback attempts in the last hour (conveyor.shared.domain.integration).
"""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.sources import unauthorized
from conveyor.receiver.state import STATE
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import utcnow
from conveyor.shared.domain import signing
from conveyor.shared.domain.integration import IntegrationStatus, integration_decoder
from conveyor.shared.runtime.http import HTTPError


class LastCallback(msgspec.Struct, frozen=True, kw_only=True):
    at: dt.datetime
    outcome: str
    status_code: int | None


class IntegrationView(msgspec.Struct, frozen=True, kw_only=True):
    project: str
    enabled: bool
    last_webhook_received: dt.datetime | None
    last_callback: LastCallback | None
    failures_last_hour: int
    callback_url_configured: bool


async def status(request: web.Request) -> web.Response:
    st = request.app[STATE]
    name = request.match_info["source"]
    source = st.sources.get(name)
    if source is None or source.scheme != "lovable":
        raise HTTPError(404, "unknown_source", f"no status for a source named {name[:64]!r}")
    st.require_nats()
    body = await st.read_body(request)
    project, secrets = st.webhook_project(source, body)
    try:
        signing.lovable_verify(
            secrets,
            body,
            request.headers.get("X-Lovable-Timestamp"),
            request.headers.get("X-Lovable-Signature"),
            tolerance_s=source.tolerance_s,
        )
    except signing.SignatureError as exc:
        raise unauthorized(exc.reason) from None
    kv = st.bucket(subjects.KV_INTEGRATION)
    with st.nats_errors():
        try:
            entry = await kv.get(project.project_id)
            record = integration_decoder.decode(entry.value or b"")
        except bus.NotFound:
            record = IntegrationStatus(project=project.project_id)
    last = None
    if record.last_callback_at is not None:
        last = LastCallback(
            at=record.last_callback_at,
            outcome=record.last_callback_outcome or "unknown",
            status_code=record.last_callback_status,
        )
    is_default = project is st.directory.default
    view = IntegrationView(
        project=project.project_id,
        enabled=project.enabled,
        last_webhook_received=record.last_webhook_at,
        last_callback=last,
        failures_last_hour=record.failures_since(utcnow()),
        callback_url_configured=bool(source.callback_url if is_default else project.callback_for(name))
        or (is_default and bool(st.settings.lovable_callback_url)),
    )
    return respond(200, view)
