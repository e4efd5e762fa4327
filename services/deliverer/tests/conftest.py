"""Deliverer test support: a real callback sink on 127.0.0.1:0 and result publishing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from nats.js import JetStreamContext

from conveyor.shared.bus.streams import ensure_streams
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import AgentResult, JobResult, ResultBody, encoder
from conveyor.shared.testing.rawhttp import serve_app


@dataclass
class Request:
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int


@dataclass
class Sink:
    """A callback endpoint: answers ``plan`` statuses in order, then ``status``; records all."""

    status: int = 200
    plan: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)  # seconds before answering, in order
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer_body: bytes | None = None  # instead of the JSON {"status": ...}
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Sink:
        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            if self.delays:
                await asyncio.sleep(self.delays.pop(0))
            status = self.plan.pop(0) if self.plan else self.status
            self.requests.append(Request({k.lower(): v for k, v in request.headers.items()}, body, status))
            self.arrived.set()
            if self.answer_body is not None:
                return web.Response(body=self.answer_body, status=status, headers=self.answer_headers)
            return web.json_response({"status": status}, status=status, headers=self.answer_headers)

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        self.runner, port = await serve_app(app)
        self.port = port
        return self

    def url(self, path: str = "/callback") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answered(self, status: int) -> int:
        return sum(1 for r in self.requests if r.answered == status)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Sink]:
    s = await Sink().start()
    try:
        yield s
    finally:
        assert s.runner is not None
        await s.runner.cleanup()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with serving() as s:
        yield s


@pytest.fixture
async def other_sink() -> AsyncIterator[Sink]:
    """A second endpoint (its own port, so its own circuit)."""
    async with serving() as s:
        yield s


def job_result(job_id: str, url: str | None, *, source: str = "api") -> JobResult:
    return JobResult(
        job_id=job_id,
        callback_url=url,
        source=source,
        result=AgentResult(
            job_id=job_id,
            lovable_project_id="proj-7",
            agent_id="qa",
            status="completed",
            result=ResultBody(summary="3 findings", files_changed=["app.py"], suggestions=["add tests"]),
            execution_time=1234,
            timestamp=dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC),
        ),
        correlation_id=f"corr-{job_id}",
    )


Publish = Callable[..., Awaitable[bytes]]


@pytest.fixture
async def publish_result(js: JetStreamContext) -> Publish:
    """Publish a JobResult the way the executor does; returns the exact bytes published."""
    await ensure_streams(js, [subjects.RESULTS, subjects.DLQ, subjects.CONTROL])

    async def publish(
        job_id: str, url: str | None, *, source: str = "api", headers: dict[str, str] | None = None
    ) -> bytes:
        data = encoder.encode(job_result(job_id, url, source=source))
        headers = {subjects.MSG_ID: ids.result_msg_id(job_id), **(headers or {})}
        await js.publish(subjects.result(job_id), data, headers=headers)
        return data

    return publish


@pytest.fixture
def make_result() -> Callable[..., JobResult]:
    """The JobResult ``publish_result`` publishes, to compare callback bodies against."""
    return job_result
