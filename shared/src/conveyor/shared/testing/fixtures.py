"""pytest fixtures: a fresh JetStream-enabled nats-server per test, clients, registries, polling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from conveyor.shared.bus import Bus, fastpaths
from conveyor.shared.testing.nats_server import NatsServer, start_nats_server

T = TypeVar("T")

# Test clients read with the services' fast paths too (unless CONVEYOR_FAST_PATHS=0).
fastpaths.install()


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A fresh server per test: no state leaks between tests."""
    server = await start_nats_server(tmp_path / "js")
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def nats_bus(nats_url: str) -> AsyncIterator[Bus]:
    """A bus connected as a service's is (the fast paths as the environment says)."""
    connected = await Bus.connect(nats_url, reconnect=False)
    try:
        yield connected
    finally:
        await connected.close(drain_s=2)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns without raising (assertions poll; tests never sleep fixed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, LookupError, ValueError, OSError, TimeoutError, Exception) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not true after {timeout}s: {exc!r}") from exc
            await asyncio.sleep(interval)


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """The objects left in reference cycles by what runs inside the block: the collector is off
    meanwhile, and afterwards one collection keeps what it would have freed in the list."""
    gc.collect()
    gc.disable()
    found: list[object] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def forget_message_ids(js: JetStreamContext, stream: str, probe: str) -> None:
    """Make ``stream`` forget every Nats-Msg-Id it has seen, as it does once its duplicate
    window (2 minutes on EVENTS and RESULTS, a day on JOBS) has passed: the window is cut to
    0.2 s, and a probe message on subject ``probe`` (in the stream, outside its consumers'
    filters) shows when its id, the newest, is forgotten. The probes are purged afterwards,
    so the stream's counts are as before."""
    info = await js.stream_info(stream)
    info.config.duplicate_window = 0.2
    await js.update_stream(info.config)
    headers = {"Nats-Msg-Id": "forget-probe"}
    await js.publish(probe, b"", headers=headers)

    async def forgotten() -> None:
        assert not (await js.publish(probe, b"", headers=headers)).duplicate

    await eventually(forgotten)
    await js.purge_stream(stream, subject=probe)
