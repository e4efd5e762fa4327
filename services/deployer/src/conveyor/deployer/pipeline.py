"""The deployment pipeline: one request from ``deploys.requested.<site>`` to success or failure.

pending -> creating_repo -> committing_config -> creating_service -> building -> deploying
-> success | failed, plus cancelled (on request, at a step boundary) and superseded (a queued
publish or rollback overtaken by a newer one). Each step runs under its deadline; its
external ids are written to the deployment record when it finishes (and mid-step through
checkpoints), so a redelivered request resumes after the last finished step. The site's
lease is held for the whole run: never two deployments of one site at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from conveyor.deployer.config import Settings
from conveyor.deployer.leases import Leases
from conveyor.deployer.metrics import Metrics
from conveyor.deployer.providers.base import Provider, ProviderError, StepContext
from conveyor.shared import bus
from conveyor.shared.bus import heartbeat
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.deploys import (
    LIVE_KINDS,
    STEPS,
    DeploymentRecord,
    DeploymentStatus,
    DeploymentStatusEvent,
    SiteRecord,
    StepName,
    StepRecord,
    deploy_request_decoder,
)
from conveyor.shared.contracts.errors import PermanentError
from conveyor.shared.contracts.events import AgentResult, JobResult, ResultBody, encoder, utcnow
from conveyor.shared.domain.deploy_store import DeployStore
from conveyor.shared.runtime.logs import bound
from conveyor.shared.runtime.telemetry import consumer_span

log = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    "creating_repo": "create_repo",
    "committing_config": "commit_config",
    "creating_service": "create_service",
    "building": "build",
    "deploying": "deploy",
}
STEP_RETRIES = 3  # attempts of a step whose provider says the failure is transient


class Stop(Exception):
    """Ends a run early with a terminal status (cancelled, superseded, failed)."""

    def __init__(self, status: DeploymentStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Pipeline:
    js: bus.Bus
    store: DeployStore
    leases: Leases
    providers: list[Provider]
    metrics: Metrics
    settings: Settings
    tracer: Any
    max_deliver: int
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # --- the consumer's handler ---------------------------------------------------------------

    async def handle(self, msg: bus.Delivery) -> None:
        request = deploy_request_decoder.decode(msg.data)
        with bound(job=request.deployment_id, correlation=request.correlation_id):
            with consumer_span(self.tracer, "deploys.requested.* process", msg.headers, msg.subject):
                found = await self.store.deployment(request.deployment_id)
                if found is None:
                    raise PermanentError(f"no deployment record {request.deployment_id}")
                if found[0].terminal:
                    log.info("deployment %s already %s", request.deployment_id, found[0].status)
                    return
                try:
                    async with heartbeat(msg, max(0.2, self.settings.ack_wait_s / 3)):
                        await self.run(found[0])
                except Exception as exc:
                    # On the last delivery nothing would move the record on: fail it here.
                    if msg.attempts >= self.max_deliver > 0:
                        await self.finish(request.deployment_id, "failed", f"{type(exc).__name__}: {exc}")
                    raise

    # --- one deployment -----------------------------------------------------------------------

    async def run(self, record: DeploymentRecord) -> None:
        dep, site_id = record.deployment_id, record.site_id
        try:
            await self._wait_for_site(record)
        except Stop as stop:
            await self.finish(dep, stop.status, stop.reason)
            return
        self.metrics.in_progress.inc()
        renewer = asyncio.create_task(self._renew(site_id, dep, asyncio.current_task()))
        try:
            await self._run_steps(dep)
        except Stop as stop:
            await self.finish(dep, stop.status, stop.reason)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self.metrics.in_progress.dec()
            await self.leases.release(site_id, dep)

    async def _wait_for_site(self, record: DeploymentRecord) -> None:
        dep, site_id = record.deployment_id, record.site_id
        deadline = time.monotonic() + self.settings.queue_deadline_s
        waiting = False
        try:
            while True:
                current = await self._record(dep)
                if current.terminal:
                    raise Stop(current.status, current.error or "")
                if current.cancel_requested:
                    raise Stop("cancelled", "cancelled before it started")
                site = await self._site(site_id)
                if current.status == "pending" and current.kind in LIVE_KINDS and site.latest_request != dep:
                    newer = site.latest_request
                    await self.store.update_deployment(
                        dep, lambda r, newer=newer: msgspec.structs.replace(r, superseded_by=newer)
                    )
                    raise Stop("superseded", f"superseded by {newer}")
                if await self.leases.acquire(site_id, dep):
                    return
                if time.monotonic() > deadline:
                    raise Stop(
                        "failed", f"waited over {self.settings.queue_deadline_s:.0f}s for site {site_id}"
                    )
                if not waiting:
                    waiting = True
                    self.metrics.waiting.inc()
                    log.info("deployment %s waits for another deployment of %s", dep, site_id)
                await self.sleep(0.25)
        finally:
            if waiting:
                self.metrics.waiting.dec()

    async def _renew(self, site_id: str, dep: str, runner: asyncio.Task[Any] | None) -> None:
        every = max(0.2, self.settings.lease_s / 3)
        while True:
            await self.sleep(every)
            try:
                ok = await self.leases.renew(site_id, dep)
            except Exception as exc:  # NATS hiccup: try again next round, the lease has slack
                log.warning("could not renew lease of %s: %s", site_id, exc)
                continue
            if not ok and runner is not None:
                log.error("deployment %s lost the lease of %s; stopping", dep, site_id)
                runner.cancel()
                return

    async def _run_steps(self, dep: str) -> None:
        record = await self._record(dep)
        if record.status == "pending" or record.started_at is None:
            record = await self._update(
                dep,
                lambda r: msgspec.structs.replace(
                    r, started_at=r.started_at or utcnow(), attempts=r.attempts + 1
                ),
            )
        else:
            record = await self._update(dep, lambda r: msgspec.structs.replace(r, attempts=r.attempts + 1))
            log.info("resuming deployment %s at %s", dep, record.status)
        artifact_of = None
        if record.rollback_of:
            found = await self.store.deployment(record.rollback_of)
            if found is None or "artifact" not in found[0].external:
                raise Stop("failed", f"deployment {record.rollback_of} has no artifact to roll back to")
            artifact_of = found[0]

        for step in STEPS:
            record = await self._record(dep)
            done = record.step(step)
            if done is not None and done.status in ("done", "skipped"):
                continue
            if record.cancel_requested:
                raise Stop("cancelled", f"cancelled before {step}")
            await self._step(record, step, artifact_of)

        record = await self._record(dep)
        if record.kind in LIVE_KINDS:
            # The site points at its new live deployment before anyone reads "success".
            url = record.external.get("url")
            await self.store.update_site(
                record.site_id,
                lambda s: msgspec.structs.replace(
                    s, live_deployment_id=dep, live_url=url, updated_at=utcnow()
                ),
            )
        await self.finish(dep, "success", None)

    async def _step(
        self, record: DeploymentRecord, step: StepName, artifact_of: DeploymentRecord | None
    ) -> None:
        dep = record.deployment_id
        previous = record.step(step)
        started = utcnow()
        running = StepRecord(
            name=step,
            status="running",
            started_at=started,
            attempts=(previous.attempts + 1) if previous else 1,
        )
        record = await self._update(dep, lambda r: _with_step(r, running, status=step))
        await self._announce(record)
        t0 = time.perf_counter()

        async def checkpoint(outputs: dict[str, str]) -> None:
            await self._update(dep, lambda r: msgspec.structs.replace(r, external={**r.external, **outputs}))

        ctx = StepContext(
            record=record, external=dict(record.external), checkpoint=checkpoint, artifact_of=artifact_of
        )
        deadline = self.settings.step_deadlines.get(step, self.settings.step_deadline_s)
        status: str = "done"
        try:
            if step == "building" and artifact_of is not None:
                # A rollback reuses the earlier build as it is: nothing is rebuilt.
                outputs = {
                    "artifact": artifact_of.external["artifact"],
                    "reused_from": artifact_of.deployment_id,
                }
                for key in ("image", "release", "commit_sha_built"):
                    if key in artifact_of.external:
                        outputs[key] = artifact_of.external[key]
                status = "skipped"
            else:
                async with asyncio.timeout(deadline):
                    if self.settings.test_slow_step == step and self.settings.test_slow_step_s > 0:
                        log.info("test hook: %s waits %.1fs", step, self.settings.test_slow_step_s)
                        await asyncio.sleep(self.settings.test_slow_step_s)
                    outputs = await self._call(step, ctx)
        except TimeoutError:
            await self._fail_step(dep, running, f"{step} exceeded its deadline of {deadline:.0f}s")
            raise Stop("failed", f"{step} exceeded its deadline of {deadline:.0f}s") from None
        except ProviderError as exc:
            await self._fail_step(dep, running, str(exc))
            raise Stop("failed", f"{step}: {exc}") from None
        finally:
            self.metrics.step_seconds.labels(step).observe(time.perf_counter() - t0)

        finished = msgspec.structs.replace(running, status=status, finished_at=utcnow(), outputs=outputs)
        await self._update(
            dep,
            lambda r: _with_step(msgspec.structs.replace(r, external={**r.external, **outputs}), finished),
        )
        log.info("deployment %s: %s %s", dep, step, status, extra={"outputs": outputs})

    async def _call(self, step: StepName, ctx: StepContext) -> dict[str, str]:
        method = METHODS[step]
        merged: dict[str, str] = {}
        for provider in self.providers:
            for attempt in range(1, STEP_RETRIES + 1):
                try:
                    out = await getattr(provider, method)(ctx)
                    break
                except ProviderError as exc:
                    if not exc.retryable or attempt == STEP_RETRIES:
                        raise
                    delay = min(30.0, 2.0 ** (attempt - 1))
                    log.warning("%s.%s failed (%s); retrying in %.0fs", provider.name, method, exc, delay)
                    await self.sleep(delay)
            ctx.external.update(out)
            merged.update(out)
        return merged

    async def _fail_step(self, dep: str, running: StepRecord, error: str) -> None:
        failed = msgspec.structs.replace(running, status="failed", finished_at=utcnow(), error=error)
        with contextlib.suppress(Exception):
            await self._update(dep, lambda r: _with_step(r, failed))

    # --- endings --------------------------------------------------------------------------------

    async def finish(self, dep: str, status: DeploymentStatus, error: str | None) -> None:
        """Move to a terminal status (once), announce it, count it, and call the owner back."""
        changed = False

        def change(r: DeploymentRecord) -> DeploymentRecord | None:
            nonlocal changed
            if r.terminal:
                return None
            changed = True
            url = r.external.get("url") if status == "success" else r.url
            return msgspec.structs.replace(r, status=status, error=error, finished_at=utcnow(), url=url)

        record = await self.store.update_deployment(dep, change)
        if record is None or not changed:
            return
        self.metrics.deployments.labels(status).inc()
        log.info("deployment %s %s%s", dep, status, f": {error}" if error else "")
        await self._announce(record)
        if status in ("success", "failed"):
            await self._callback(record)

    async def _callback(self, record: DeploymentRecord) -> None:
        """A JobResult on ``results.<deployment id>``: the deliverer signs and POSTs it."""
        ok = record.status == "success"
        took = (record.finished_at or utcnow()) - (record.started_at or record.created_at)
        what = {"publish": "Published", "preview": "Preview of", "rollback": "Rolled back"}[record.kind]
        summary = (
            f"{what} {record.site_id} at {record.url}"
            if ok
            else f"Deployment of {record.site_id} failed: {record.error}"
        )
        body = AgentResult(
            job_id=record.deployment_id,
            lovable_project_id=record.project_id,
            agent_id="deployer",
            status="completed" if ok else "failed",
            result=ResultBody(
                summary=summary,
                files_changed=["site-config.json"] if ok else [],
                suggestions=[record.url] if ok and record.url else [],
            ),
            execution_time=int(took.total_seconds() * 1000),
            timestamp=utcnow(),
        )
        result = JobResult(
            job_id=record.deployment_id,
            callback_url=record.callback_url,
            source=record.source,
            result=body,
            correlation_id=record.correlation_id,
            kind="deployment",
            project=record.project,
        )
        await self.js.publish(
            subjects.result(record.deployment_id),
            encoder.encode(result),
            stream=subjects.RESULTS,
            msg_id=ids.result_msg_id(record.deployment_id),
        )

    async def _announce(self, record: DeploymentRecord) -> None:
        running = record.step(record.status)
        event = DeploymentStatusEvent(
            deployment_id=record.deployment_id,
            site_id=record.site_id,
            kind=record.kind,
            status=record.status,
            at=utcnow(),
            step=record.status if running else None,
            url=record.url,
            error=record.error,
        )
        msg_id = f"status-{record.deployment_id}-{record.status}-{record.attempts}"
        if running is not None:
            msg_id += f"-{running.attempts}"
        await self.js.publish(
            subjects.deploy_status(record.site_id),
            encoder.encode(event),
            stream=subjects.DEPLOYS,
            msg_id=msg_id,
        )

    # --- records ----------------------------------------------------------------------------

    async def _record(self, dep: str) -> DeploymentRecord:
        found = await self.store.deployment(dep)
        if found is None:
            raise PermanentError(f"deployment record {dep} disappeared")
        return found[0]

    async def _site(self, site_id: str) -> SiteRecord:
        found = await self.store.site(site_id)
        if found is None:
            raise Stop("failed", f"site {site_id} no longer exists")
        return found[0]

    async def _update(
        self, dep: str, change: Callable[[DeploymentRecord], DeploymentRecord | None]
    ) -> DeploymentRecord:
        record = await self.store.update_deployment(dep, change)
        if record is None:
            raise PermanentError(f"deployment record {dep} disappeared")
        return record


def _with_step(record: DeploymentRecord, step: StepRecord, **changes: Any) -> DeploymentRecord:
    steps = [s for s in record.steps if s.name != step.name] + [step]
    steps.sort(key=lambda s: STEPS.index(s.name))
    return msgspec.structs.replace(record, steps=steps, **changes)
