"""The runner against a real nats-server: health, readiness, a consumer, settlement, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import PermanentError, RetryableError
from conveyor.shared.runtime.config import BaseSettings
from conveyor.shared.runtime.runner import Runtime, ServiceSpec, serve
from conveyor.shared.testing.fixtures import cyclic_garbage, eventually
from conveyor.shared.testing.nats_server import NatsServer, run_nats_server


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 0


def make_spec(seen: list[str]) -> ServiceSpec:
    async def handle(msg: Msg) -> None:
        body = msg.data.decode()
        seen.append(body)
        if body == "bad":
            raise PermanentError("bad input")
        if body == "flaky" and msg.metadata.num_delivered < 2:
            raise RetryableError("try again", delay_s=0.1)

    @contextlib.asynccontextmanager
    async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
        await rt.consume(
            subjects.JOBS,
            ConsumerConfig(
                durable_name="test-workers",
                filter_subject="jobs.run.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=5,
                max_deliver=3,
            ),
            handle,
            stage="test",
            concurrency=5,
        )
        yield

    return ServiceSpec(
        name="testsvc",
        streams=[subjects.JOBS, subjects.DLQ],
        buckets=[subjects.KV_JOBS],
        components=components,
    )


async def test_consumer_settles_ok_retry_and_dead_letter(nats_url: str, js: JetStreamContext) -> None:
    seen: list[str] = []
    async with serve(make_spec(seen), Settings(nats_url=nats_url)) as rt:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            assert (await http.get("/health/live")).status_code == 200
            assert (await http.get("/health/ready")).status_code == 200
            for body in (b"good", b"flaky", b"bad"):
                await js.publish("jobs.run.dev", body)

            async def settled() -> None:
                assert seen.count("good") == 1 and seen.count("flaky") == 2 and seen.count("bad") == 1
                info = await js.stream_info(subjects.DLQ)
                assert info.state.messages == 1

            await eventually(settled)
            dead = await js.get_last_msg(subjects.DLQ, "dlq.test.jobs.run.dev")
            assert dead.data == b"bad"
            assert dead.headers is not None
            assert dead.headers[subjects.H_ORIGINAL_SUBJECT] == "jobs.run.dev"
            assert dead.headers[subjects.H_ERROR] == "bad input"

            metrics = (await http.get("/metrics")).text
            assert 'testsvc_messages_total{consumer="test-workers",outcome="dead_lettered"} 1.0' in metrics
            assert "process_resident_memory_bytes" in metrics


async def test_ready_follows_nats(nats_server: NatsServer, tmp_path: Any) -> None:
    async with serve(make_spec([]), Settings(nats_url=nats_server.url)) as rt:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            assert (await http.get("/health/ready")).status_code == 200
            await nats_server.stop()

            async def not_ready() -> None:
                assert (await http.get("/health/ready")).status_code == 503

            await eventually(not_ready)
            assert (await http.get("/health/live")).status_code == 200


async def test_shutdown_naks_unfinished_work(nats_url: str, js: JetStreamContext) -> None:
    started = asyncio.Event()

    async def slow(msg: Msg) -> None:
        started.set()
        await asyncio.sleep(60)

    @contextlib.asynccontextmanager
    async def components(rt: Runtime[Any]) -> AsyncIterator[None]:
        await rt.consume(
            subjects.JOBS,
            ConsumerConfig(durable_name="slow", ack_wait=30, max_deliver=5),
            slow,
            stage="test",
            concurrency=5,
        )
        yield

    spec = ServiceSpec(
        name="slowsvc", streams=[subjects.JOBS, subjects.DLQ], buckets=[], components=components
    )
    async with serve(spec, Settings(nats_url=nats_url, shutdown_grace_s=0.2)):
        await js.publish("jobs.run.dev", b"x")
        await asyncio.wait_for(started.wait(), 10)
    # NAKed at shutdown, so it comes back at once (2 s here), not after the 30 s AckWait.
    psub = await js.pull_subscribe_bind("slow", subjects.JOBS)
    msgs = await psub.fetch(1, timeout=2)
    assert msgs[0].data == b"x" and msgs[0].metadata.num_delivered == 2


async def test_error_answers_leave_no_request_in_a_cycle(nats_url: str) -> None:
    async with serve(make_spec([]), Settings(nats_url=nats_url)) as rt:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            with cyclic_garbage() as garbage:
                for n in range(20):
                    resp = await http.get(f"/no/such/path/{n}")
                    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
                    assert (await http.post("/health/live")).status_code == 405
            kept = [o for o in garbage if isinstance(o, web.BaseRequest)]
            garbage.clear()
            assert kept == []


@pytest.mark.parametrize(
    ("server_auth", "userinfo", "shown", "secret"),
    [
        (["--user", "conveyor", "--pass", "s3cret-pw"], "conveyor:s3cret-pw", "conveyor:***", "s3cret-pw"),
        (["--auth", "t0ken-abc"], "t0ken-abc", "***", "t0ken-abc"),  # a token is the user part
    ],
)
async def test_nats_credentials_are_never_logged(
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    server_auth: list[str],
    userinfo: str,
    shown: str,
    secret: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_nats_server(tmp_path / "js", extra=server_auth) as server:
        url = f"nats://{userinfo}@127.0.0.1:{server.port}"
        async with serve(make_spec([]), Settings(nats_url=url)) as rt:
            assert rt.connected  # the server requires the credentials: they were used
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"ready (nats nats://{shown}@127.0.0.1:{server.port})" in m for m in messages), messages
    assert secret not in caplog.text
