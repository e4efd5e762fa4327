"""The bus's fast paths are installed on purpose, for the pinned nats-py only, and can be
turned off: then the bus runs on stock nats-py and still does everything (publish, KV,
consume and settle)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.protocol import parser as nats_parser
from prometheus_client import CollectorRegistry

from conveyor.shared.bus import Bus, ConsumerConfig, ConsumerMetrics, Delivery, fastpaths, reader
from conveyor.shared.bus.consumer import Consumer
from conveyor.shared.contracts import subjects
from conveyor.shared.testing.fixtures import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_fast_paths() -> Iterator[None]:
    yield
    fastpaths.install(True)  # as the fixtures left them for the other tests


def test_importing_the_bus_changes_nothing_in_nats_py() -> None:
    """Only ``fastpaths.install`` (the bus connecting) replaces nats-py's parser."""
    code = (
        "import nats.aio.client as c\n"
        "from nats.protocol.parser import Parser\n"
        "import conveyor.shared.bus, conveyor.shared.runtime.runner\n"
        "assert c.Parser is Parser, c.Parser\n"
        "from conveyor.shared.bus import fastpaths\n"
        "assert fastpaths.install(True) and c.Parser is not Parser\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_supported_version_is_the_pinned_one() -> None:
    assert fastpaths.version_supported(importlib.metadata.version("nats-py"))
    major, minor = fastpaths.SUPPORTED.split(".")
    pin = (ROOT / "shared" / "pyproject.toml").read_text()
    assert f'"nats-py>={major}.{minor},<{major}.{int(minor) + 1}"' in pin  # one minor version
    assert (
        f'{{ name = "nats-py", specifier = ">={major}.{minor},<{major}.{int(minor) + 1}" }}'
        in (ROOT / "uv.lock").read_text()
    )


def test_an_unexpected_version_falls_back_to_stock_nats_py_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, restore_fast_paths: None
) -> None:
    monkeypatch.setattr(fastpaths, "_warned", False)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.99.1")
    with caplog.at_level(logging.INFO, logger=fastpaths.__name__):
        assert fastpaths.install(True) is False
        assert fastpaths.install(True) is False  # a second connect says nothing more
    assert not fastpaths.on() and not reader.installed()
    assert Client._parse_header_lines is not reader.parse_header_lines
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2.99.1" in warnings[0].getMessage(), caplog.records


def test_the_setting_turns_them_off(monkeypatch: pytest.MonkeyPatch, restore_fast_paths: None) -> None:
    monkeypatch.setenv(fastpaths.ENV, "0")
    assert fastpaths.install() is False and not reader.installed()
    monkeypatch.setenv(fastpaths.ENV, "1")
    assert fastpaths.install() is True and reader.installed()


async def test_the_bus_works_on_stock_nats_py(nats_url: str, restore_fast_paths: None) -> None:
    conn = await Bus.connect(nats_url, reconnect=False, fast_paths=False)
    try:
        assert not fastpaths.on()
        assert type(conn._nc._ps) is nats_parser.Parser  # stock parser on this client
        await conn.declare([subjects.JOBS, subjects.DLQ], [subjects.KV_JOBS])
        jobs = await conn.kv(subjects.KV_JOBS)
        rev = await jobs.create("job_a", b"1")
        assert (await jobs.get("job_a")).value == b"1"
        rev = await jobs.update("job_a", b"2", last=rev)
        with pytest.raises(Exception) as wrong:
            await jobs.update("job_a", b"3", last=rev - 1)
        assert type(wrong.value).__name__ == "Conflict"
        assert await jobs.lookup("nope") is None
        ack = await conn.publish("jobs.run.dev", b"x", msg_id="m1", stream=subjects.JOBS)
        again = await conn.publish("jobs.run.dev", b"x", msg_id="m1", stream=subjects.JOBS)
        assert again.duplicate and again.seq == ack.seq

        seen: list[int] = []

        async def handle(msg: Delivery) -> None:
            seen.append(msg.attempts)
            if msg.attempts == 1:
                await msg.nak()  # settled by the handler: redelivered at once

        consumer = Consumer(
            bus=conn,
            stream=subjects.JOBS,
            config=ConsumerConfig(durable_name="stock", filter_subject="jobs.run.>", ack_wait=10),
            handler=handle,
            stage="test",
            metrics=ConsumerMetrics(CollectorRegistry(), "test"),
            concurrency=2,
        )
        await consumer.start()
        try:

            async def acked() -> None:
                assert seen == [1, 2]
                state = await conn.consumer_state(subjects.JOBS, "stock")
                assert state.ack_pending == 0 and state.pending == 0

            await eventually(acked)
        finally:
            await consumer.stop(1)
        await asyncio.sleep(0)
    finally:
        await conn.close(drain_s=2)
