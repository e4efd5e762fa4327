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

import msgspec
from msgspec.structs import replace

from conveyor.executor.handlers.jobstore import Conflict, JobStore, Versioned
from conveyor.executor.handlers.results import Results, oversize
from conveyor.executor.registry import Agent
from conveyor.shared import bus
from conveyor.shared.contracts import ids, lifecycle, subjects
from conveyor.shared.contracts.events import (
    AgentResult,
    CancelRequest,
    JobRecord,
    JobRequest,
    Message,
    ResultBody,
    WebhookEvent,
    utcnow,
)
from conveyor.shared.runtime.logs import bound

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class FanoutDeadline(Message, frozen=True, kw_only=True):
    """On ``jobs.fanout.<parent_id>``: when the parent must be complete, children or not."""

    parent_id: str
    deadline: dt.datetime
    children: list[str]


_deadline_decoder = msgspec.json.Decoder(FanoutDeadline)

_WORD = {"completed": "completed", "failed": "failed", "timeout": "timed out", "cancelled": "was cancelled"}


def aggregate(
    parent: JobRecord, children: dict[str, JobRecord | None], status: str, now: dt.datetime
) -> AgentResult:
    """The parent's result: every child's outcome, its findings prefixed by the agent's name."""
    lines: list[str] = []
    files: list[str] = []
    suggestions: list[str] = []
    diffs: list[str] = []
    outcomes: list[str] = []
    for child_id, rec in children.items():
        agent = (rec.agent if rec else None) or child_id.rsplit("-", 1)[-1]
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
    summary = f"{len(children)} agents ran in parallel: {', '.join(outcomes)}.\n" + "\n".join(lines)
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
    ) -> None:
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

    async def start(self, event: WebhookEvent, agents: list[Agent], prompt: str | None) -> None:
        parent_id = event.job_id
        children = {ids.child_job_id(parent_id, a.name): a for a in agents}
        now = utcnow()
        deadline = now + dt.timedelta(seconds=self.deadline_s(agents))

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is not None and (r.terminal or (r.status == "processing" and r.children == list(children))):
                return None  # over already, or this event was routed before
            base = r or lifecycle.new(
                parent_id,
                created_at=event.received_at,
                now=now,
                source=event.source,
                event_type=event.type,
                project_id=event.project_id,
                project=event.project,
                callback_url=event.callback_url,
            )
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
        await asyncio.gather(
            *(self._start_child(event, child_id, agent, prompt, now) for child_id, agent in children.items()),
            self._schedule(parent_id, deadline, list(children)),
        )

    async def _start_child(
        self, event: WebhookEvent, child_id: str, agent: Agent, prompt: str | None, now: dt.datetime
    ) -> None:
        record = lifecycle.new(
            child_id,
            created_at=now,
            agent=agent.name,
            source=event.source,
            event_type=event.type,
            project_id=event.project_id,
            project=event.project,
            parent_id=event.job_id,
        )
        try:
            await self.store.save(child_id, record, 0)
        except Conflict:
            pass  # created by an earlier delivery of this event
        request = JobRequest(
            job_id=child_id,
            agent=agent.name,
            created_at=now,
            source=event.source,
            event_type=event.type,
            prompt=prompt,
            input=event.payload,
            project_id=event.project_id,
            project=event.project,
            parent_id=event.job_id,
            correlation_id=event.correlation_id or event.job_id,
        )
        await self.js.publish(
            subjects.job_run(agent.name),
            _encoder.encode(request),
            stream=subjects.JOBS,
            msg_id=child_id,
        )

    async def _schedule(self, parent_id: str, deadline: dt.datetime, children: list[str]) -> None:
        body = FanoutDeadline(parent_id=parent_id, deadline=deadline, children=children)
        await self.js.publish(
            subjects.fanout_deadline(parent_id),
            _encoder.encode(body),
            stream=subjects.JOBS,
            msg_id=f"fanout-{parent_id}",
        )

    # --- completion --------------------------------------------------------------------------------

    async def child_done(self, parent_id: str) -> None:
        """A child ended: complete the parent if it was the last one, else move its progress."""
        for _ in range(10):
            parent = await self.store.load(parent_id)
            if parent.record is None:
                return
            if parent.terminal:
                # Over already; publish in case its finisher died before publishing: a child
                # redelivered after that crash brings us here.
                await self.results.ensure(parent.record)
                return
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
        self, parent: Versioned, children: dict[str, JobRecord | None], *, timed_out: bool
    ) -> bool:
        """Write the parent's end (compare-and-set) and publish its one result."""
        assert parent.record is not None
        now = utcnow()
        statuses = [c.status if c is not None else "queued" for c in children.values()]
        if self.cancel_reason(parent.record.job_id, None) is not None:
            status = "cancelled"
        elif timed_out:
            status = "timeout"
        elif all(s == "completed" for s in statuses):
            status = "completed"
        elif all(s == "cancelled" for s in statuses):
            status = "cancelled"
        else:
            status = "failed"
        result = None if status == "cancelled" else aggregate(parent.record, children, status, now)
        failed = [
            f"{(c.agent if c else cid)} {c.status if c else 'missing'}"
            + (f" ({c.error})" if c and c.error else "")
            for cid, c in children.items()
            if c is None or c.status != "completed"
        ]
        record = lifecycle.finish(
            parent.record, status, now=now, result=result, error="; ".join(failed) or None
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
        return True

    # --- the deadline ------------------------------------------------------------------------------

    async def on_deadline(self, msg: bus.Delivery) -> None:
        body = _deadline_decoder.decode(msg.data)  # unreadable: the consumer dead-letters it
        remaining = (body.deadline - utcnow()).total_seconds()
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
        request = CancelRequest(
            job_id=child_id, requested_at=utcnow(), reason="the fan-out parent's deadline passed"
        )
        try:
            await self.cancels_kv.create(child_id, _encoder.encode(request))
        except Exception as exc:  # already requested, or NATS trouble: the child ends by its own timeout
            log.debug("cancel of %s not written: %s", child_id, exc)
