"""Deployer test support: site configs, a running deployer in-process, the deploy store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from conveyor.deployer.config import Settings
from conveyor.deployer.service import SPEC
from conveyor.shared.bus import Bus
from conveyor.shared.bus.streams import ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.deploys import DeploymentRecord, SiteConfig
from conveyor.shared.domain.deploy_store import DeployStore
from conveyor.shared.runtime.runner import Runtime, serve
from conveyor.shared.testing.fixtures import eventually


def make_config(slug: str = "acme", headline: str = "Fresh bread, every morning", **over: Any) -> SiteConfig:
    raw: dict[str, Any] = {
        "name": over.pop("name", "Acme Bakery"),
        "slug": slug,
        "description": "A neighbourhood bakery.",
        "theme": {"preset": over.pop("preset", "light"), "primary_color": "#b45309"},
        "sections": {
            "hero": {
                "headline": headline,
                "subheadline": "Sourdough, rye and pastries baked on site since 1999.",
                "cta_text": "Visit us",
                "cta_url": "#contact",
            },
            "features": {
                "items": [
                    {"title": "Slow fermentation", "description": "48-hour doughs.", "icon": "★"},
                    {"title": "Local flour", "description": "Milled 20 km away."},
                    {"title": "Open early", "description": "From 6 am, every day."},
                ]
            },
            "about": {"body": "We are a family bakery.\n\nEverything is made by hand."},
            "testimonials": {
                "items": [{"quote": "The best rye in town.", "author": "Mira", "role": "Regular"}]
            },
            "pricing": {
                "plans": [
                    {"name": "Bread club", "price": "$19", "period": "month", "features": ["A loaf a week"]},
                    {
                        "name": "Family",
                        "price": "$39",
                        "period": "month",
                        "features": ["Three loaves a week"],
                        "highlighted": True,
                        "cta_text": "Join",
                        "cta_url": "#contact",
                    },
                ]
            },
            "contact": {"email": "hello@acme.example", "phone": "+1 555 0100", "address": "1 Mill Lane"},
            "footer": {"text": "Acme Bakery, baked with care.", "links": [{"label": "Top", "url": "#top"}]},
        },
    }
    raw.update(over)
    return msgspec.convert(raw, SiteConfig)


@dataclass
class Deployer:
    rt: Runtime[Settings]
    store: DeployStore
    data_dir: Path

    @property
    def port(self) -> int:
        return self.rt.http_port

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text

    async def aget(self, slug: str, deployment: str | None = None, path: str = "/") -> httpx.Response:
        label = f"{deployment}--{slug}" if deployment else slug
        async with httpx.AsyncClient() as client:
            return await client.get(
                f"http://127.0.0.1:{self.port}{path}", headers={"Host": f"{label}.localhost:{self.port}"}
            )

    async def finished(self, deployment_id: str, timeout: float = 20.0) -> DeploymentRecord:
        async def check() -> DeploymentRecord:
            found = await self.store.deployment(deployment_id)
            assert found is not None and found[0].terminal, found and found[0].status
            return found[0]

        return await eventually(check, timeout=timeout)


async def make_store(js: JetStreamContext, conn: Bus) -> DeployStore:
    await ensure_streams(js, [subjects.DEPLOYS, subjects.RESULTS])
    await ensure_kv(js, [subjects.KV_SITES, subjects.KV_DEPLOYMENTS])
    return DeployStore(conn, await conn.kv(subjects.KV_SITES), await conn.kv(subjects.KV_DEPLOYMENTS))


DeployerFactory = Callable[..., Any]


@contextlib.asynccontextmanager
async def running_deployer(
    nats_url: str, js: JetStreamContext, data_dir: Path, **over: Any
) -> AsyncIterator[Deployer]:
    """An in-process deployer (the real service spec) on a free port."""
    settings = Settings(
        nats_url=nats_url,
        port=0,
        data_dir=str(data_dir),
        ack_wait_s=5,
        lease_s=5,
        keep_releases=2,
        log_format="text",
        shutdown_grace_s=2,
        **over,
    )
    async with serve(SPEC, settings, registry=CollectorRegistry()) as rt:
        yield Deployer(rt=rt, store=await make_store(js, rt.bus), data_dir=data_dir)


@pytest.fixture
async def deployer(nats_url: str, js: JetStreamContext, tmp_path: Path) -> AsyncIterator[Deployer]:
    async with running_deployer(nats_url, js, tmp_path / "sites") as d:
        yield d


@pytest.fixture
def site_config() -> Callable[..., SiteConfig]:
    """``site_config(slug, headline, **fields)``: a complete seven-section configuration."""
    return make_config


@pytest.fixture
def start_deployer(nats_url: str, js: JetStreamContext, tmp_path: Path) -> Callable[..., Any]:
    """``async with start_deployer(**settings) as d``: another in-process deployer, same data dir."""
    return lambda **over: running_deployer(nats_url, js, tmp_path / "sites", **over)


@pytest.fixture
async def store(js: JetStreamContext, nats_bus: Bus) -> DeployStore:
    """The deploy store on the test's own connection (what the receiver's sites API uses)."""
    return await make_store(js, nats_bus)
