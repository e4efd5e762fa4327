"""``results.<job_id>`` -> a signed POST of the AgentResult to the job's callback URL.

Settlement goes through conveyor.shared.bus.consumer: returning acks; PermanentError copies the
result to ``dlq.deliver.results.<job_id>`` and, once that is stored, terminates it. A result that
must wait (a failed attempt, an open circuit) is parked (parking.py) and then acknowledged:
it comes back on ``parked.results.<job_id>`` to this same handler, so the wait survives a
restart without holding a consumer slot. RetryableError (a NAK with our delay) is what is
left when parking fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace

from conveyor.deliverer.attempt_log import AttemptLog, round_attempts
from conveyor.deliverer.breaker import Breakers
from conveyor.deliverer.config import Settings
from conveyor.deliverer.http_client import CallbackClient
from conveyor.deliverer.metrics import Metrics
from conveyor.deliverer.parking import Parking, is_parked, pause_s, pauses_of
from conveyor.deliverer.projects import ProjectCallbacks
from conveyor.deliverer.retry import RetryPolicy
from conveyor.deliverer.sender import endpoint_of, post
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import PermanentError, RetryableError
from conveyor.shared.contracts.events import DeliveryAttempt, JobResult, encoder, job_result_decoder, utcnow
from conveyor.shared.domain.deadletters import is_replay
from conveyor.shared.domain.integration import IntegrationRecorder
from conveyor.shared.domain.signing import standard_headers
from conveyor.shared.runtime.logs import bound
from conveyor.shared.runtime.telemetry import exporting, inject_headers, message_span
from conveyor.shared.runtime.urls import redact_url

log = logging.getLogger(__name__)

STAGE = "deliver"  # dead letters go to dlq.deliver.results.<job_id>


def webhook_id(job_id: str) -> str:
    """Stable per job result: a receiver that saw it already can drop a repeat."""
    return f"result-{job_id}"


@dataclass
class DeliverCallback:
    settings: Settings
    client: CallbackClient
    attempts: AttemptLog
    breakers: Breakers
    policy: RetryPolicy
    projects: ProjectCallbacks
    metrics: Metrics
    tracer: trace.Tracer
    parking: Parking
    integration: IntegrationRecorder | None = None  # per project: last callback, failures
    on_result: Callable[[str], None] | None = None  # a job's result is going out (progress stops)

    def __post_init__(self) -> None:
        self.tracing = exporting(self.tracer)

    def target(self, job: JobResult) -> str | None:
        return self.projects.target(job)

    async def __call__(self, msg: bus.Delivery) -> None:
        job = job_result_decoder.decode(msg.data)
        with (
            bound(job=job.job_id, correlation=job.correlation_id),
            message_span(self.tracer, self.tracing, "results.* process", msg.headers, msg.subject),
        ):
            await self.deliver(msg, job)

    async def deliver(self, msg: bus.Delivery, job: JobResult) -> None:
        if self.on_result is not None:
            self.on_result(job.job_id)
        url = self.target(job)
        # The executor's message, first delivered: no attempt can have been made yet. A replayed
        # dead letter is not: a replay run again after RESULTS' duplicate window (2 minutes) is
        # stored again, and the delivery log is what stops a second callback.
        first = msg.attempts == 1 and not is_parked(msg) and not is_replay(msg)
        if url is None:
            log.info("job %s (source %s) has no callback URL: skipped", job.job_id, job.source)
            self.metrics.outcome["skipped"].inc()
            skipped = DeliveryAttempt(
                at=utcnow(),
                url="",
                status_code=None,
                latency_ms=0.0,
                error="no callback URL",
                outcome="skipped",
            )
            await self.attempts.append_later(job.job_id, skipped, known=False, entry=None)
            return

        endpoint = endpoint_of(url)
        if (wait := self.breakers.wait_s(endpoint)) is not None:
            # Not an attempt: nothing is recorded, so the attempt count does not move.
            self.metrics.outcome["paused"].inc()
            delay = pause_s(pauses_of(msg) + 1, wait, self.breakers.cooldown_s, self.policy.max_delay_s)
            await self.later(msg, job, delay, f"circuit open for {endpoint}", paused=True)
            return

        # This call may be the half-open probe: every way out that has no answer from the
        # endpoint must release it, or the endpoint stays paused until a restart.
        answered = False
        try:
            try:
                entry = None if first else await self.attempts.read(job.job_id)
            except Exception as exc:
                raise RetryableError(f"cannot read the delivery log: {exc}") from exc
            if entry is not None and entry.attempts and entry.attempts[-1].outcome == "delivered":
                # Delivered, and then the ack did not reach JetStream (a NATS node went away, or
                # this process died, between the two): the endpoint has it; do not send it again.
                self.metrics.outcome["already_delivered"].inc()
                log.info("job %s was delivered before (attempt log): not sent again", job.job_id)
                return
            number = (0 if first else round_attempts(entry)) + 1

            body = encoder.encode(job.result)
            signing = self.projects.signing(job, url)
            headers = inject_headers(
                {
                    "Content-Type": "application/json",
                    **standard_headers(signing.secrets, webhook_id(job.job_id), body),
                }
            )
            if signing.credential is not None:
                headers["Authorization"] = f"Bearer {signing.credential}"
            at = utcnow()
            result = await post(self.client, url, body, headers, timeout_s=self.settings.callback_timeout_s)
            answered = True
        finally:
            if not answered:
                self.breakers.abandon(endpoint)
        if result.kind == "retry":
            self.breakers.failure(endpoint)
        elif result.kind == "refused":
            self.breakers.abandon(endpoint)
        else:  # it answered: the endpoint is up even when it rejects this result
            self.breakers.success(endpoint)

        if result.kind == "ok":
            outcome = "delivered"
        elif result.kind == "retry" and not self.policy.exhausted(number):
            outcome = "retry"
        else:
            outcome = "dead_lettered"
        record = DeliveryAttempt(
            at=at,
            url=redact_url(url),  # read by API callers: the credentials stay in the JobResult
            status_code=result.status_code,
            latency_ms=round(result.latency_s * 1000, 3),
            error=result.error,
            outcome=outcome,
        )
        self.metrics.outcome[outcome].inc()
        self.metrics.took[outcome].observe(result.latency_s)
        if self.integration is not None:
            self.integration.callback(job.project, at, outcome, result.status_code)

        if outcome == "delivered":
            # One line per callback costs ~7% of the deliverer's CPU at INFO; the metrics and the
            # attempt log count deliveries. A delivery that needed retries is still worth a line.
            log.log(
                logging.DEBUG if number == 1 else logging.INFO,
                "delivered job %s to %s on attempt %d (%d)",
                job.job_id,
                endpoint,
                number,
                result.status_code,
            )
            # Nothing reads this record back before the result is settled: write it off the hot path.
            await self.attempts.append_later(job.job_id, record, known=not first, entry=entry)
            return
        # A retry reads this record to count attempts, so it is stored before the result is parked.
        await self.attempts.append(job.job_id, record, known=not first, entry=entry)
        if outcome == "retry":
            delay = self.policy.delay(number, result.retry_after_s)
            why = f"attempt {number} of {self.policy.max_attempts} to {endpoint} failed: {result.error}"
            await self.later(msg, job, delay, why, status_code=result.status_code, answer=result.answer)
            return
        if result.answer:
            # The DLQ headers and the attempt log carry the status only (both are read back).
            log.warning("job %s: %s answered %s: %s", job.job_id, endpoint, result.status_code, result.answer)
        raise PermanentError(
            f"{result.error} (attempt {number} of {self.policy.max_attempts}, {redact_url(url)})",
            status_code=result.status_code,
            attempts=number,
            # A parked result is filed where the executor put it, and a replay goes back there.
            subject=subjects.result(job.job_id),
        )

    async def later(
        self,
        msg: bus.Delivery,
        job: JobResult,
        delay_s: float,
        why: str,
        *,
        paused: bool = False,
        status_code: int | None = None,
        answer: str | None = None,
    ) -> None:
        """Park the result to come back in ``delay_s``; if it cannot be parked, NAK it with that
        delay (it then waits unacknowledged, as before parking)."""
        try:
            await self.parking.hold(msg, job.job_id, delay_s, paused=paused)
        except Exception as exc:
            raise RetryableError(
                f"{why}; not parked ({exc})", delay_s=delay_s, status_code=status_code
            ) from exc
        # An open circuit parks every result for its endpoint: one line each would flood the log.
        log.log(
            logging.DEBUG if paused else logging.WARNING,
            "job %s parked for %.1fs: %s%s",
            job.job_id,
            delay_s,
            why,
            f" (answered: {answer})" if answer else "",
        )
