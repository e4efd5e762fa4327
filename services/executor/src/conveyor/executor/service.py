"""The executor as a service: what it declares in JetStream and the consumers it runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from conveyor.executor.backends import make_backends
from conveyor.executor.config import Settings
from conveyor.executor.credentials import CredentialsProvider
from conveyor.executor.handlers.cancels import Canceller, Cancels
from conveyor.executor.handlers.definitions import Definitions
from conveyor.executor.handlers.fairness import Gates
from conveyor.executor.handlers.fanout import Fanout
from conveyor.executor.handlers.jobstore import JobStore
from conveyor.executor.handlers.meter import Meter
from conveyor.executor.handlers.results import Results
from conveyor.executor.handlers.router import Router
from conveyor.executor.handlers.scheduler import with_scheduler
from conveyor.executor.handlers.worker import DEFINED, STAGE, Worker
from conveyor.executor.metrics import Metrics
from conveyor.executor.pricing import Prices
from conveyor.executor.registry import build_registry, build_routes
from conveyor.shared.bus import AckPolicy, ConsumerConfig, DeliverPolicy
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.sealing import Sealer
from conveyor.shared.domain.usage import UsageRecorder
from conveyor.shared.runtime.runner import Runtime, ServiceSpec


def consumer_configs(settings: Settings) -> dict[str, ConsumerConfig]:
    return {
        subjects.ROUTER: ConsumerConfig(
            durable_name=subjects.ROUTER,
            filter_subject="events.>",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            # The router runs instant agents' jobs itself (Worker.run_routed): an event held by
            # a dead executor comes back as soon as a job would.
            ack_wait=settings.ack_wait_s,
            max_deliver=10,
            max_ack_pending=10_000,
        ),
        # Attempts are counted in the job record, so JetStream may redeliver without limit:
        # a redelivery after the last attempt is failed and dead-lettered by the worker.
        subjects.WORKERS: ConsumerConfig(
            durable_name=subjects.WORKERS,
            filter_subject="jobs.run.>",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=10_000,
        ),
        # Deadline messages wait out their time as delayed NAKs: many may be pending at once.
        subjects.FANOUT: ConsumerConfig(
            durable_name=subjects.FANOUT,
            filter_subject="jobs.fanout.>",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=-1,
            max_ack_pending=100_000,
        ),
    }


@contextlib.asynccontextmanager
async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
    settings: Settings = rt.settings
    agents = build_registry(settings)
    routes = build_routes(settings, agents)
    metrics = Metrics(rt.registry, [*agents, DEFINED])
    definitions = Definitions(settings, agents, rt.kv[subjects.KV_AGENTS], rt.kv[subjects.KV_AGENT_ROUTES])
    store = JobStore(rt.kv[subjects.KV_JOBS], rt.kv[subjects.KV_JOB_LOGS])
    results = Results(rt.bus)
    cancels = Cancels(rt.kv[subjects.KV_CANCELS])
    dlq = rt.consumer_metrics.dead_letters.labels(STAGE)
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
        timeout=httpx.Timeout(settings.aios_agent_timeout_ms / 1000),
    ) as http:
        fanout = Fanout(
            js=rt.bus,
            store=store,
            results=results,
            cancels_kv=rt.kv[subjects.KV_CANCELS],
            cancel_reason=cancels.reason,
            deadline_ms=settings.fanout_deadline_ms,
            definitions=definitions,
        )
        gates = Gates(rt, settings, metrics, stage=STAGE)
        recorder = UsageRecorder(rt.kv[subjects.KV_USAGE], flush_every_s=settings.usage_flush_s)
        meter = Meter(
            prices=Prices(settings.prices),
            recorder=recorder,
            metrics=metrics,
            project_of=gates.mirror.values.get,
            publish=rt.bus.notify,
            output_batch_s=settings.output_batch_ms / 1000,
            progress_every_s=settings.progress_callback_every_s,
        )
        worker = Worker(
            js=rt.bus,
            settings=settings,
            agents=agents,
            backends=make_backends(settings, http),
            store=store,
            results=results,
            metrics=metrics,
            dead_letters=dlq.inc,
            cancel_reason=cancels.reason,
            child_done=fanout.child_done,
            tracer=rt.tracer,
            instance=rt.instance,
            gates=gates,
            credentials=CredentialsProvider(
                rt.kv[subjects.KV_CONNECTIONS],
                Sealer.parse(settings.conveyor_secret_keys),
                http,
                settings.github_api_url,
            ).of,
            definitions=definitions,
            start_pipeline=fanout.start_pipeline,
            meter=meter,
        )
        canceller = Canceller(store, worker.cancel_running, fanout.child_done)
        router = Router(
            requests=rt.bus,
            agents=agents,
            routes=routes,
            store=store,
            results=results,
            fanout=fanout,
            metrics=metrics,
            cancel_reason=cancels.reason,
            cancel_queued=canceller.cancel_queued,
            tracer=rt.tracer,
            allowed=gates.agents_of.get,
            definitions=definitions,
            worker=worker,
        )
        await definitions.start()  # a project's agents known before its first job is taken
        await cancels.start(canceller.on_cancel)
        await gates.start(worker.handle_limited)  # limits known before the first job is taken
        recorder.start()
        configs = consumer_configs(settings)

        async def consume(name: str, stream: str, handler: Any, concurrency: int) -> None:
            await rt.consume(
                stream,
                configs[name],
                handler,
                stage=STAGE,
                concurrency=concurrency,
                retry_base_s=settings.retry_base_ms / 1000,
                retry_cap_s=settings.retry_cap_ms / 1000,
            )

        try:
            await consume(subjects.WORKERS, subjects.JOBS, worker.handle, settings.concurrency)
            await consume(subjects.FANOUT, subjects.JOBS, fanout.on_deadline, 64)
            await consume(subjects.ROUTER, subjects.EVENTS, router.handle, settings.router_concurrency)
            yield
        finally:
            await gates.stop()
            await cancels.stop()
            await definitions.stop()
            await recorder.stop()  # after the workers: their last reports are written


def details(rt: Runtime[Any]) -> dict[str, Any]:
    """/health/ready also says which backend each agent uses."""
    return {"agents": {name: a.backend for name, a in build_registry(rt.settings).items()}}


SPEC = ServiceSpec(
    name="executor",
    streams=[subjects.EVENTS, subjects.JOBS, subjects.RESULTS, subjects.DLQ, subjects.JOBINDEX],
    buckets=[
        subjects.KV_JOBS,
        subjects.KV_CANCELS,
        subjects.KV_JOB_LOGS,
        subjects.KV_PROJECTS,
        subjects.KV_CONNECTIONS,
        subjects.KV_AGENTS,
        subjects.KV_AGENT_ROUTES,
        subjects.KV_USAGE,
    ],
    components=with_scheduler(components),
    details=details,
)
