"""The deployer's ServiceSpec: the DEPLOYS consumer, the pipeline, providers, and site serving."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conveyor.deployer.config import Settings
from conveyor.deployer.leases import Leases
from conveyor.deployer.metrics import Metrics
from conveyor.deployer.pipeline import Pipeline
from conveyor.deployer.providers import build_providers
from conveyor.deployer.sitehost import site_middleware
from conveyor.shared.bus import AckPolicy, ConsumerConfig
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.deploy_store import DeployStore
from conveyor.shared.runtime.runner import Runtime, ServiceSpec


def site_host(settings: Settings, slug: str, deployment: str | None) -> str:
    label = f"{deployment}--{slug}" if deployment else slug
    return f"{label}.{settings.site_domain}"


def site_url(rt: Runtime[Settings], slug: str, deployment: str | None) -> str:
    host = site_host(rt.settings, slug, deployment)
    if rt.settings.site_base_url:
        return rt.settings.site_base_url.format(host=host, slug=slug, deployment=deployment or "")
    return f"http://{host}:{rt.http_port}/"


def local_url(rt: Runtime[Settings]) -> str:
    host = rt.settings.host if rt.settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{rt.http_port}/"


def routes(rt: Runtime[Any]) -> None:
    settings: Settings = rt.settings
    # Sites are answered before routing, by Host; everything else reaches the health routes.
    rt.app.middlewares.append(site_middleware(Path(settings.data_dir).resolve(), settings.site_domain))


@contextlib.asynccontextmanager
async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
    settings: Settings = rt.settings
    metrics = Metrics(rt.registry)
    store = DeployStore(rt.bus, rt.kv[subjects.KV_SITES], rt.kv[subjects.KV_DEPLOYMENTS])
    leases = Leases(rt.kv[subjects.KV_DEPLOY_LEASES], rt.instance, settings.lease_s)
    providers = build_providers(
        settings,
        url_for=lambda slug, dep: site_url(rt, slug, dep),
        host_for=lambda slug, dep: site_host(settings, slug, dep),
        health_url=lambda: local_url(rt),
    )
    async with contextlib.AsyncExitStack() as stack:
        for provider in providers:
            await provider.start()
            stack.push_async_callback(provider.close)
        pipeline = Pipeline(
            js=rt.bus,
            store=store,
            leases=leases,
            providers=providers,
            metrics=metrics,
            settings=settings,
            tracer=rt.tracer,
            max_deliver=settings.max_deliver,
        )
        await rt.consume(
            subjects.DEPLOYS,
            ConsumerConfig(
                durable_name=subjects.DEPLOYER,
                filter_subject="deploys.requested.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait_s,
                max_deliver=settings.max_deliver,
                max_ack_pending=max(64, settings.concurrency * 4),
            ),
            pipeline.handle,
            stage="deployer",
            concurrency=settings.concurrency,
        )
        yield


def details(rt: Runtime[Any]) -> dict[str, Any]:
    return {"providers": rt.settings.providers, "site_domain": rt.settings.site_domain}


SPEC = ServiceSpec(
    name="deployer",
    streams=[subjects.DEPLOYS, subjects.RESULTS, subjects.DLQ],
    buckets=[subjects.KV_SITES, subjects.KV_DEPLOYMENTS, subjects.KV_DEPLOY_LEASES],
    components=components,
    routes=routes,
    details=details,
)
