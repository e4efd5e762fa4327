"""``jobprogress.<job_id>`` (core NATS, a queue group of the deliverers) -> a signed POST of
``{job_id, status, progress, output, timestamp}`` to the job's callback URL, for projects that
asked for progress callbacks (``Project.progress_callbacks``).

Best-effort by design: one attempt, no retry, no attempt log, dropped rather than queued
(more than PROGRESS_CALLBACK_CONCURRENCY in flight, or once this deliverer has the job's
result). The executor running a job sends at most one a PROGRESS_CALLBACK_EVERY_S; here a
job's progress arriving less than half that after its last is dropped too, a guard that
message jitter (one a second, arriving 0.99 s apart) does not trip. They go over an HTTP client
of their own, so a slow endpoint's progress never holds a connection a result needs. Signed
like every callback of the project (Standard Webhooks, its own secrets, its outbound
credential); the ``webhook-id`` is ``progress-<job_id>-<n>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from conveyor.deliverer.config import Settings
from conveyor.deliverer.http_client import CallbackClient
from conveyor.deliverer.metrics import Metrics
from conveyor.deliverer.projects import ProjectCallbacks
from conveyor.deliverer.sender import post
from conveyor.shared import bus
from conveyor.shared.contracts.errors import PermanentError
from conveyor.shared.contracts.events import NOT_JSON, ProgressCallback, encoder, job_progress_decoder
from conveyor.shared.domain.signing import standard_headers
from conveyor.shared.runtime.telemetry import inject_headers

log = logging.getLogger(__name__)

_REMEMBERED = 10_000  # jobs whose last progress time (or end) is kept


class SendProgress:
    def __init__(
        self, settings: Settings, client: CallbackClient, projects: ProjectCallbacks, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.client = client
        self.projects = projects
        self.metrics = metrics
        self.inflight: set[asyncio.Task[None]] = set()
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # job -> (sent at, count)
        self._ended: OrderedDict[str, None] = OrderedDict()

    def ended(self, job_id: str) -> None:
        """The job's result is going out: its progress is over."""
        self._ended[job_id] = None
        if len(self._ended) > _REMEMBERED:
            self._ended.popitem(last=False)

    async def handle(self, msg: bus.Message) -> None:
        outcome = self.metrics.progress_outcome
        try:
            p = job_progress_decoder.decode(msg.data)
        except NOT_JSON:
            return
        project = self.projects.directory.get(p.project)
        url = self.projects.target_of(p.project, p.source, p.callback_url)
        if project is None or not project.progress_callbacks or url is None:
            outcome["skipped"].inc()
            return
        now = time.monotonic()
        last, count = self._last.get(p.job_id, (-1e9, 0))
        if (
            p.job_id in self._ended
            or now - last < self.settings.progress_callback_every_s / 2
            or len(self.inflight) >= self.settings.progress_callback_concurrency
        ):
            outcome["dropped"].inc()
            return
        self._last[p.job_id] = (now, count + 1)
        self._last.move_to_end(p.job_id)
        if len(self._last) > _REMEMBERED:
            self._last.popitem(last=False)
        try:
            signing = self.projects.signing_for(p.project, url)
        except PermanentError as exc:
            log.warning("progress of job %s not sent: %s", p.job_id, exc)
            outcome["failed"].inc()
            return
        body = encoder.encode(
            ProgressCallback(
                job_id=p.job_id, status=p.status, progress=p.progress, output=p.output, timestamp=p.timestamp
            )
        )
        headers = inject_headers(
            {
                "Content-Type": "application/json",
                **standard_headers(signing.secrets, f"progress-{p.job_id}-{count + 1}", body),
            }
        )
        if signing.credential is not None:
            headers["Authorization"] = f"Bearer {signing.credential}"
        task = asyncio.create_task(self._send(p.job_id, url, body, headers))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _send(self, job_id: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        result = await post(
            self.client, url, body, headers, timeout_s=self.settings.progress_callback_timeout_s
        )
        if result.kind == "ok":
            self.metrics.progress_outcome["delivered"].inc()
        else:
            self.metrics.progress_outcome["failed"].inc()
            log.debug("progress of job %s: %s", job_id, result.error)

    async def stop(self) -> None:
        for task in list(self.inflight):
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
