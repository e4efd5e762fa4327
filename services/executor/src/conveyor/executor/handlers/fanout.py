"""Fan-out: one event, several agents in parallel, one aggregated result.

The router turns the event's job into a parent record ("processing", listing its children),
creates one child job per agent (``<parent>-<agent>``, no callback of their own) and
publishes a deadline message on ``jobs.fanout.<parent>``. Any replica runs the children.

The parent completes when its last child ends: every child that finishes reads its
siblings after writing its own terminal record, so at least one of them sees all of them
done; the parent's write is a compare-and-set, so only one of them completes it. If the
deadline comes first, the deadline message (held back by a delayed NAK, so it survives any
executor's death) completes the parent as "timeout" with what finished, and cancels the
rest. Then one ``JobResult`` for the parent goes to ``results.<parent>``.

Parent status: completed if every child completed; timeout if the deadline passed first;
cancelled if the parent was cancelled; otherwise failed. The result always carries the
children's partial results and says which child failed and why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import replace

from conveyor.executor import pricing
from conveyor.executor.handlers.jobstore import Conflict, JobStore, Versioned
from conveyor.executor.handlers.results import Results, oversize
from conveyor.executor.registry import Agent
from conveyor.shared import bus
from conveyor.shared.contracts import ids, lifecycle, subjects
from conveyor.shared.contracts.events import (
    NOT_JSON,
    AgentResult,
    CancelRequest,
    JobRecord,
    JobRequest,
    Message,
    PipelineRun,
    PipelineStage,
    ResultBody,
    TokenUsage,
    WebhookEvent,
    utcnow,
)
from conveyor.shared.domain.agentdefs import AgentDefinition
from conveyor.shared.runtime.logs import bound

if TYPE_CHECKING:
    from conveyor.executor.handlers.definitions import Definitions

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


def children_usage(children: dict[str, JobRecord | None]) -> TokenUsage | None:
    """A fan-out parent's LLM usage: its children's, summed (None when none used an LLM)."""
    total: TokenUsage | None = None
    for child in children.values():
        if child is not None and child.usage is not None:
            total = pricing.add(total, child.usage)
    return total


class FanoutDeadline(Message, frozen=True, kw_only=True):
    """On ``jobs.fanout.<parent_id>``: when the parent must be complete, children or not."""

    parent_id: str
    deadline: dt.datetime
    children: list[str]
    stage: int | None = None  # a pipeline's stage (index): the deadline is that stage's


_deadline_decoder = msgspec.json.Decoder(FanoutDeadline)

_WORD = {"completed": "completed", "failed": "failed", "timeout": "timed out", "cancelled": "was cancelled"}


def aggregate(
    parent: JobRecord,
    children: dict[str, JobRecord | None],
    status: str,
    now: dt.datetime,
    headline: str | None = None,
) -> AgentResult:
    """The parent's result: every child's outcome, its findings prefixed by the agent's name
    (a pipeline's children by their stage too)."""
    lines: list[str] = []
    files: list[str] = []
    suggestions: list[str] = []
    diffs: list[str] = []
    outcomes: list[str] = []
    for child_id, rec in children.items():
        agent = (rec.agent if rec else None) or child_id.rsplit("-", 1)[-1]
        if parent.pipeline is not None:
            agent = f"stage {_stage_of(parent.pipeline, child_id) + 1} {agent}"
        if rec is None or not rec.terminal:
            outcomes.append(f"{agent} did not finish")
            lines.append(f"- {agent}: did not finish before the deadline")
            continue
        outcomes.append(f"{agent} {_WORD.get(rec.status, rec.status)}")
        body = rec.result.result if rec.result else None
        if rec.status == "completed" and body is not None:
            lines.append(f"- {agent}: {body.summary}")
        else:
            lines.append(f"- {agent}: {rec.status}: {rec.error or (body.summary if body else 'no result')}")
        if body is not None:
            files += [f for f in body.files_changed if f not in files]
            suggestions += [f"[{agent}] {s}" for s in body.suggestions]
            if isinstance(body.code_diff, str) and body.code_diff:
                diffs.append(body.code_diff)
    headline = headline or f"{len(children)} agents ran in parallel: {', '.join(outcomes)}."
    summary = headline + "\n" + "\n".join(lines)
    started = parent.started_at or parent.created_at
    body = ResultBody(summary=summary, files_changed=files, suggestions=suggestions)
    if diffs:
        body = replace(body, code_diff="\n".join(d.rstrip("\n") for d in diffs) + "\n")
    return AgentResult(
        job_id=parent.job_id,
        lovable_project_id=parent.project_id,
        agent_id=parent.agent or "+".join(children),
        status=status,  # type: ignore[arg-type]
        result=body,
        execution_time=max(0, int((now - started).total_seconds() * 1000)),
        timestamp=now,
    )


def _stage_of(run: PipelineRun, child_id: str) -> int:
    return next((i for i, s in enumerate(run.stages) if child_id in s.children), 0)


STAGE_INPUT_MAX = 512 * 1024  # a stage's JobRequest must fit NATS' max_payload (1 MiB by default)


def stage_input(run: PipelineRun, k: int, children: dict[str, JobRecord | None]) -> bytes:
    """What stage ``k`` is given: the job's input (an object, or {"input": value}) with
    ``pipeline``: its name, the stage, and every earlier stage's results. Past STAGE_INPUT_MAX
    the results are cut to their summaries (``"trimmed": true``), so the stage's request
    always fits in a message."""
    try:
        base = msgspec.json.decode(run.input)
    except NOT_JSON:
        base = None
    given: dict[str, Any] = dict(base) if isinstance(base, dict) else {"input": base}
    for full in (True, False):
        previous = []
        for i, stage in enumerate(run.stages[:k]):
            results = []
            for child_id in stage.children:
                rec = children.get(child_id)
                body = rec.result.result if rec is not None and rec.result is not None else None
                item: dict[str, Any] = {
                    "agent": (rec.agent if rec else None) or child_id.rsplit("-", 1)[-1],
                    "status": rec.status if rec is not None else "missing",
                }
                if body is not None and full:
                    item.update(
                        summary=body.summary, suggestions=body.suggestions, files_changed=body.files_changed
                    )
                    if isinstance(body.code_diff, str) and body.code_diff:
                        item["code_diff"] = body.code_diff
                elif body is not None:
                    item["summary"] = body.summary[:2000]
                results.append(item)
            previous.append({"stage": i + 1, "agents": stage.agents, "results": results})
        pipeline: dict[str, Any] = {"name": run.name, "stage": k + 1, "stages": len(run.stages)}
        given["pipeline"] = {**pipeline, "previous": previous, **({} if full else {"trimmed": True})}
        encoded = _encoder.encode(given)
        if len(encoded) <= STAGE_INPUT_MAX:
            return encoded
    given["pipeline"] = {**pipeline, "previous": previous[-1:], "trimmed": True}
    return _encoder.encode(given)


class Fanout:
    def __init__(
        self,
        *,
        js: bus.Bus,
        store: JobStore,
        results: Results,
        cancels_kv: bus.Kv,
        cancel_reason: Callable[[str, str | None], str | None],
        deadline_ms: int | None,
        definitions: Definitions | None = None,
    ) -> None:
        self.definitions = definitions
        self.js = js
        self.store = store
        self.results = results
        self.cancels_kv = cancels_kv
        self.cancel_reason = cancel_reason
        self.deadline_ms = deadline_ms

    def deadline_s(self, agents: list[Agent]) -> float:
        if self.deadline_ms:
            return self.deadline_ms / 1000
        # Long enough for the slowest child to use all its attempts, plus a minute of queueing.
        return max(a.timeout_s * a.max_attempts for a in agents) + 60

    # --- start (from the router) -----------------------------------------------------------------

    async def start(
        self, event: WebhookEvent, agents: list[Agent], prompt: str | None, given: bytes | None = None
    ) -> None:
        """``given``: the children's input when it is not the event's payload (a delegation)."""
        parent_id = event.job_id
        children = {ids.child_job_id(parent_id, a.name): a for a in agents}
        now = utcnow()
        deadline = now + dt.timedelta(seconds=self.deadline_s(agents))

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is not None and (r.terminal or (r.status == "processing" and r.children == list(children))):
                return None  # over already, or this event was routed before
            base = r or lifecycle.received(event, now=now)
            return lifecycle.start(
                base,
                attempt=1,
                now=now,
                progress=0,
                agent="+".join(a.name for a in agents),
                backend="fanout",
                children=list(children),
                started_at=base.started_at or now,
                updated_at=now,
                project_id=base.project_id or event.project_id,
                callback_url=base.callback_url or event.callback_url,
            )

        _, cur = await self.store.advance(parent_id, await self.store.load(parent_id), change)
        if cur.record is not None and cur.terminal:
            await self.results.ensure(cur.record)  # routed again after it ended (a late repeat)
            return
        request = JobRequest(
            job_id=parent_id,
            agent="",
            created_at=now,
            source=event.source,
            event_type=event.type,
            prompt=prompt,
            input=msgspec.Raw(given) if given is not None else event.payload,
            project_id=event.project_id,
            project=event.project,
            correlation_id=event.correlation_id or event.job_id,
        )
        await asyncio.gather(
            *(self._spawn(request, child_id, agent.name, now) for child_id, agent in children.items()),
            self._schedule(parent_id, deadline, list(children)),
        )

    async def _spawn(self, parent: JobRequest, child_id: str, agent: str, now: dt.datetime) -> None:
        """One child: its record ("queued"), then its request. Both idempotent (a create that
        finds the record, a publish deduplicated by its id), so any replica may do it again."""
        record = lifecycle.child(parent, child_id, agent, now=now)
        try:
            await self.store.save(child_id, record, 0)
        except Conflict:
            pass  # created by an earlier delivery of this event
        request = replace(parent, job_id=child_id, agent=agent, created_at=now, parent_id=parent.job_id,
                          callback_url=None, timeout_ms=None, agent_version=None)  # fmt: skip
        await self.js.publish(
            subjects.job_run(agent),
            _encoder.encode(request),
            stream=subjects.JOBS,
            msg_id=child_id,
        )

    async def _schedule(
        self, parent_id: str, deadline: dt.datetime, children: list[str], stage: int | None = None
    ) -> None:
        body = FanoutDeadline(parent_id=parent_id, deadline=deadline, children=children, stage=stage)
        msg_id = f"fanout-{parent_id}" if stage is None else f"fanout-{parent_id}-s{stage + 1}"
        await self.js.publish(
            subjects.fanout_deadline(parent_id),
            _encoder.encode(body),
            stream=subjects.JOBS,
            msg_id=msg_id,
        )

    # --- completion --------------------------------------------------------------------------------

    async def child_done(self, parent_id: str) -> None:
        """A child ended: complete the parent if it was the last one, else move its progress
        (a pipeline: start its next stage when this one is over)."""
        for _ in range(10):
            parent = await self.store.load(parent_id)
            if parent.record is None:
                return
            if parent.terminal:
                # Over already; publish in case its finisher died before publishing: a child
                # redelivered after that crash brings us here.
                await self.results.ensure(parent.record)
                return
            if not parent.record.children:
                return  # not a fan-out: a job that delegated to this one waits for it itself
            if parent.record.pipeline is not None:
                if await self._step(parent):
                    return
                continue
            children = await self._children(parent.record)
            done = sum(1 for c in children.values() if c is not None and c.terminal)
            if done == len(children):
                if await self._complete(parent, children, timed_out=False):
                    return
                continue  # the parent changed under us: look again
            progress = min(99, 100 * done // max(1, len(children)))
            if progress > parent.record.progress:
                try:
                    rec = lifecycle.progress(parent.record, progress)
                    await self.store.save(parent_id, rec, parent.revision)
                except Conflict:
                    continue  # a sibling wrote at the same time: it may have been the last
            return

    async def _children(self, parent: JobRecord) -> dict[str, JobRecord | None]:
        loaded = await asyncio.gather(*(self.store.load(c) for c in parent.children))
        return {c: v.record for c, v in zip(parent.children, loaded, strict=True)}

    async def _complete(
        self,
        parent: Versioned,
        children: dict[str, JobRecord | None],
        *,
        timed_out: bool,
        status: str | None = None,
        headline: str | None = None,
    ) -> bool:
        """Write the parent's end (compare-and-set) and publish its one result. ``status``: a
        pipeline's, decided by its stages."""
        assert parent.record is not None
        now = utcnow()
        statuses = [c.status if c is not None else "queued" for c in children.values()]
        if self.cancel_reason(parent.record.job_id, None) is not None:
            status = "cancelled"
        elif status is not None:
            pass
        elif timed_out:
            status = "timeout"
        elif all(s == "completed" for s in statuses):
            status = "completed"
        elif all(s == "cancelled" for s in statuses):
            status = "cancelled"
        else:
            status = "failed"
        result = None if status == "cancelled" else aggregate(parent.record, children, status, now, headline)
        failed = [
            f"{(c.agent if c else cid)} {c.status if c else 'missing'}"
            + (f" ({c.error})" if c and c.error else "")
            for cid, c in children.items()
            if c is None or c.status != "completed"
        ]
        record = lifecycle.finish(
            parent.record,
            status,
            now=now,
            result=result,
            error="; ".join(failed) or None,
            usage=children_usage(children),
        )
        if result is not None and (too_big := oversize(record, self.js.max_payload)):
            # Each child's result fitted, their sum does not: the parent ends failed with a small
            # result that says where the children's results are, instead of never ending.
            where = ", ".join(f"/api/jobs/{c}/result" for c in children)
            log.warning("fan-out %s: %s", record.job_id, too_big)
            small = replace(
                result, status="failed", result=ResultBody(summary=f"{too_big}; each agent's result: {where}")
            )
            status = "failed"
            record = lifecycle.finish(parent.record, status, now=now, result=small, error=too_big)
        try:
            await self.store.save(parent.record.job_id, record, parent.revision)
        except Conflict:
            return False
        with bound(job=record.job_id):
            log.info("fan-out %s %s (%s)", record.job_id, status, ", ".join(statuses))
        await self.results.republish(record)
        if record.parent_id is not None:
            await self.child_done(record.parent_id)  # a pipeline run as one agent of a fan-out
        return True

    # --- the deadline ------------------------------------------------------------------------------

    async def on_deadline(self, msg: bus.Delivery) -> None:
        body = _deadline_decoder.decode(msg.data)  # unreadable: the consumer dead-letters it
        remaining = (body.deadline - utcnow()).total_seconds()
        if body.stage is not None:
            await self._stage_deadline(msg, body, remaining)
            return
        if remaining > 0:
            parent = await self.store.load(body.parent_id)
            if parent.record is not None and not parent.terminal:
                # Not yet: JetStream holds it back and hands it to whichever replica is alive then.
                await msg.nak(delay=remaining)
                return
        with bound(job=body.parent_id):
            await self.expire(body.parent_id)
        await msg.ack()

    async def expire(self, parent_id: str) -> None:
        for _ in range(10):
            parent = await self.store.load(parent_id)
            if parent.record is None:
                return
            if parent.terminal:
                await self.results.ensure(parent.record)  # in case the finisher died before publishing
                return
            children = await self._children(parent.record)
            unfinished = [c for c, r in children.items() if r is None or not r.terminal]
            if await self._complete(parent, children, timed_out=bool(unfinished)):
                await asyncio.gather(*(self._cancel_child(c) for c in unfinished))
                return

    async def _cancel_child(self, child_id: str) -> None:
        request = CancelRequest(job_id=child_id, requested_at=utcnow(), reason="the parent's deadline passed")
        try:
            await self.cancels_kv.create(child_id, _encoder.encode(request))
        except Exception as exc:  # already requested, or NATS trouble: the child ends by its own timeout
            log.debug("cancel of %s not written: %s", child_id, exc)

    # --- pipelines -----------------------------------------------------------------------------
    #
    # A pipeline's job is the parent of every stage's children (``<job>-s<n>-<agent>``); its
    # record holds the plan, the stage running and the job's input (PipelineRun). Stage n+1 is
    # started by whoever sees stage n over (a child's child_done, or the stage's deadline):
    # it creates and publishes the next stage's children and deadline first, all idempotent
    # (ids derived from the job), then moves the record on (compare-and-set). A crash between
    # the two leaves the record at stage n with every child of it over: the next child_done or
    # stage n's deadline message (held in JetStream) does the step again, so a SIGKILLed
    # executor loses no stage, and only one writer moves the record.

    async def start_pipeline(self, req: JobRequest, definition: AgentDefinition, agent: Agent) -> None:
        """A pipeline's job taken from ``jobs.run.<pipeline>``: fix its plan in the record and
        start the first stage. A redelivery finds the plan and starts that stage again
        (idempotently)."""
        now = utcnow()
        run = PipelineRun(
            name=definition.id,
            stages=[
                PipelineStage(agents=list(s.agents), on_failure=s.on_failure, timeout_ms=s.timeout_ms)
                for s in definition.stages
            ],
            prompt=req.prompt,
            input=req.input,
        )
        first = self._stage_children(req.job_id, run, 0)

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is not None and (r.terminal or r.pipeline is not None):
                return None
            base = r or lifecycle.requested(req, now=now)
            return lifecycle.move(
                base,
                "processing",
                agent=definition.id,
                backend="pipeline",
                agent_version=agent.version,
                pipeline=run,
                children=[],
                attempts=1,
                progress=0,
                started_at=base.started_at or now,
                updated_at=now,
            )

        _, cur = await self.store.advance(req.job_id, await self.store.load(req.job_id), change)
        for _ in range(10):
            if cur.record is None or cur.terminal:
                if cur.record is not None:
                    await self.results.ensure(cur.record, req.correlation_id)
                return
            if cur.record.children or await self._advance(cur, 0, first):
                break
            cur = await self.store.load(req.job_id)
        await self.child_done(req.job_id)  # a redelivery after the first stage ended moves it on

    def _stage_children(self, job_id: str, run: PipelineRun, k: int) -> list[str]:
        return [f"{job_id}-s{k + 1}-{a}" for a in run.stages[k].agents]

    async def _advance(self, parent: Versioned, k: int, children: list[str]) -> bool:
        """Start stage ``k`` (children, then deadline), then write it into the record."""
        rec = parent.record
        assert rec is not None and rec.pipeline is not None
        run = rec.pipeline
        done = await self._children(rec)
        stage = run.stages[k]
        now = utcnow()
        budget = (
            self.definitions.stage_budget_s(rec.project, stage.agents, stage.timeout_ms)
            if self.definitions is not None
            else (stage.timeout_ms or 60_000) / 1000
        )
        deadline = now + dt.timedelta(seconds=budget)
        request = JobRequest(
            job_id=rec.job_id,
            agent="",
            created_at=now,
            source=rec.source,
            event_type=rec.event_type,
            prompt=run.prompt,
            input=msgspec.Raw(stage_input(run, k, done)),
            project_id=rec.project_id,
            project=rec.project,
            correlation_id=rec.job_id,
        )
        await asyncio.gather(
            *(self._spawn(request, c, a, now) for c, a in zip(children, stage.agents, strict=True)),
            self._schedule(rec.job_id, deadline, children, stage=k),
        )
        stages = list(run.stages)
        stages[k] = replace(stage, children=children, deadline=deadline)
        new = replace(
            rec,
            pipeline=replace(run, stages=stages, stage=k),
            children=[*rec.children, *children],
            progress=max(rec.progress, min(99, 100 * k // len(stages))),
            updated_at=now,
        )
        try:
            await self.store.save(rec.job_id, new, parent.revision)
        except Conflict:
            return False
        with bound(job=rec.job_id):
            log.info(
                "pipeline %s: stage %d of %d started (%s)",
                rec.job_id,
                k + 1,
                len(stages),
                ", ".join(stage.agents),
            )
        return True

    async def _step(self, parent: Versioned) -> bool:
        """The pipeline's current stage: wait, move progress, start the next stage, or end.
        False when the record changed under us (look again)."""
        rec = parent.record
        assert rec is not None and rec.pipeline is not None
        run = rec.pipeline
        k = run.stage
        stage = run.stages[k]
        loaded = await asyncio.gather(*(self.store.load(c) for c in stage.children))
        mine = {c: v.record for c, v in zip(stage.children, loaded, strict=True)}
        done = sum(1 for r in mine.values() if r is not None and r.terminal)
        if self.cancel_reason(rec.job_id, None) is not None or done == len(mine):
            # Ended: done. Advanced: look again, the new stage may be over already (its children
            # were started before a crash kept the record from moving on).
            return await self._stage_over(parent, timed_out=False) == "ended"
        progress = min(99, (100 * k + 100 * done // max(1, len(mine))) // len(run.stages))
        if progress > rec.progress:
            try:
                await self.store.save(rec.job_id, lifecycle.progress(rec, progress), parent.revision)
            except Conflict:
                return False
        return True

    async def _stage_over(self, parent: Versioned, *, timed_out: bool) -> str | None:
        """The current stage ended (or its deadline passed): end the pipeline ("ended") or start
        the next stage ("advanced"); None when the record changed under us."""
        rec = parent.record
        assert rec is not None and rec.pipeline is not None
        run = rec.pipeline
        k = run.stage
        stage = run.stages[k]
        children = await self._children(rec)
        failed = timed_out or any(
            (r := children.get(c)) is None or r.status != "completed" for c in stage.children
        )
        last = k == len(run.stages) - 1
        cancelled = self.cancel_reason(rec.job_id, None) is not None
        if cancelled or last or (failed and stage.on_failure == "stop"):
            if timed_out:
                stages = list(run.stages)
                stages[k] = replace(stage, timed_out=True)
                run = replace(run, stages=stages)
                parent = Versioned(replace(rec, pipeline=run), parent.revision)
            status, headline = self._pipeline_end(run, children, cancelled=cancelled)
            done = await self._complete(
                parent, children, timed_out=timed_out, status=status, headline=headline
            )
            return "ended" if done else None
        if timed_out:
            # Going on past a stage's deadline: the record says so before the next stage starts.
            stages = list(run.stages)
            stages[k] = replace(stage, timed_out=True)
            try:
                revision = await self.store.save(
                    rec.job_id, replace(rec, pipeline=replace(run, stages=stages)), parent.revision
                )
            except Conflict:
                return None
            parent = Versioned(replace(rec, pipeline=replace(run, stages=stages)), revision)
        if not await self._advance(parent, k + 1, self._stage_children(rec.job_id, run, k + 1)):
            return None
        return "advanced"

    def _pipeline_end(
        self, run: PipelineRun, children: dict[str, JobRecord | None], *, cancelled: bool
    ) -> tuple[str, str]:
        """The pipeline's status and its result's first line, from its stages. Completed when
        every stage that ran completed, or failed in a stage that goes on (on_failure
        "continue") before a last stage that completed; a stage that stops ends it failed (or
        timeout, when its deadline passed)."""
        words = []
        status = "completed"
        for i, stage in enumerate(run.stages[: run.stage + 1]):
            ok = not stage.timed_out and all(
                (r := children.get(c)) is not None and r.status == "completed" for c in stage.children
            )
            state = "completed" if ok else ("timed out" if stage.timed_out else "failed")
            words.append(f"stage {i + 1} ({', '.join(stage.agents)}) {state}")
            if not ok and (stage.on_failure == "stop" or i == len(run.stages) - 1):
                status = "timeout" if state == "timed out" else "failed"
        if cancelled:
            status = "cancelled"
        ran = run.stage + 1
        stopped = "" if ran == len(run.stages) else f", stopped after stage {ran}"
        headline = f"pipeline {run.name}: {ran} of {len(run.stages)} stages ran{stopped}: {'; '.join(words)}."
        return status, headline

    async def _stage_deadline(self, msg: bus.Delivery, body: FanoutDeadline, remaining: float) -> None:
        assert body.stage is not None
        parent = await self.store.load(body.parent_id)
        rec = parent.record
        if rec is None or rec.pipeline is None:
            await msg.ack()
            return
        if parent.terminal:
            await self.results.ensure(rec)
            await msg.ack()
            return
        if rec.pipeline.stage > body.stage:
            await msg.ack()  # the stage ended in time
            return
        if remaining > 0 or rec.pipeline.stage < body.stage:
            # Not yet (or the record is still at the stage before: its stepper died between
            # starting this stage and writing it). A stage whose children all ended while the
            # record stayed is moved on now; the deadline comes back when it is due.
            await self.child_done(body.parent_id)
            await msg.nak(delay=max(remaining, 1.0))
            return
        with bound(job=body.parent_id):
            for _ in range(10):
                parent = await self.store.load(body.parent_id)
                rec = parent.record
                if rec is None or parent.terminal or rec.pipeline is None or rec.pipeline.stage != body.stage:
                    break
                stage = rec.pipeline.stages[body.stage]
                loaded = await asyncio.gather(*(self.store.load(c) for c in stage.children))
                unfinished = [
                    c
                    for c, v in zip(stage.children, loaded, strict=True)
                    if v.record is None or not v.terminal
                ]
                if not unfinished:
                    await self.child_done(body.parent_id)
                    break
                if await self._stage_over(parent, timed_out=True) is not None:
                    log.info("pipeline %s: stage %d timed out", body.parent_id, body.stage + 1)
                    await asyncio.gather(*(self._cancel_child(c) for c in unfinished))
                    await self.child_done(body.parent_id)  # the next stage may be over already
                    break
        await msg.ack()
