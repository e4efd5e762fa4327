"""Fairness between projects: at most ``Project.max_running`` jobs of a project run at once,
across every executor, so a project that floods the queue cannot starve the others.

JetStream does the counting. A project with a limit has a durable of its own on JOBS,
``executor-limited-<project>`` on ``jobs.limited.<project>.>``, whose ``max_ack_pending`` is
the limit: the server never has more of the project's messages delivered and unacknowledged
than that, whichever executors pulled them. A job's message stays unacknowledged while the
job runs (in-progress acks) and is settled when it ends, so that count is the project's
running jobs; a SIGKILLed executor's messages come back after AckWait, and its slots with them.

Jobs get there by a hop: the shared consumer (``executor`` on ``jobs.run.>``) takes every job
as before; one whose project has a limit (a dict lookup: the ``projects`` bucket is mirrored
in memory through a watch) is republished unchanged to ``jobs.limited.<project>.<agent>`` with
``Nats-Msg-Id = limited-<job id>`` (a redelivered original hops once) and acknowledged. A
waiting job then holds nothing of the shared consumer, which goes on with the next job of any
project; a job of a project without a limit costs the lookup and nothing else.

An executor pulls from a project's durable only while the project has jobs there: from the
moment it hops one itself, or its look at the stream (one stream info every ``SWEEP_S``)
shows some; it stops once the look shows none. So an idle project costs nothing, a job hopped
by an executor that died at once is found by the others, and a project whose limit was
removed drains what it had queued at the shared pace. Each executor takes at most
``min(max_running, CONCURRENCY)`` of a project's jobs at once, in slots of the project's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from conveyor.executor.config import Settings
from conveyor.executor.metrics import Metrics
from conveyor.shared import bus
from conveyor.shared.bus import AckPolicy, Consumer, ConsumerConfig, Handler, KvMirror
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import DEFAULT_PROJECT, JobRequest
from conveyor.shared.domain.tenancy import Project, project_decoder
from conveyor.shared.runtime.runner import Runtime

log = logging.getLogger(__name__)

SWEEP_S = 2.0
POLL_S = 5.0  # an idle open pull on a project's durable costs one pull request per POLL_S
DRAIN_MAX_ACK_PENDING = 10_000  # a project whose limit was removed: as the shared consumer
IDLE_EXPIRY_S = 24 * 3600.0  # a durable nobody pulled from for a day is removed by the server


def limited_msg_id(job_id: str) -> str:
    return f"limited-{job_id}"


@dataclass
class _Gate:
    consumer: Consumer
    limit: int  # as set on the durable; 0: the limit is gone, the queue drains


class Gates:
    """The projects with a running limit (``limits``, read on every job), the hop, and the
    per-project consumers this executor runs."""

    def __init__(self, rt: Runtime[Any], settings: Settings, metrics: Metrics, *, stage: str) -> None:
        self.rt = rt
        self.settings = settings
        self.metrics = metrics
        self.stage = stage
        self.sweep_s = SWEEP_S
        self.limits: dict[str, int] = {}  # project -> max_running, only those above 0
        self.agents_of: dict[str, frozenset[str]] = {}  # project -> the agents it may run, if listed
        self.mirror: KvMirror[Project] = KvMirror(
            rt.kv[subjects.KV_PROJECTS],
            subjects.KV_PROJECTS,
            project_decoder.decode,
            on_change=self._on_project,
        )
        self._handler: Handler | None = None
        self._gates: dict[str, _Gate] = {}
        self._hopped: set[str] = set()  # projects this executor hopped a job of since the last look
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Load the projects (before the first job is taken), then keep the gates in step."""
        self._handler = handler
        await self.mirror.start()
        with contextlib.suppress(Exception):
            await self._reconcile()
        self._task = asyncio.create_task(self._loop(), name="limited-gates")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.mirror.stop()
        # The runner stops the consumers it knows of; one started during shutdown is stopped here.
        grace = self.settings.shutdown_grace_s
        gates, self._gates = list(self._gates.values()), {}
        await asyncio.gather(*(g.consumer.stop(grace) for g in gates), return_exceptions=True)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def running(self) -> list[str]:
        return sorted(self._gates)

    # --- the hop --------------------------------------------------------------------------------

    async def hop(self, msg: bus.Delivery, req: JobRequest) -> None:
        """Move a limited project's job from the shared queue to its own, body and headers as
        they were (the trace context and correlation id travel on)."""
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        await self.rt.bus.publish(
            subjects.job_limited(req.project, req.agent),
            msg.data,
            msg_id=limited_msg_id(req.job_id),
            stream=subjects.JOBS,
            headers=headers,
            trace=False,
        )
        await msg.ack()
        self.metrics.limited.inc()
        if req.project not in self._gates:
            self._hopped.add(req.project)
            self._wake.set()

    # --- keeping the gates in step -------------------------------------------------------------

    def _on_project(self, key: str, project: Project | None) -> None:
        if key == DEFAULT_PROJECT or not subjects.is_token(key):
            return  # the default is defined by settings, never by KV (as in tenancy.Directory)
        if project is not None and project.agents:
            self.agents_of[key] = frozenset(project.agents)
        else:
            self.agents_of.pop(key, None)
        limit = project.max_running if project is not None else 0
        if limit > 0:
            self.limits[key] = limit
        else:
            self.limits.pop(key, None)
        gate = self._gates.get(key)
        if gate is not None and gate.limit != limit:
            self._wake.set()

    async def _loop(self) -> None:
        while not self.rt.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_s)
            self._wake.clear()
            if self.rt.stopping.is_set():
                return
            try:
                await self._reconcile()
            except Exception as exc:  # NATS away or restarting: the next look tries again
                log.warning("limited projects: %s", exc)

    async def _waiting(self) -> set[str]:
        """Projects with jobs on their limited subjects: waiting, or running unacknowledged."""
        counts = await self.rt.bus.subject_counts(subjects.JOBS, subjects.LIMITED_JOBS_FILTER)
        found = set()
        for subject, count in counts.items():
            parts = subject.split(".")
            if count and len(parts) == 4 and subjects.is_token(parts[2]):
                found.add(parts[2])
        return found

    async def _reconcile(self) -> None:
        hopped, self._hopped = self._hopped, set()
        try:
            wanted = await self._waiting() | hopped
        except BaseException:
            self._hopped |= hopped
            raise
        for project in [p for p in self._gates if p not in wanted]:
            self._stop(project)
        for project in wanted:
            limit = self.limits.get(project, 0)
            gate = self._gates.get(project)
            if gate is None:
                await self._start(project, limit)
            elif gate.limit != limit:
                await self._retune(project, gate, limit)
        self.metrics.limited_projects.set(len(self._gates))

    def _slots(self, limit: int) -> int:
        # A pull may not ask for more than max_ack_pending (the server refuses it with a 409).
        return min(limit, self.settings.concurrency) if limit > 0 else self.settings.concurrency

    def _config(self, project: str, limit: int) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=subjects.limited_consumer(project),
            filter_subject=subjects.limited_filter(project),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=-1,  # attempts are counted in the job record, as on the shared consumer
            max_ack_pending=limit if limit > 0 else DRAIN_MAX_ACK_PENDING,
            inactive_threshold=IDLE_EXPIRY_S,
        )

    async def _start(self, project: str, limit: int) -> None:
        if self.rt.stopping.is_set() or self._handler is None:
            return
        slots = self._slots(limit)
        consumer = self.rt.bus.consumer(
            subjects.JOBS,
            self._config(project, limit),
            self._handler,
            stage=self.stage,
            metrics=self.rt.consumer_metrics,
            concurrency=slots,
            batch=slots,
            poll_s=POLL_S,
            retry_base_s=self.settings.retry_base_ms / 1000,
            retry_cap_s=self.settings.retry_cap_ms / 1000,
        )
        await consumer.start()  # creates or converges the durable
        self._gates[project] = _Gate(consumer, limit)
        self.rt.consumers.append(consumer)
        log.info("taking project %s's jobs (max_running %s)", project, limit or "none: draining")

    async def _retune(self, project: str, gate: _Gate, limit: int) -> None:
        """The project's limit changed: the durable's max_ack_pending and our slots follow."""
        consumer = gate.consumer
        slots = self._slots(limit)
        if slots < consumer.concurrency:  # smaller pulls first, so none is refused meanwhile
            consumer.concurrency = consumer.batch = slots
        config = self._config(project, limit)
        await self.rt.bus.add_consumer(subjects.JOBS, config)
        consumer.config = config
        consumer.concurrency = consumer.batch = slots
        gate.limit = limit
        log.info("project %s: max_running now %s", project, limit or "none: draining")

    def _stop(self, project: str) -> None:
        """Nothing of the project is left: stop pulling (in the background: a job that came in
        meanwhile gets the shutdown grace, then goes back to the stream for another executor)."""
        gate = self._gates.pop(project)
        with contextlib.suppress(ValueError):
            self.rt.consumers.remove(gate.consumer)
        task = asyncio.create_task(gate.consumer.stop(self.settings.shutdown_grace_s))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
