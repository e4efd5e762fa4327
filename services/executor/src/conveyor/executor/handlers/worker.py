"""Workers: run one job from ``jobs.run.<agent>`` to its end.

For each delivery: read the record (a terminal record means the job is over: publish its
stored result if RESULTS does not have it, and ack); check for a cancel; count the
attempt; write "processing" (compare-and-set, so a cancel or another executor that got
there first wins); run the backend under the agent's timeout with in-progress acks; then
either finish (record -> result -> ack), retry (record back to "queued", NAK with backoff),
or give up (DLQ copy -> record "failed" -> failed result -> term).

A job of a project with a running limit (``max_running``) is first moved to its project's own
queue and taken from there (handlers/fairness.py).

Attempts are counted in the record when an attempt starts, not from JetStream's delivery
count, so a NAK that only hands a job to another replica never uses up a retry, while an
executor that died mid-attempt does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry import trace

from conveyor.executor import pricing
from conveyor.executor.backends import AgentError, AgentJob, Backend, TransientError
from conveyor.executor.backends.base import BudgetExceeded
from conveyor.executor.config import Settings
from conveyor.executor.credentials import Credentials, no_credentials
from conveyor.executor.handlers.definitions import PIPELINE, Definitions
from conveyor.executor.handlers.fairness import Gates
from conveyor.executor.handlers.jobstore import Conflict, JobStore, Versioned, checked_job_id
from conveyor.executor.handlers.meter import Live, Meter
from conveyor.executor.handlers.results import Results, may_exceed, oversize
from conveyor.executor.metrics import Metrics
from conveyor.executor.registry import Agent
from conveyor.shared import bus
from conveyor.shared.bus import dead_letter, heartbeat
from conveyor.shared.contracts import lifecycle, subjects
from conveyor.shared.contracts.errors import RetryableError
from conveyor.shared.contracts.events import (
    AgentResult,
    JobRecord,
    JobRequest,
    LogLine,
    ResultBody,
    TokenUsage,
    encoder,
    job_request_decoder,
    utcnow,
)
from conveyor.shared.domain.agentdefs import MAX_DELEGATES, AgentDefinition
from conveyor.shared.domain.usage import BudgetStop
from conveyor.shared.runtime.logs import bound
from conveyor.shared.runtime.telemetry import exporting, message_span

log = logging.getLogger(__name__)

STAGE = "executor"
PIPELINE_INPUT_MAX = 256 * 1024  # kept in the pipeline's record, which every stage rewrites
DEFINED = "defined"  # the metrics label of every project's own agents (bounded cardinality)
SATURATED_DELAY_S = 1.0
PROGRESS_EVERY_S = 1.0


@dataclass
class Outcome:
    status: str  # completed | failed | timeout | cancelled
    body: ResultBody | None = None
    error: str | None = None
    transient: bool = False
    retry_after_s: float | None = None
    ran: bool = True  # False: ended before an attempt started
    budget: BudgetStop | None = None  # ended because its project's budget is spent


@dataclass
class Running:
    """A job this executor is running; the cancel watcher reaches it through here."""

    job_id: str
    parent_id: str | None
    task: asyncio.Task[ResultBody] | None = None
    cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()


@dataclass
class Attempt:
    """One attempt's state: its record (kept current across progress writes) and its log."""

    store: JobStore
    job_id: str
    number: int
    cur: Versioned
    lines: list[LogLine] = field(default_factory=list)
    previous: list[LogLine] | None = None  # earlier attempts' lines (read once, on retries)
    quiet: bool = False  # an instant agent: a successful run writes no log (one write less per job)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _progress: int | None = None
    _progress_task: asyncio.Task[None] | None = None
    _progress_at: float = 0.0
    usage: TokenUsage | None = None  # the job's LLM usage over all its attempts so far
    live: Live | None = None  # streamed text and progress callbacks (an attempt that runs)
    budget_stop: BudgetStop | None = None  # a usage report found the project's budget spent

    def log(self, level: str, message: str) -> None:
        self.lines.append(LogLine(at=utcnow(), level=level, message=message, attempt=self.number))

    async def write(self, change: Callable[[JobRecord | None], JobRecord | None]) -> bool:
        async with self._lock:
            ok, self.cur = await self.store.advance(self.job_id, self.cur, change)
            return ok

    def progress(self, value: int) -> None:
        """Record progress reported by the agent, at most once a second."""
        self._progress = value
        if self.live is not None:
            self.live.progress(value)
        self.touch()

    def output(self, text: str) -> None:
        if self.live is not None:
            self.live.output(text)

    def touch(self) -> None:
        """Write progress and usage with the next progress write (at most once a second)."""
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._write_progress())

    async def _write_progress(self) -> None:
        wait = self._progress_at + PROGRESS_EVERY_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        value, usage, self._progress_at = self._progress, self.usage, time.monotonic()

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is None or r.terminal or r.attempts != self.number:
                return None
            moved = value is not None and value > r.progress
            if not moved and usage == r.usage:
                return None
            return lifecycle.progress(r, value if moved else r.progress, usage=usage)

        with contextlib.suppress(Exception):
            await self.write(change)

    async def settle_progress(self) -> None:
        if self.live is not None:
            await self.live.close()
        if self._progress_task is not None and not self._progress_task.done():
            self._progress_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._progress_task

    async def flush_log(self) -> None:
        if self.previous is None:
            self.previous = [ln for ln in await self.store.read_log(self.job_id) if ln.attempt < self.number]
        await self.store.write_log(self.job_id, [*self.previous, *self.lines])


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """The wait after failed attempt ``attempt`` (1-based): base, 2x, 4x, 8x (1 s, 2 s, 4 s,
    8 s with RETRY_BASE_MS=1000), capped at RETRY_CAP_MS. Fixed steps, no jitter: a job's
    retries are few and already spread by when each job failed."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))


def metric_label(agent: Agent) -> str:
    return DEFINED if agent.project is not None else agent.name


def _cancelled(attempt: Attempt, reason: str) -> Outcome:
    attempt.log("warning", f"cancelled: {reason}")
    return Outcome("cancelled", error=reason)


def _failure(exc: Exception, agent: Agent, req: JobRequest, attempt: Attempt) -> Outcome:
    """A failed attempt (call from the ``except`` block): an AgentError as the backend put it;
    anything else is a bug in the backend, counted as a transient failure so the service keeps
    serving. Left to the consumer it would be NAKed for ever: the workers' consumer has no
    max_deliver, and an instant agent's attempt is only counted here."""
    if isinstance(exc, AgentError):
        attempt.log("error", str(exc))
        retry_after_s = getattr(exc, "retry_after_s", None)
        return Outcome("failed", error=str(exc), transient=exc.transient, retry_after_s=retry_after_s)
    log.exception("backend %s failed on job %s", agent.backend, req.job_id)
    error = f"{type(exc).__name__}: {exc}"
    attempt.log("error", error)
    return Outcome("failed", error=error, transient=True)


class Worker:
    def __init__(
        self,
        *,
        js: bus.Bus,
        settings: Settings,
        agents: dict[str, Agent],
        backends: dict[str, Backend],
        store: JobStore,
        results: Results,
        metrics: Metrics,
        dead_letters: Callable[[], None],
        cancel_reason: Callable[[str, str | None], str | None],
        child_done: Callable[[str], Awaitable[None]],
        tracer: trace.Tracer,
        instance: str,
        gates: Gates | None = None,
        credentials: Callable[[str], Credentials] = no_credentials,  # project -> AgentJob.credentials
        definitions: Definitions | None = None,
        start_pipeline: Callable[[JobRequest, AgentDefinition, Agent], Awaitable[None]] | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.definitions = definitions or Definitions(settings, agents)
        self.start_pipeline = start_pipeline
        self.js = js
        self.settings = settings
        self.agents = agents
        self.backends = backends
        self.store = store
        self.results = results
        self.metrics = metrics
        self.count_dead_letter = dead_letters
        self.cancel_reason = cancel_reason
        self.child_done = child_done
        self.tracer = tracer
        self.tracing = exporting(tracer)
        self.instance = instance
        self.running: dict[str, Running] = {}
        self.slots = {n: asyncio.Semaphore(a.concurrency) for n, a in agents.items() if a.concurrency}
        self.heartbeat_s = max(0.5, settings.ack_wait_s / 3)
        self.gates = gates
        self.credentials = credentials
        self.limited: Mapping[str, int] = gates.limits if gates is not None else {}
        self.meter = meter

    # --- entry point ---------------------------------------------------------------------------

    async def handle(self, msg: bus.Delivery) -> None:
        """A job from the shared queue, ``jobs.run.<agent>``."""
        req = job_request_decoder.decode(msg.data)  # unreadable: the consumer dead-letters it
        checked_job_id(req.job_id)
        if (
            req.project in self.limited
            and self.gates is not None
            and self.definitions.known(req.project, req.agent)
        ):
            # Its project has a running limit: the job waits for a slot in its own queue.
            await self.gates.hop(msg, req)
            return
        await self._process(msg, req)

    async def handle_limited(self, msg: bus.Delivery) -> None:
        """A job from its project's own queue, ``jobs.limited.<project>.<agent>``: the durable's
        max_ack_pending has already counted it against the project's limit."""
        req = job_request_decoder.decode(msg.data)
        checked_job_id(req.job_id)
        await self._process(msg, req)

    def runs_routed(self, agent: Agent, req: JobRequest) -> bool:
        """Whether the router may run ``req`` itself (:meth:`run_routed`) instead of queueing
        it on JOBS: an instant agent with no concurrency limit, of a project with no running
        limit. Anything that can wait, or must wait its turn, goes through JOBS."""
        return agent.instant and agent.concurrency is None and req.project not in self.limited

    async def run_routed(self, msg: bus.Delivery, agent: Agent, req: JobRequest) -> bool:
        """Run a routed job of an instant agent on the event's own delivery: no JOBS message,
        no second delivery and ack. Returns False to have the router queue it on JOBS after
        all (an earlier attempt exists, or this one did not complete: the worker's path counts
        attempts, retries and dead-letters), having written nothing.

        The event stays unacknowledged until the record is terminal and the result published,
        so a crash anywhere before brings the event back to the router (AckWait), which finds
        the record as the worker would: over (publish its result if RESULTS lacks it) or not."""
        cur = await self.store.load(req.job_id)
        if cur.terminal:
            await self._settle_finished(msg, cur, req)
            return True
        if cur.record is not None and cur.record.attempts:
            return False
        attempt = Attempt(self.store, req.job_id, 1, cur, quiet=True)
        t0 = time.perf_counter()
        outcome = await self._execute_instant(agent, req, attempt)
        if outcome.status != "completed":
            return False
        elapsed = time.perf_counter() - t0
        self.metrics.took[agent.name, outcome.status].observe(elapsed)
        await self._conclude(msg, req, agent, attempt, outcome, int(elapsed * 1000))
        return True

    async def _process(self, msg: bus.Delivery, req: JobRequest) -> None:
        with (
            bound(job=req.job_id, correlation=req.correlation_id),
            message_span(self.tracer, self.tracing, "jobs.run.* process", msg.headers, msg.subject),
        ):
            await self._handle(msg, req)

    async def _handle(self, msg: bus.Delivery, req: JobRequest) -> None:
        cur = await self.store.load(req.job_id)
        if cur.terminal:
            await self._settle_finished(msg, cur, req)
            return
        previous = cur.record.attempts if cur.record else 0
        try:
            agent = await self.definitions.fetch(req.project, req.agent, req.agent_version)
            problem = None
        except ValueError as exc:  # a project's definition this deployment cannot run
            agent, problem = None, str(exc)
        if agent is None:
            known = ", ".join(sorted(self.agents))
            await self._give_up(
                msg,
                req,
                req.agent,
                Attempt(self.store, req.job_id, previous, cur),
                problem or f"unknown agent {req.agent!r} (known: {known})",
                backend=None,
                ran=False,
            )
            return
        attempt = Attempt(self.store, req.job_id, previous + 1, cur, quiet=agent.instant)
        attempt.usage = cur.record.usage if cur.record else None
        if (reason := self.cancel_reason(req.job_id, req.parent_id)) is not None:
            attempt.number = previous  # it never starts: no attempt is used
            await self._conclude(msg, req, agent, attempt, Outcome("cancelled", error=reason, ran=False), 0)
            return
        if agent.backend == PIPELINE:
            definition = self.definitions.definition(req.project, req.agent)
            if len(req.input) > PIPELINE_INPUT_MAX:
                why = f"a pipeline's input may be at most {PIPELINE_INPUT_MAX // 1024} KiB"
                await self._give_up(msg, req, req.agent, attempt, why, backend=PIPELINE, ran=False)
                return
            if definition is None or self.start_pipeline is None:
                await self._give_up(
                    msg, req, req.agent, attempt, "pipelines do not run here", backend=None, ran=False
                )
                return
            # The pipeline's stages are jobs of their own; this message only starts it.
            await self.start_pipeline(req, definition, agent)
            await msg.ack()
            return
        if attempt.number > agent.max_attempts:
            attempt.number = previous
            await self._give_up(
                msg,
                req,
                agent.name,
                attempt,
                f"the executor running attempt {previous} stopped without an answer",
                backend=agent.backend,
                ran=False,
            )
            return
        slot = self.slots.get(agent.name) if agent.project is None else None
        if slot is not None and slot.locked():
            # This agent is at its concurrency here: hand the job to another replica, or to us later.
            await msg.nak(delay=SATURATED_DELAY_S)
            return
        async with slot if slot is not None else contextlib.nullcontext():
            await self._run(msg, req, agent, attempt)

    # --- one attempt -------------------------------------------------------------------------------

    async def _run(self, msg: bus.Delivery, req: JobRequest, agent: Agent, attempt: Attempt) -> None:
        job_id = req.job_id
        started = utcnow()
        attempt.log(
            "info",
            f"attempt {attempt.number} of {agent.max_attempts} on {self.instance} ({agent.backend} backend)",
        )
        if attempt.number > 1:
            attempt.previous = None  # read the earlier attempts' lines before writing ours
        else:
            attempt.previous = []
        run = Running(job_id, req.parent_id)
        self.running[job_id] = run
        label = metric_label(agent)
        self.metrics.running[label].inc()
        t0 = time.perf_counter()
        try:
            if not agent.instant:
                if not await attempt.write(
                    lambda r: self._processing(r, req, agent, attempt.number, started)
                ):
                    # A cancel or another executor got there first.
                    if attempt.cur.terminal:
                        await self._settle_finished(msg, attempt.cur, req)
                    else:
                        msg.leave()
                    return
                await attempt.flush_log()
                if self.meter is not None:
                    attempt.live = self.meter.live(req, attempt.number)
                async with heartbeat(msg, self.heartbeat_s):
                    outcome = await self._execute(agent, req, attempt, run)
            else:
                outcome = await self._execute_instant(agent, req, attempt)
        except asyncio.CancelledError:
            # Shutdown: give the attempt back so the next executor does not count it.
            if not agent.instant:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._requeue(attempt, "interrupted by executor shutdown", counted=False), 2
                    )
            raise
        finally:
            self.running.pop(job_id, None)
            self.metrics.running[label].dec()
            await attempt.settle_progress()
        elapsed = time.perf_counter() - t0
        if (
            attempt.budget_stop is not None
            and outcome.budget is None
            and outcome.status in ("failed", "timeout")
        ):
            # However the backend took the refusal (raised it on, or failed otherwise after it),
            # the run ended at the budget: not retried, and said so.
            outcome = self._over_budget(agent, attempt, attempt.budget_stop)
        self.metrics.took[label, outcome.status].observe(elapsed)
        if outcome.budget is not None:
            self.metrics.budget_stops.labels(outcome.budget.budget).inc()
            await self._conclude(msg, req, agent, attempt, outcome, int(elapsed * 1000), term=True)
            return
        if outcome.status == "failed" and outcome.transient and attempt.number < agent.max_attempts:
            await self._retry(msg, agent, attempt, outcome)
            return
        if outcome.status == "failed":
            error = outcome.error or "failed"
            await self._give_up(
                msg,
                req,
                agent.name,
                attempt,
                error,
                backend=agent.backend,
                body=outcome.body,
                elapsed_ms=int(elapsed * 1000),
            )
            return
        await self._conclude(msg, req, agent, attempt, outcome, int(elapsed * 1000))

    def _job(self, agent: Agent, req: JobRequest, attempt: Attempt) -> AgentJob:
        timeout = req.timeout_ms / 1000 if req.timeout_ms else agent.timeout_s
        calls = itertools.count(1)
        deadline = time.monotonic() + timeout

        async def delegate(name: str, task: str) -> ResultBody:
            return await self.delegate(req, attempt, next(calls), name, task, deadline)

        return AgentJob(
            agent=agent,
            request=req,
            attempt=attempt.number,
            deadline=deadline,
            log=attempt.log,
            progress=attempt.progress,
            credentials=self.credentials(req.project),
            delegate=delegate,
            output=attempt.output,
            usage=lambda usage: self._usage(req, agent, attempt, usage),
        )

    def _usage(self, req: JobRequest, agent: Agent, attempt: Attempt, usage: TokenUsage) -> None:
        """One LLM response's usage: priced, added to the job's record (with its next progress
        write), the project's totals and the metrics; BudgetExceeded when a budget is spent."""
        if self.meter is None:
            return
        priced, stop = self.meter.report(req.project, agent.name, usage)
        attempt.usage = pricing.add(attempt.usage, priced)
        attempt.touch()
        if stop is not None:
            attempt.budget_stop = stop
            raise BudgetExceeded(f"budget_exceeded: {stop.message()}")

    def _over_budget(self, agent: Agent, attempt: Attempt, stop: BudgetStop) -> Outcome:
        error = f"budget_exceeded: {stop.message()}"
        attempt.log("error", f"stopped: {error}")
        return Outcome(
            "failed",
            error=error,
            body=ResultBody(summary=f"{agent.name} was stopped: {error}"),
            budget=stop,
        )

    async def delegate(
        self, req: JobRequest, attempt: Attempt, n: int, name: str, task: str, deadline: float
    ) -> ResultBody:
        """Run agent ``name`` of the job's project on ``task`` as a job of its own
        (``<job>-d<attempt>x<n>-<agent>``, parent = this job, so cancelling this job cancels it)
        and wait for its end. Its record and request are made like a fan-out child's, so any
        replica runs it; the wait reads its record."""
        if n > MAX_DELEGATES:
            raise AgentError(f"delegate: at most {MAX_DELEGATES} delegations per attempt")
        if not isinstance(name, str) or self.definitions.lookup(req.project, name) is None:
            raise AgentError(f"delegate: the project has no agent {str(name)[:64]!r}")
        if name == req.agent:
            raise AgentError("delegate: an agent may not delegate to itself")
        child_id = f"{req.job_id}-d{attempt.number}x{n}-{name}"
        if not subjects.is_token(child_id):
            raise AgentError(f"delegate: job id {child_id[:80]!r} is not usable")
        now = utcnow()
        record = lifecycle.child(req, child_id, name, now=now)
        with contextlib.suppress(Conflict):
            await self.store.save(child_id, record, 0)
        request = JobRequest(
            job_id=child_id,
            agent=name,
            created_at=now,
            source=req.source,
            event_type=req.event_type,
            prompt=task,
            input=req.input,
            project_id=req.project_id,
            project=req.project,
            parent_id=req.job_id,
            correlation_id=req.correlation_id or req.job_id,
        )
        await self.js.publish(
            subjects.job_run(name), encoder.encode(request), stream=subjects.JOBS, msg_id=child_id
        )
        attempt.log("info", f"delegated to {name} as job {child_id}")
        wait = 0.05
        while True:
            cur = await self.store.load(child_id)
            if cur.record is not None and cur.record.terminal:
                break
            if time.monotonic() + wait > deadline:
                raise TransientError(f"delegate: {name} did not finish within this attempt's time")
            await asyncio.sleep(wait)
            wait = min(1.0, wait * 2)
        rec = cur.record
        attempt.log("info", f"{name} ({child_id}) {rec.status}")
        if rec.status == "completed" and rec.result is not None:
            return rec.result.result
        raise AgentError(f"delegate: {name} {rec.status}: {rec.error or 'no result'}")

    async def _execute_instant(self, agent: Agent, req: JobRequest, attempt: Attempt) -> Outcome:
        try:
            return Outcome(
                "completed", body=await self.backends[agent.backend].run(self._job(agent, req, attempt))
            )
        except Exception as exc:
            return _failure(exc, agent, req, attempt)

    async def _execute(self, agent: Agent, req: JobRequest, attempt: Attempt, run: Running) -> Outcome:
        """Run the backend under the timeout; a cancel request cancels the backend's task."""
        if run.cancel_reason is not None:
            # Cancelled while "processing" was being written: the log says so all the same.
            return _cancelled(attempt, run.cancel_reason)
        if self.meter is not None:
            # A job queued before its project's budget was spent does not start after it.
            await self.meter.prime(req.project)
            if (stop := self.meter.check(req.project)) is not None:
                attempt.budget_stop = stop
                return self._over_budget(agent, attempt, stop)
        job = self._job(agent, req, attempt)
        timeout = req.timeout_ms / 1000 if req.timeout_ms else agent.timeout_s
        task = asyncio.create_task(self.backends[agent.backend].run(job))
        run.task = task
        try:
            async with asyncio.timeout(timeout):
                body = await task
            attempt.log("info", f"finished in {timeout - job.remaining_s:.3f} s")
            return Outcome("completed", body=body)
        except TimeoutError:
            if run.cancel_reason is not None:
                return _cancelled(attempt, run.cancel_reason)
            attempt.log("error", f"no answer within {timeout:g} s: stopped")
            return Outcome(
                "timeout",
                error=f"{agent.name} did not finish within {timeout:g} s",
                body=ResultBody(summary=f"{agent.name} did not finish within {timeout:g} s and was stopped."),
            )
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if run.cancel_reason is not None and me is not None and me.cancelling() == 0:
                return _cancelled(attempt, run.cancel_reason)
            raise
        except Exception as exc:
            return _failure(exc, agent, req, attempt)
        finally:
            run.task = None
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # --- endings ---------------------------------------------------------------------------------

    def _new_record(self, req: JobRequest) -> JobRecord:
        return lifecycle.requested(req, now=utcnow(), agent=req.agent)

    def _processing(
        self, r: JobRecord | None, req: JobRequest, agent: Agent, number: int, now: object
    ) -> JobRecord | None:
        if r is not None and (r.terminal or r.attempts >= number):
            return None
        base = r or self._new_record(req)
        return lifecycle.start(
            base,
            attempt=number,
            now=now,
            agent=agent.name,
            backend=agent.backend,
            agent_version=agent.version,
        )

    async def _requeue(self, attempt: Attempt, error: str, *, counted: bool) -> None:
        number = attempt.number

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is None or r.terminal or r.attempts > number:
                return None
            return lifecycle.requeue(
                r, attempts=number if counted else number - 1, error=error, usage=attempt.usage
            )

        await attempt.write(change)

    async def _retry(self, msg: bus.Delivery, agent: Agent, attempt: Attempt, outcome: Outcome) -> None:
        base, cap = self.settings.retry_base_ms / 1000, self.settings.retry_cap_ms / 1000
        delay = (
            outcome.retry_after_s
            if outcome.retry_after_s is not None
            else retry_delay(attempt.number, base, cap)
        )
        text = f"attempt {attempt.number} failed: {outcome.error}; retrying in {delay:.1f} s"
        attempt.log("warning", text)
        self.metrics.retried[metric_label(agent)].inc()
        await self._requeue(attempt, text, counted=True)
        await attempt.flush_log()
        raise RetryableError(text, delay_s=delay)

    async def _give_up(
        self,
        msg: bus.Delivery,
        req: JobRequest,
        agent_name: str,
        attempt: Attempt,
        error: str,
        *,
        backend: str | None,
        body: ResultBody | None = None,
        elapsed_ms: int = 0,
        ran: bool = True,
    ) -> None:
        """Last attempt failed (or the input is bad): DLQ copy first, then the record and result."""
        attempt.log("error", f"giving up after {attempt.number} attempt(s): {error}")
        await dead_letter(self.js, msg, stage=STAGE, error=error)
        self.count_dead_letter()
        summary = (
            f"{agent_name} failed after {attempt.number} attempt(s): {error}"
            if ran
            else f"{agent_name}: {error}"
        )
        outcome = Outcome("failed", body=body or ResultBody(summary=summary), error=error, ran=ran)
        if await self._finish(req, agent_name, backend, attempt, outcome, elapsed_ms, msg):
            await msg.term()

    async def _conclude(
        self,
        msg: bus.Delivery,
        req: JobRequest,
        agent: Agent,
        attempt: Attempt,
        outcome: Outcome,
        elapsed_ms: int,
        *,
        term: bool = False,
    ) -> None:
        if await self._finish(req, agent.name, agent.backend, attempt, outcome, elapsed_ms, msg):
            if term:  # ended for good without a dead letter (a budget stop: nothing to replay now)
                await msg.term()
            else:
                await msg.ack()

    async def _finish(
        self,
        req: JobRequest,
        agent_name: str,
        backend: str | None,
        attempt: Attempt,
        outcome: Outcome,
        elapsed_ms: int,
        msg: bus.Delivery,
    ) -> bool:
        """Write the terminal record, publish the result, tell the fan-out parent.
        Returns False when someone else had already decided the job's end."""
        now = utcnow()

        def result_of(ending: Outcome) -> AgentResult | None:
            if ending.status == "cancelled":
                return None
            return AgentResult(
                job_id=req.job_id,
                lovable_project_id=req.project_id,
                agent_id=agent_name,
                status=ending.status,  # type: ignore[arg-type]
                result=ending.body or ResultBody(summary=ending.error or ending.status),
                execution_time=elapsed_ms,
                timestamp=now,
            )

        result = result_of(outcome)
        number = attempt.number

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is not None and (r.terminal or r.attempts > number):
                return None
            base = r or self._new_record(req)
            return lifecycle.finish(
                base,
                outcome.status,
                now=now,
                attempts=max(number, base.attempts),
                started_at=base.started_at or (now if outcome.ran else None),
                agent=agent_name,
                backend=backend or base.backend,
                error=outcome.error,
                result=result,
                project_id=base.project_id or req.project_id,
                callback_url=base.callback_url or req.callback_url,
                usage=attempt.usage if attempt.usage is not None else base.usage,
            )

        limit = self.js.max_payload
        if (
            result is not None
            and may_exceed(result.result, limit)
            and (new := change(attempt.cur.record)) is not None
            and (too_big := oversize(new, limit, req.correlation_id))
        ):
            # Neither the record nor the result could be sent, on any attempt: end the job failed
            # now with a small result the caller can get (``change`` reads the new values).
            log.warning("job %s: %s", req.job_id, too_big)
            attempt.log("error", too_big)
            summary = f"{agent_name} failed: {too_big}"
            outcome = Outcome("failed", body=ResultBody(summary=summary), error=too_big, ran=outcome.ran)
            result = result_of(outcome)
        # The log first: once a client sees the terminal record, the log it fetches is complete.
        if not (attempt.quiet and outcome.status == "completed"):
            await attempt.flush_log()
        if not await attempt.write(change):
            if attempt.cur.terminal:
                await self._settle_finished(msg, attempt.cur, req)
            else:
                msg.leave()
            return False
        stored = attempt.cur.record
        assert stored is not None
        # One line per job, except for instant agents (benchmarks) whose volume would drown the rest.
        log.log(
            logging.DEBUG if attempt.quiet else logging.INFO,
            "job %s %s (%s, attempt %d)",
            req.job_id,
            outcome.status,
            agent_name,
            number,
            extra={"agent": agent_name, "status": outcome.status},
        )
        await self.results.republish(stored, req.correlation_id)
        if req.parent_id is not None:
            await self.child_done(req.parent_id)
        return True

    async def _settle_finished(self, msg: bus.Delivery, cur: Versioned, req: JobRequest) -> None:
        """The job already ended: make sure its result is out, then drop this delivery."""
        assert cur.record is not None
        await self.results.ensure(cur.record, req.correlation_id)
        if req.parent_id is not None:
            await self.child_done(req.parent_id)
        await msg.ack()

    # --- cancellation ----------------------------------------------------------------------------

    def cancel_running(self, job_id: str, reason: str) -> bool:
        """Stop a job (or a fan-out parent's children) running here; True if there was one."""
        hit = False
        for run in list(self.running.values()):
            if job_id in (run.job_id, run.parent_id):
                run.cancel(reason)
                hit = True
        return hit
