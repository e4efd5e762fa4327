"""The router: ``events.<source>.<type>`` -> one ``JobRequest`` per routed agent.

One agent: the job id is the event's job id, published on ``jobs.run.<agent>`` with
Nats-Msg-Id = job id, so routing the same event twice queues it once. An instant agent's job
(builtin, returns in microseconds) is run right here on the event's delivery instead
(``Worker.run_routed``): the JOBS hop would cost more than the job. Several agents: a
fan-out (see fanout.py). An event no agent can take (no route, no or an unknown agent named
in the payload) ends its job "failed" at once, with a failed result so the caller hears.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from opentelemetry import trace

from conveyor.executor.config import PAYLOAD_AGENT
from conveyor.executor.handlers.definitions import Definitions
from conveyor.executor.handlers.fanout import Fanout
from conveyor.executor.handlers.jobstore import JobStore, checked_job_id
from conveyor.executor.handlers.results import Results
from conveyor.executor.handlers.worker import Worker
from conveyor.executor.metrics import Metrics
from conveyor.executor.registry import Agent, route_for
from conveyor.shared import bus
from conveyor.shared.contracts import lifecycle, subjects
from conveyor.shared.contracts.events import (
    NOT_JSON,
    AgentResult,
    JobRecord,
    JobRequest,
    ResultBody,
    WebhookEvent,
    utcnow,
    webhook_event_decoder,
)
from conveyor.shared.domain.agentdefs import DELEGATE_EVENT
from conveyor.shared.runtime.logs import bound
from conveyor.shared.runtime.telemetry import exporting, message_span

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class Unroutable(Exception):
    def __init__(self, message: str, agent: str | None = None) -> None:
        super().__init__(message)
        self.agent = agent


def named_agents(payload: Any) -> list[str]:
    """Agents the payload names: agent / agents, at the top or under data."""
    if not isinstance(payload, dict):
        return []
    scopes = [payload, *([payload["data"]] if isinstance(payload.get("data"), dict) else [])]
    for scope in scopes:
        for key in ("agent", "agent_id", "agentId"):
            if isinstance(scope.get(key), str) and scope[key]:
                return [scope[key]]
        if isinstance(scope.get("agents"), list):
            return [a for a in scope["agents"] if isinstance(a, str) and a]
    return []


def prompt_of(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    for scope in (payload.get("data"), payload):
        if isinstance(scope, dict):
            for key in ("prompt", "task", "instructions"):
                if isinstance(scope.get(key), str) and scope[key].strip():
                    return str(scope[key])
    return None


class Router:
    def __init__(
        self,
        *,
        requests: bus.Bus,
        agents: dict[str, Agent],
        routes: dict[str, tuple[str, ...]],
        store: JobStore,
        results: Results,
        fanout: Fanout,
        metrics: Metrics,
        cancel_reason: Callable[[str, str | None], str | None],
        cancel_queued: Callable[[str, str], Awaitable[None]],
        tracer: trace.Tracer,
        allowed: Callable[[str], frozenset[str] | None] = lambda project: None,
        definitions: Definitions | None = None,
        worker: Worker | None = None,  # runs instant agents' jobs without the JOBS hop
    ) -> None:
        self.definitions = definitions
        self.requests = requests
        self.agents = agents
        self.routes = routes
        self.store = store
        self.results = results
        self.fanout = fanout
        self.metrics = metrics
        self.cancel_reason = cancel_reason
        self.cancel_queued = cancel_queued
        self.tracer = tracer
        self.tracing = exporting(tracer)
        self.allowed = allowed  # a project's agents, when it lists them (None: every agent)
        self.worker = worker

    def resolve(self, event: WebhookEvent, payload: Any) -> list[Agent]:
        defs = self.definitions
        project = event.project
        if self.delegation(event):
            # POST /api/agents/delegate: the agents the caller named, always as a fan-out.
            route: tuple[str, ...] = (PAYLOAD_AGENT,)
        else:
            # The project's own routes first, then the deployment's.
            own = defs.project_routes(project) if defs is not None else {}
            route = route_for(own, event.source, event.type) or route_for(
                self.routes, event.source, event.type
            )
        if not route:
            raise Unroutable(f"no agent is routed for event type {event.type!r} from {event.source!r}")
        names: list[str] = []
        for name in route:
            if name != PAYLOAD_AGENT:
                names.append(name)
                continue
            named = named_agents(payload)
            if not named:
                raise Unroutable(f"a {event.type} event must name its agent (data.agent)")
            for n in named:
                if not (n in self.agents or (defs is not None and defs.known(project, n))):
                    known = ", ".join(sorted(self.agents))
                    raise Unroutable(f"unknown agent {n!r} named in the payload (known: {known})", agent=n)
            names += named
        if (allowed := self.allowed(project)) is not None:
            for n in names:
                if n not in allowed and not (defs is not None and defs.own(project, n)):
                    raise Unroutable(f"agent {n!r} is not enabled for project {project!r}", agent=n)
        agents = []
        for n in dict.fromkeys(names):
            try:
                agent = self.agents.get(n) or (defs.lookup(project, n) if defs is not None else None)
            except ValueError as exc:
                raise Unroutable(str(exc), agent=n) from None
            if agent is None:
                raise Unroutable(f"unknown agent {n!r} in the route for {event.type!r}", agent=n)
            agents.append(agent)
        return agents

    @staticmethod
    def delegation(event: WebhookEvent) -> bool:
        return event.source == "api" and event.type == DELEGATE_EVENT

    async def handle(self, msg: bus.Delivery) -> None:
        event = webhook_event_decoder.decode(msg.data)  # unreadable: the consumer dead-letters it
        checked_job_id(event.job_id)
        with (
            bound(job=event.job_id, correlation=event.correlation_id),
            message_span(self.tracer, self.tracing, "events.* process", msg.headers, msg.subject),
        ):
            await self.route(event, msg)

    async def route(self, event: WebhookEvent, msg: bus.Delivery | None = None) -> None:
        try:
            payload = msgspec.json.decode(event.payload) if event.payload else None
        except NOT_JSON:
            payload = None
        try:
            agents = self.resolve(event, payload)
        except Unroutable as exc:
            self.metrics.routed.labels("unroutable").inc()
            log.warning("event %s (%s) not routed: %s", event.event_id, event.type, exc)
            await self.fail(event, str(exc), exc.agent)
            return
        if (reason := self.cancel_reason(event.job_id, None)) is not None:
            await self.cancel_queued(event.job_id, reason)  # cancelled before it was routed: never starts
            return
        prompt = prompt_of(payload)
        if self.delegation(event):
            # The children get the caller's input, not the request that named them.
            given = payload.get("input") if isinstance(payload, dict) else None
            self.metrics.routed.labels("fanout").inc()
            await self.fanout.start(event, agents, prompt, _encoder.encode(given or {}))
            return
        if len(agents) > 1:
            self.metrics.routed.labels("fanout").inc()
            await self.fanout.start(event, agents, prompt)
            return
        self.metrics.routed.labels("single").inc()
        request = JobRequest(
            job_id=event.job_id,
            agent=agents[0].name,
            created_at=event.received_at,
            source=event.source,
            event_type=event.type,
            prompt=prompt,
            input=event.payload,
            project_id=event.project_id,
            project=event.project,
            callback_url=event.callback_url,
            correlation_id=event.correlation_id,
        )
        if (
            msg is not None
            and self.worker is not None
            and self.worker.runs_routed(agents[0], request)
            and await self.worker.run_routed(msg, agents[0], request)
        ):
            return
        subject = subjects.job_run(request.agent)
        await self.requests.publish(
            subject, _encoder.encode(request), msg_id=request.job_id, stream=subjects.JOBS
        )

    async def fail(self, event: WebhookEvent, error: str, agent: str | None) -> None:
        now = utcnow()
        result = AgentResult(
            job_id=event.job_id,
            lovable_project_id=event.project_id,
            agent_id=agent or "router",
            status="failed",
            result=ResultBody(summary=f"not run: {error}"),
            execution_time=0,
            timestamp=now,
        )

        def change(r: JobRecord | None) -> JobRecord | None:
            if r is not None and r.terminal:
                return None
            base = r or lifecycle.received(event, now=now)
            return lifecycle.finish(base, "failed", now=now, error=error, result=result, agent=agent)

        written, cur = await self.store.advance(event.job_id, await self.store.load(event.job_id), change)
        if cur.record is not None:
            publish = self.results.republish if written else self.results.ensure
            await publish(cur.record, event.correlation_id)
