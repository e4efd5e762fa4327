"""The deliverer as the runner sees it: streams, buckets, consumers, background gauges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from conveyor.deliverer.attempt_log import AttemptLog
from conveyor.deliverer.breaker import Breakers
from conveyor.deliverer.config import (
    Settings,
    allowed_networks,
    endpoint_secrets,
    retry_schedule,
    signing_secrets,
)
from conveyor.deliverer.handlers.callbacks import STAGE, DeliverCallback
from conveyor.deliverer.handlers.progress import SendProgress
from conveyor.deliverer.handlers.send_test_event import SendTestEvent
from conveyor.deliverer.metrics import Metrics
from conveyor.deliverer.parking import Parking
from conveyor.deliverer.projects import ProjectCallbacks
from conveyor.deliverer.retry import RetryPolicy
from conveyor.deliverer.sender import build_client
from conveyor.deliverer.signing_keys import SigningKeys
from conveyor.shared.bus import AckPolicy, ConsumerConfig, DeliverPolicy, KvMirror, Subscription
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.integration import IntegrationRecorder
from conveyor.shared.domain.sealing import Sealer
from conveyor.shared.domain.tenancy import Directory, Project, project_decoder
from conveyor.shared.runtime.runner import Runtime, ServiceSpec
from conveyor.shared.runtime.ssrf import AddressPolicy

TEST_SEND_CONCURRENCY = 8
PROGRESS_QUEUE = "deliverer-progress"


def ack_wait_s(settings: Settings) -> float:
    """Above the longest a handler can hold a result (the attempt plus KV reads and writes),
    so JetStream never hands a result to a second deliverer while the first is still calling."""
    return settings.callback_timeout_s + 30.0


def results_consumer(settings: Settings, *, parked: bool = False) -> ConsumerConfig:
    """The executor's results, or (``parked``) the parked ones that are due again."""
    return ConsumerConfig(
        durable_name=subjects.DELIVERER_PARKED if parked else subjects.DELIVERER,
        filter_subject=subjects.PARKED_RESULTS_FILTER if parked else "results.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s(settings),
        # Attempts are counted from the delivery log, not by JetStream: a result comes back
        # (parked, or redelivered) without that being an attempt. The handler dead-letters.
        max_deliver=-1,
        max_ack_pending=settings.callback_max_ack_pending,
    )


def test_sends_consumer(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.DELIVERER_TEST_SENDS,
        filter_subject=subjects.TEST_SEND_FILTER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s(settings),
        max_deliver=3,
    )


async def _refresh_gauges(rt: Runtime[Settings], metrics: Metrics, breakers: Breakers) -> None:
    """dlq_depth_messages and parked_results_messages from the streams' state; open circuits
    from this process."""
    while not rt.stopping.is_set():
        with contextlib.suppress(Exception):
            metrics.dlq_depth.set(await rt.bus.stream_messages(subjects.DLQ))
        with contextlib.suppress(Exception):
            metrics.parked.set(await rt.bus.stream_messages(subjects.PARKED))
        metrics.open_circuits.set(breakers.open_count())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stopping.wait(), rt.settings.dlq_gauge_interval_s)


def default_project(s: Settings) -> Project:
    """The default project as the deliverer knows it: the settings' callback URL (its
    secrets are CALLBACK_SIGNING_SECRETS, kept by SigningKeys)."""
    return Project.default(callback_url=s.lovable_callback_url or None)


@contextlib.asynccontextmanager
async def components(rt: Runtime[Settings]) -> AsyncIterator[None]:
    s = rt.settings
    metrics = Metrics(rt.registry)
    breakers = Breakers(s.callback_breaker_threshold, s.callback_breaker_cooldown_s)
    keys = SigningKeys(signing_secrets(s), endpoint_secrets(s))
    attempts = AttemptLog(rt.kv[subjects.KV_DELIVERIES])
    client = build_client(
        # Two consumers (results, parked results) at CALLBACK_CONCURRENCY each, and test sends.
        AddressPolicy(allowed_networks(s)),
        max_connections=2 * s.callback_concurrency + TEST_SEND_CONCURRENCY,
    )
    policy = RetryPolicy(
        schedule_s=retry_schedule(s),
        max_attempts=s.callback_max_attempts,
        jitter=s.callback_retry_jitter,
        max_delay_s=s.callback_retry_max_delay_s,
        retry_after_max_s=s.callback_retry_after_max_s,
    )
    directory = Directory(default_project(s))
    projects = KvMirror(
        rt.kv[subjects.KV_PROJECTS], subjects.KV_PROJECTS, project_decoder.decode, on_change=directory.update
    )
    await projects.start()
    callbacks = ProjectCallbacks(s, directory, Sealer.parse(s.conveyor_secret_keys), keys)
    integration = IntegrationRecorder(rt.kv[subjects.KV_INTEGRATION])
    integration.start()
    deliver = DeliverCallback(
        s,
        client,
        attempts,
        breakers,
        policy,
        callbacks,
        metrics,
        rt.tracer,
        Parking(rt.bus),
        integration,
    )
    # Progress callbacks get connections of their own: a result never waits behind them.
    progress_client = build_client(
        AddressPolicy(allowed_networks(s)), max_connections=s.progress_callback_concurrency
    )
    progress = SendProgress(s, progress_client, callbacks, metrics)
    deliver.on_result = progress.ended
    send_test = SendTestEvent(s, client, attempts, callbacks, metrics)
    gauges = asyncio.create_task(_refresh_gauges(rt, metrics, breakers), name="deliverer-gauges")
    progress_sub: Subscription | None = None
    try:
        await rt.consume(
            subjects.RESULTS,
            results_consumer(s),
            deliver,
            stage=STAGE,
            concurrency=s.callback_concurrency,
            batch=s.callback_batch,
        )
        await rt.consume(
            subjects.PARKED,
            results_consumer(s, parked=True),
            deliver,
            stage=STAGE,
            concurrency=s.callback_concurrency,
            batch=s.callback_batch,
        )
        await rt.consume(
            subjects.CONTROL,
            test_sends_consumer(s),
            send_test,
            stage=STAGE,
            concurrency=TEST_SEND_CONCURRENCY,
        )
        # Core NATS in a queue group: each job's progress reaches one deliverer; nothing stored.
        progress_sub = await rt.bus.listen(
            subjects.JOB_PROGRESS_FILTER, progress.handle, queue=PROGRESS_QUEUE, pending_msgs_limit=10_000
        )
        await rt.bus.flush()  # the server knows of the subscription before this replica is ready
        yield
    finally:
        # The runner has stopped the consumers by now: in-flight callbacks are settled.
        gauges.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauges
        if progress_sub is not None:
            with contextlib.suppress(Exception):
                await progress_sub.stop()
        await progress.stop()
        await progress_client.close()
        await attempts.flush()
        await client.close()
        await projects.stop()
        await integration.stop()


SPEC = ServiceSpec(
    name="deliverer",
    streams=[subjects.RESULTS, subjects.PARKED, subjects.DLQ, subjects.CONTROL],
    buckets=[subjects.KV_DELIVERIES, subjects.KV_PROJECTS, subjects.KV_INTEGRATION],
    components=components,
)
