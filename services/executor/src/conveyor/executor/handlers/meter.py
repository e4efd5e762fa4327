"""What a running job reports besides its result: LLM usage (priced, counted, checked against
its project's budgets) and streamed text (to SSE readers and progress callbacks).

Streamed text goes out on core NATS, ``joboutput.<job_id>``, batched every OUTPUT_BATCH_MS.
Not a stream: a per-job subject in a durable stream would hold every token of every job in
the brokers for the stream's retention (and its subject index in memory), for readers that
are almost always live: the SSE stream of someone watching the job now. Core NATS keeps
nothing; a reader that connects late misses what went before (``seq`` shows the gap) and
gets the whole answer in the result. Progress for progress callbacks goes the same way on
``jobprogress.<job_id>`` (best-effort by design, at most one a second per job), only for
projects that asked for them, to the deliverers' queue group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from conveyor.executor.metrics import Metrics
from conveyor.executor.pricing import Prices
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobOutput, JobProgress, JobRequest, TokenUsage, encoder, utcnow
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.domain.usage import BudgetStop, UsageRecorder, has_budget, over_budget

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]

MAX_BATCH_CHARS = 32 * 1024  # one output message's text at most (well under max_payload)
MAX_PROGRESS_OUTPUT = 16 * 1024  # a progress callback's output: the last this many characters


class Meter:
    """The executor-wide part: prices, the usage recorder, metrics, the projects' settings."""

    def __init__(
        self,
        *,
        prices: Prices,
        recorder: UsageRecorder,
        metrics: Metrics,
        project_of: Callable[[str], Project | None],
        publish: Publish,
        output_batch_s: float = 0.1,
        progress_every_s: float = 1.0,
    ) -> None:
        self.prices = prices
        self.recorder = recorder
        self.metrics = metrics
        self.project_of = project_of
        self.publish = publish
        self.output_batch_s = output_batch_s
        self.progress_every_s = progress_every_s

    def report(self, project: str, agent: str, usage: TokenUsage) -> tuple[TokenUsage, BudgetStop | None]:
        """Price one response's usage, count it, and say whether a budget is now spent."""
        clean = TokenUsage(
            model=usage.model[:200],
            input_tokens=max(0, int(usage.input_tokens)),
            output_tokens=max(0, int(usage.output_tokens)),
            cost_usd=usage.cost_usd if 0 < usage.cost_usd < 1e6 else 0.0,
        )
        priced = self.prices.priced(clean)
        self.recorder.add(project, agent, priced)
        self.metrics.count_usage(project, agent, priced)
        return priced, self.check(project)

    def check(self, project: str) -> BudgetStop | None:
        found = self.project_of(project)
        if found is None or not has_budget(found):
            return None
        return over_budget(found, self.recorder.spent(project))

    async def prime(self, project: str) -> None:
        """Read the project's spend (if it has a budget and it was not read in the last second)."""
        if has_budget(self.project_of(project)):
            try:
                await self.recorder.prime(project)
            except Exception as exc:  # the check goes on with what this replica knows
                log.warning("usage of project %s not read (%s)", project, exc or type(exc).__name__)

    def live(self, req: JobRequest, attempt: int) -> Live:
        project = self.project_of(req.project)
        return Live(self, req, attempt, progress=project is not None and project.progress_callbacks)


class Live:
    """One attempt's streamed text and progress, published in batches by background tasks."""

    def __init__(self, meter: Meter, req: JobRequest, attempt: int, *, progress: bool) -> None:
        self.meter = meter
        self.req = req
        self.attempt = attempt
        self.subject = subjects.job_output(req.job_id)
        self.wants_progress = progress
        self._text: list[str] = []
        self._size = 0
        self._seq = 0
        self._flush: asyncio.Task[None] | None = None
        self._progress_text: list[str] = []
        self._progress_size = 0
        self._progress = 10
        self._progress_task: asyncio.Task[None] | None = None
        self._progress_at = 0.0
        self._closed = False

    def output(self, text: str) -> None:
        if self._closed or not text:
            return
        self._text.append(text)
        self._size += len(text)
        if self.wants_progress:
            self._progress_text.append(text)
            self._progress_size += len(text)
            if self._progress_size > 4 * MAX_PROGRESS_OUTPUT:
                self._trim_progress()
            self._schedule_progress()
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_later())

    def progress(self, value: int) -> None:
        if self._closed or not self.wants_progress:
            return
        self._progress = max(self._progress, value)
        self._schedule_progress()

    async def close(self) -> None:
        """Publish the text not sent yet (before the job's terminal record is written, so SSE
        readers get it first); pending progress is dropped (the result follows)."""
        self._closed = True
        for task in (self._flush, self._progress_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._send_output()

    # --- output ---------------------------------------------------------------------------------

    async def _flush_later(self) -> None:
        if self._size < MAX_BATCH_CHARS:
            await asyncio.sleep(self.meter.output_batch_s)
        await self._send_output()

    async def _send_output(self) -> None:
        text, self._text, self._size = "".join(self._text), [], 0
        for start in range(0, len(text), MAX_BATCH_CHARS):
            self._seq += 1
            msg = JobOutput(
                job_id=self.req.job_id,
                attempt=self.attempt,
                seq=self._seq,
                text=text[start : start + MAX_BATCH_CHARS],
            )
            with contextlib.suppress(Exception):  # best-effort: the result carries the answer
                await self.meter.publish(self.subject, encoder.encode(msg))

    # --- progress callbacks ---------------------------------------------------------------------

    def _trim_progress(self) -> None:
        text = "".join(self._progress_text)[-MAX_PROGRESS_OUTPUT:]
        self._progress_text, self._progress_size = [text], len(text)

    def _schedule_progress(self) -> None:
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._send_progress())

    async def _send_progress(self) -> None:
        wait = self._progress_at + self.meter.progress_every_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._trim_progress()
        text, self._progress_text, self._progress_size = self._progress_text[0], [], 0
        self._progress_at = time.monotonic()
        req = self.req
        msg = JobProgress(
            job_id=req.job_id,
            project=req.project,
            source=req.source,
            callback_url=req.callback_url,
            status="processing",
            progress=self._progress,
            output=text,
            timestamp=utcnow(),
        )
        with contextlib.suppress(Exception):
            await self.meter.publish(subjects.job_progress(req.job_id), encoder.encode(msg))
