"""``ctl.test_send.<id>`` -> one signed test event to the given URL, outcome in KV ``deliveries``.

One attempt, no retries, the SSRF guard and signing as for results; the outcome is a
DeliveryLog under ``test_<id>`` that the receiver waits for and reports.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import msgspec

from conveyor.deliverer.attempt_log import AttemptLog
from conveyor.deliverer.config import Settings
from conveyor.deliverer.http_client import CallbackClient
from conveyor.deliverer.metrics import Metrics
from conveyor.deliverer.projects import ProjectCallbacks
from conveyor.deliverer.sender import post
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import PermanentError
from conveyor.shared.contracts.events import DeliveryAttempt, encoder, send_test_decoder, utcnow
from conveyor.shared.domain.signing import standard_headers
from conveyor.shared.runtime.urls import redact_url

log = logging.getLogger(__name__)


class SampleEventData(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    message: str = "Conveyor test event: if you can read this, callbacks reach you and are signed."


class SampleEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Standard Webhooks' recommended payload shape: type, timestamp, data."""

    type: str
    timestamp: dt.datetime
    data: SampleEventData


def log_key(request_id: str) -> str:
    return f"test_{request_id}"


@dataclass
class SendTestEvent:
    settings: Settings
    client: CallbackClient
    attempts: AttemptLog
    projects: ProjectCallbacks
    metrics: Metrics

    async def __call__(self, msg: bus.Delivery) -> None:
        req = send_test_decoder.decode(msg.data)
        if not subjects.is_token(req.id):
            raise PermanentError(f"test send id {req.id!r} is not a safe key")
        key = log_key(req.id)
        shown = redact_url(req.url)  # the record is the API's answer; req.url keeps the credentials
        if msg.attempts > 1 and await self.attempts.read(key) is not None:
            return  # answered before a crash lost the ack: one attempt only

        age = (utcnow() - req.requested_at).total_seconds()
        if age > self.settings.test_send_max_age_s:
            self.metrics.test_outcome["expired"].inc()
            expired = DeliveryAttempt(
                at=utcnow(),
                url=shown,
                status_code=None,
                latency_ms=0.0,
                error=f"request expired: {age:.0f}s old, limit {self.settings.test_send_max_age_s:g}s",
                outcome="failed",
            )
            await self.attempts.append(key, expired, known=True, entry=None)
            return

        body = encoder.encode(
            SampleEvent(type=req.event_type, timestamp=utcnow(), data=SampleEventData(id=req.id))
        )
        # Signed as the caller's project signs its callbacks: never the deployment's secret
        # for another project's key.
        signing = self.projects.signing_for(req.project, req.url)
        headers = {"Content-Type": "application/json", **standard_headers(signing.secrets, key, body)}
        if signing.credential is not None:
            headers["Authorization"] = f"Bearer {signing.credential}"
        at = utcnow()
        result = await post(self.client, req.url, body, headers, timeout_s=self.settings.callback_timeout_s)
        ok = result.kind == "ok"
        self.metrics.test_outcome["delivered" if ok else "failed"].inc()
        outcome = "delivered" if ok else result.error
        answered = f" (answered: {result.answer})" if result.answer else ""
        log.info("test send %s to %s: %s%s", req.id, shown, outcome, answered)
        record = DeliveryAttempt(
            at=at,
            url=shown,
            status_code=result.status_code,
            latency_ms=round(result.latency_s * 1000, 3),
            error=result.error,
            outcome="delivered" if ok else "failed",
        )
        await self.attempts.append(key, record, known=True, entry=None)
