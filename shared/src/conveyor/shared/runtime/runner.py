"""The service runner all four services use.

Start order: tracing -> HTTP (health answers at once, not ready) -> NATS (retried until it
answers) -> streams and buckets -> the service's own components (consumers) -> ready.
Stop order is the reverse: not ready -> components stop (no more fetching; in-flight work
gets ``SHUTDOWN_GRACE_S``; the rest is NAKed for another replica) -> HTTP stops (requests in
flight finish their publishes) -> pull subscriptions go, then the NATS connection drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

from conveyor.shared.bus import (
    Bus,
    Consumer,
    ConsumerConfig,
    ConsumerMetrics,
    Handler,
    Kv,
    Retention,
    Timeout,
    Unavailable,
)
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import BaseSettings, load_settings
from conveyor.shared.runtime.http import HttpMetrics, error_middleware, health_routes, metrics_middleware
from conveyor.shared.runtime.logs import setup_logging
from conveyor.shared.runtime.telemetry import init_tracing
from conveyor.shared.runtime.urls import redact_urls

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)

GC_THRESHOLDS = (20_000, 20, 20)


def retention_of(settings: BaseSettings) -> Retention:
    """The retention a service's settings ask for; a value that is not positive is refused."""
    kept = Retention(
        events_s=settings.events_retention_h * 3600.0,
        results_s=settings.results_retention_d * 86400.0,
        job_logs_s=settings.job_logs_retention_d * 86400.0,
    )
    for name, value in (
        ("EVENTS_RETENTION_H", kept.events_s),
        ("RESULTS_RETENTION_D", kept.results_s),
        ("JOB_LOGS_RETENTION_D", kept.job_logs_s),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be more than 0", setting=name)
    return kept


@dataclass
class Runtime(Generic[S]):
    """What a running service has: settings, the bus (its NATS connection), KV handles, HTTP
    app, metrics, tracer."""

    name: str
    settings: S
    registry: CollectorRegistry
    tracer: trace.Tracer
    app: web.Application
    consumer_metrics: ConsumerMetrics
    instance: str
    started_at: float = field(default_factory=time.time)
    kv: dict[str, Kv] = field(default_factory=dict)
    consumers: list[Consumer] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int = 0
    setup_done: bool = False
    _bus: Bus | None = None  # set once connected

    @property
    def bus(self) -> Bus:
        """The service's connection to NATS (conveyor.shared.bus); there once connected."""
        assert self._bus is not None, "the bus is connected before components start"
        return self._bus

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    def ready(self) -> bool:
        return self.setup_done and self.connected and not self.stopping.is_set()

    async def consume(
        self,
        stream: str,
        config: ConsumerConfig,
        handler: Handler,
        *,
        stage: str,
        concurrency: int,
        batch: int | None = None,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 60.0,
    ) -> Consumer:
        """Start a durable consumer on this connection (stopped and drained with the service).
        ``batch``: the most one pull asks for (default: the concurrency, at most 256)."""
        consumer = self.bus.consumer(
            stream,
            config,
            handler,
            stage=stage,
            metrics=self.consumer_metrics,
            concurrency=concurrency,
            batch=batch or max(1, min(256, concurrency)),
            retry_base_s=retry_base_s,
            retry_cap_s=retry_cap_s,
        )
        await consumer.start()
        self.consumers.append(consumer)
        return consumer


Components = Callable[[Runtime[Any]], AbstractAsyncContextManager[None]]
Routes = Callable[[Runtime[Any]], None]


@dataclass
class ServiceSpec:
    """How one service plugs into the runner."""

    name: str
    streams: list[str]
    buckets: list[str]
    components: Components | None = None  # entered once NATS is up; started consumers go here
    routes: Routes | None = None  # extra HTTP routes, added before the server starts
    details: Callable[[Runtime[Any]], dict[str, Any]] | None = None  # extra /health/ready fields
    middlewares: list[Any] = field(default_factory=list)
    # A service's own outermost middleware that answers every error as JSON and records the
    # request metrics itself, in place of error_middleware + metrics_middleware (one pass on a
    # hot route instead of three).
    edge: Callable[[HttpMetrics], Any] | None = None
    # A service's own protocol for its port, given aiohttp's (for every connection it does not
    # serve itself); None from it, or no front, and aiohttp serves the port alone.
    front: Callable[[Runtime[Any], web.Server, HttpMetrics], Front | None] | None = None


class Front(Protocol):
    """What ``ServiceSpec.front`` makes: a protocol factory that can stop its connections."""

    def __call__(self) -> asyncio.Protocol: ...

    async def close(self, grace_s: float) -> None: ...


class Gauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "consumer_pending_messages",
            "Messages not yet delivered to a consumer, by stream and consumer.",
            ["stream", "consumer"],
            registry=registry,
        )
        self.ack_pending = Gauge(
            "consumer_ack_pending_messages",
            "Messages delivered and not yet acknowledged, by stream and consumer.",
            ["stream", "consumer"],
            registry=registry,
        )
        self.nats_connected = Gauge("nats_connected", "1 while the NATS connection is up.", registry=registry)


async def _connect(settings: BaseSettings, name: str, stop: asyncio.Event) -> Bus:
    servers = [s.strip() for s in settings.nats_url.split(",") if s.strip()]

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    delay = 0.2
    while True:
        try:
            return await Bus.connect(
                servers,
                name=name,
                on_error=on_error,
                on_disconnect=on_disconnect,
                on_reconnect=on_reconnect,
            )
        except Exception as exc:
            if stop.is_set():
                raise
            log.warning(
                "nats at %s not reachable (%s); retrying in %.1fs", redact_urls(settings.nats_url), exc, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise ConnectionError("stopped before NATS was reachable") from exc
            delay = min(delay * 2, 5.0)


async def _bootstrap(rt: Runtime[Any], spec: ServiceSpec, stop: asyncio.Event) -> dict[str, Kv]:
    """Declare streams and buckets, retrying while JetStream is not yet available (a cluster
    that has not elected its meta leader answers with timeouts or 503s for a few seconds)."""
    delay = 0.5
    while True:
        try:
            return await rt.bus.declare(
                spec.streams,
                spec.buckets,
                replicas=rt.settings.nats_replicas,
                retention=retention_of(rt.settings),
            )
        except (Timeout, Unavailable) as exc:
            if stop.is_set():
                raise ConnectionError("stopped before JetStream was available") from exc
            log.warning("jetstream not available yet (%s); retrying in %.1fs", type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)


async def _watch_consumers(rt: Runtime[Any], gauges: Gauges) -> None:
    """Export pending counts of this service's consumers for dashboards and alerts."""
    while not rt.stopping.is_set():
        gauges.nats_connected.set(1 if rt.connected else 0)
        for c in list(rt.consumers):
            with contextlib.suppress(Exception):
                state = await rt.bus.consumer_state(c.stream, c.name, timeout_s=2)
                gauges.pending.labels(c.stream, c.name).set(state.pending)
                gauges.ack_pending.labels(c.stream, c.name).set(state.ack_pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stopping.wait(), 5)


@contextlib.asynccontextmanager
async def serve(
    spec: ServiceSpec,
    settings: S,
    *,
    registry: CollectorRegistry | None = None,
    span_exporter: SpanExporter | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Runtime[S]]:
    """Run ``spec`` until the block exits; see the module docstring for the order of things."""
    registry = registry or CollectorRegistry()
    stop = stop or asyncio.Event()
    if registry is not None:
        with contextlib.suppress(ValueError):
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
    instance = settings.service_instance or f"{socket.gethostname()}:{os.getpid()}"
    provider = init_tracing(f"conveyor-{spec.name}", instance, span_exporter)
    tracer = provider.get_tracer(f"conveyor.{spec.name}")
    gauges = Gauges(registry)

    http_metrics = HttpMetrics(registry)
    edge = [spec.edge(http_metrics)] if spec.edge else [error_middleware, metrics_middleware(http_metrics)]
    app = web.Application(
        middlewares=[*edge, *spec.middlewares],
        client_max_size=1024 * 1024,
    )
    rt: Runtime[S] = Runtime(
        name=spec.name,
        settings=settings,
        registry=registry,
        tracer=tracer,
        app=app,
        consumer_metrics=ConsumerMetrics(registry, spec.name),
        instance=instance,
    )
    health_routes(app, registry, rt.ready, (lambda: spec.details(rt)) if spec.details else None)
    if spec.routes:
        spec.routes(rt)

    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_grace_s, access_log=None
    )
    await runner.setup()
    # A burst of new connections after a stall overflows aiohttp's default accept queue (128):
    # the kernel drops the SYNs and each of those clients waits 1 s, then 3 s, to retry.
    front = spec.front(rt, runner.server, http_metrics) if spec.front and runner.server else None
    listening: asyncio.AbstractServer | None = None
    if front is not None:
        listening = await asyncio.get_running_loop().create_server(
            front, settings.host, settings.port, reuse_address=True, backlog=1024
        )
        if listening.sockets:
            rt.http_port = listening.sockets[0].getsockname()[1]
    else:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True, backlog=1024)
        await site.start()
        if runner.addresses:
            rt.http_port = runner.addresses[0][1]
    log.info("%s http listening on %s:%d", spec.name, settings.host, rt.http_port)

    watcher: asyncio.Task[None] | None = None
    try:
        rt._bus = await _connect(settings, f"conveyor-{spec.name}-{instance}", stop)
        rt.kv = await _bootstrap(rt, spec, stop)
        async with contextlib.AsyncExitStack() as stack:
            if spec.components:
                await stack.enter_async_context(spec.components(rt))
            rt.setup_done = True
            # What start-up made (modules, routes, clients) lives as long as the process: keep it
            # out of the collector's full passes, which otherwise pause every request for ~20 ms.
            gc.freeze()
            watcher = asyncio.create_task(_watch_consumers(rt, gauges))
            log.info("%s ready (nats %s)", spec.name, redact_urls(settings.nats_url))
            try:
                yield rt
            finally:
                rt.stopping.set()
                log.info("%s stopping", spec.name)
                grace = settings.shutdown_grace_s
                await asyncio.gather(*(c.stop(grace) for c in rt.consumers), return_exceptions=True)
                gc.unfreeze()  # collectable again once stopped (matters where tests start many)
    finally:
        rt.stopping.set()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if listening is not None and front is not None:
            listening.close()
            await front.close(settings.shutdown_grace_s)
        await runner.cleanup()
        if rt._bus is not None:
            with contextlib.suppress(Exception):
                await rt._bus.close(drain_s=10)
        provider.shutdown()
        log.info("%s stopped", spec.name)


def main(spec: ServiceSpec, settings_cls: type[S]) -> None:
    """Console entry point: settings (fail fast, one line), logging, signals, run until SIGTERM."""
    try:
        settings = load_settings(settings_cls, section=spec.name)
    except ConfigError as exc:
        print(f"conveyor-{spec.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(spec.name, settings.log_level, settings.log_format)
    # Collect young garbage every 20,000 net allocations instead of 700: messages in flight
    # hold short-lived containers across many collections at the default; memory stays flat.
    gc.set_threshold(*GC_THRESHOLDS)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with serve(spec, settings, stop=stop):
                await stop.wait()
        except ConnectionError:
            if not stop.is_set():
                raise

    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(amain())
    else:
        uvloop.run(amain())
