"""Streams and buckets as declared against a real nats-server: retention as the product asks,
each a setting; duplicate windows that do not hold a day of message ids in broker memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from conveyor.shared.bus.streams import DAY, ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import BaseSettings, load_settings
from conveyor.shared.runtime.runner import Runtime, ServiceSpec, retention_of, serve


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 0


def spec() -> ServiceSpec:
    @contextlib.asynccontextmanager
    async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
        yield

    return ServiceSpec(
        name="testsvc",
        streams=[subjects.EVENTS, subjects.JOBS, subjects.RESULTS],
        buckets=[subjects.KV_JOBS, subjects.KV_JOB_LOGS],
        components=components,
    )


async def limits(js: JetStreamContext, stream: str) -> tuple[float, float]:
    """(max_age, duplicate_window) in seconds."""
    c = (await js.stream_info(stream)).config
    return round(c.max_age or 0.0), round(c.duplicate_window or 0.0)


async def test_default_retention_is_the_products(nats_url: str, js: JetStreamContext) -> None:
    async with serve(spec(), Settings(nats_url=nats_url)):
        # Raw webhook payloads a day, results a week, per-run logs 30 days.
        assert await limits(js, subjects.EVENTS) == (DAY, 120)
        assert await limits(js, subjects.RESULTS) == (7 * DAY, 120)
        assert (await limits(js, "KV_job_logs"))[0] == 30 * DAY
        # JOBS keeps a day of ids: one JobRequest per job while the job lives.
        assert await limits(js, subjects.JOBS) == (7 * DAY, DAY)
        assert (await limits(js, "KV_jobs"))[0] == 7 * DAY


async def test_retention_settings_reach_the_streams(
    nats_url: str, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("EVENTS_RETENTION_H", "2")
    monkeypatch.setenv("RESULTS_RETENTION_D", "3")
    monkeypatch.setenv("JOB_LOGS_RETENTION_D", "10")
    settings = load_settings(Settings)
    async with serve(spec(), settings):
        assert await limits(js, subjects.EVENTS) == (2 * 3600, 120)
        assert await limits(js, subjects.RESULTS) == (3 * DAY, 120)
        assert (await limits(js, "KV_job_logs"))[0] == 10 * DAY
    # A later release (or a replica) with other values converges what exists.
    async with serve(spec(), Settings(nats_url=nats_url, results_retention_d=14, job_logs_retention_d=45)):
        assert await limits(js, subjects.RESULTS) == (14 * DAY, 120)
        assert (await limits(js, "KV_job_logs"))[0] == 45 * DAY


async def test_a_bucket_made_with_another_ttl_takes_the_setting(js: JetStreamContext) -> None:
    """Logs were kept 7 days before: an existing job_logs bucket is converged, not left as it was."""
    await js.create_key_value(
        KeyValueConfig(bucket=subjects.KV_JOB_LOGS, ttl=7 * DAY, storage=StorageType.FILE, direct=True)
    )
    kv = (await ensure_kv(js, [subjects.KV_JOB_LOGS]))[subjects.KV_JOB_LOGS]
    assert (await limits(js, "KV_job_logs"))[0] == 30 * DAY
    await kv.put("job_1", b"log")  # still a working bucket
    assert (await kv.get("job_1")).value == b"log"


async def test_a_stream_made_with_a_day_long_window_is_converged(js: JetStreamContext) -> None:
    """Brokers upgraded from the day-long windows give their memory back at the next start."""
    await js.add_stream(
        StreamConfig(
            name=subjects.EVENTS,
            subjects=["events.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=7 * DAY,
            duplicate_window=DAY,
        )
    )
    await ensure_streams(js, [subjects.EVENTS])
    assert await limits(js, subjects.EVENTS) == (DAY, 120)


@pytest.mark.parametrize("name", ["EVENTS_RETENTION_H", "RESULTS_RETENTION_D", "JOB_LOGS_RETENTION_D"])
async def test_a_retention_not_over_0_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "0")
    with pytest.raises(ConfigError) as err:
        retention_of(load_settings(Settings))
    assert err.value.setting == name
