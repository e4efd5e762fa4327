"""Executor test support: settings for an in-process executor, job and event publishers,
and readers for records, results and dead letters, all against the real nats-server."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from conveyor.executor.config import AgentConfig, Settings
from conveyor.shared.bus.streams import ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import (
    DEFAULT_PROJECT,
    CancelRequest,
    JobRecord,
    JobRequest,
    JobResult,
    WebhookEvent,
    job_record_decoder,
    job_result_decoder,
)
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.testing.fixtures import eventually

enc = msgspec.json.Encoder()


def settings(nats_url: str, *agents: AgentConfig, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "port": 0,
        "retry_base_ms": 50,
        "retry_cap_ms": 200,
        "shutdown_grace_s": 2.0,
        "agents": list(agents),
    }
    base.update(kw)
    return Settings(**base)


def new_id() -> str:
    return f"job_{uuid.uuid4().hex[:16]}"


class Bus:
    """What a test does to the executor from the outside, and what it reads back."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def setup(self) -> None:
        await ensure_streams(self.js, [subjects.EVENTS, subjects.JOBS, subjects.RESULTS, subjects.DLQ])
        kv = await ensure_kv(
            self.js, [subjects.KV_JOBS, subjects.KV_CANCELS, subjects.KV_JOB_LOGS, subjects.KV_PROJECTS]
        )
        self.jobs, self.cancels, self.logs, self.projects = (
            kv[subjects.KV_JOBS],
            kv[subjects.KV_CANCELS],
            kv[subjects.KV_JOB_LOGS],
            kv[subjects.KV_PROJECTS],
        )

    async def job(
        self, agent: str, input: Any = None, *, job_id: str | None = None, queued: bool = True, **kw: Any
    ) -> str:
        """Queue an API job the way the receiver does: record "queued" first, then the request."""
        job_id = job_id or new_id()
        now = dt.datetime.now(dt.UTC)
        if queued:
            rec = JobRecord(
                job_id=job_id,
                status="queued",
                created_at=now,
                updated_at=now,
                agent=agent,
                callback_url=kw.get("callback_url"),
                project=kw.get("project", DEFAULT_PROJECT),
            )
            await self.jobs.create(job_id, enc.encode(rec))
        req = JobRequest(
            job_id=job_id, agent=agent, created_at=now, input=msgspec.Raw(enc.encode(input or {})), **kw
        )
        await self.js.publish(subjects.job_run(agent), enc.encode(req), headers={subjects.MSG_ID: job_id})
        return job_id

    async def event(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        source: str = "lovable",
        job_id: str | None = None,
        project: str = "default",
    ) -> str:
        job_id = job_id or new_id()
        now = dt.datetime.now(dt.UTC)
        body = {
            "id": job_id,
            "type": event_type,
            "project_id": "proj-1",
            "data": data,
            "created_at": now.isoformat(),
        }
        rec = JobRecord(
            job_id=job_id,
            status="queued",
            created_at=now,
            updated_at=now,
            source=source,
            event_type=event_type,
            project_id="proj-1",
            project=project,
        )
        await self.jobs.create(job_id, enc.encode(rec))
        ev = WebhookEvent(
            event_id=job_id,
            job_id=job_id,
            source=source,
            type=event_type,
            received_at=now,
            payload=msgspec.Raw(enc.encode(body)),
            project_id="proj-1",
            project=project,
        )
        await self.js.publish(
            subjects.event(source, event_type),
            enc.encode(ev),
            headers={subjects.MSG_ID: f"{source}:{job_id}"},
        )
        return job_id

    async def project(self, project_id: str, **fields: Any) -> None:
        """Store a project record the way the admin API does (executors mirror the bucket)."""
        now = dt.datetime.now(dt.UTC)
        base: dict[str, Any] = {"org_id": "org-1", "name": project_id, "created_at": now, "updated_at": now}
        await self.projects.put(project_id, enc.encode(Project(project_id=project_id, **{**base, **fields})))

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> None:
        req = CancelRequest(job_id=job_id, requested_at=dt.datetime.now(dt.UTC), reason=reason)
        await self.cancels.put(job_id, enc.encode(req))

    async def record(self, job_id: str) -> JobRecord:
        entry = await self.jobs.get(job_id)
        assert entry.value is not None
        return job_record_decoder.decode(entry.value)

    async def until(self, job_id: str, *statuses: str, timeout: float = 15) -> JobRecord:
        async def check() -> JobRecord:
            rec = await self.record(job_id)
            assert rec.status in statuses, (rec.status, rec.error)
            return rec

        return await eventually(check, timeout=timeout)

    async def results(self, job_id: str) -> list[JobResult]:
        """Every message on results.<job_id> (there must only ever be one)."""
        info = await self.js.stream_info(subjects.RESULTS)
        if not info.state.messages:
            return []
        sub = await self.js.subscribe(subjects.result(job_id), ordered_consumer=True)
        out: list[JobResult] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.3)
                except nats.errors.TimeoutError:
                    break
                out.append(job_result_decoder.decode(msg.data))
        finally:
            await sub.unsubscribe()
        return out

    async def one_result(self, job_id: str, timeout: float = 15) -> JobResult:
        async def check() -> JobResult:
            found = await self.results(job_id)
            assert len(found) == 1, found
            return found[0]

        return await eventually(check, timeout=timeout)

    async def dead_letters(self, agent: str) -> list[Any]:
        try:
            msg = await self.js.get_last_msg(subjects.DLQ, f"dlq.executor.jobs.run.{agent}")
        except nats.js.errors.NotFoundError:
            return []
        return [msg]

    async def log_lines(self, job_id: str) -> list[str]:
        from conveyor.shared.contracts.events import job_log_decoder

        entry = await self.logs.get(job_id)
        assert entry.value is not None
        return [ln.message for ln in job_log_decoder.decode(entry.value).lines]


@pytest.fixture
async def bus(js: JetStreamContext) -> AsyncIterator[Bus]:
    b = Bus(js)
    await b.setup()
    yield b


@pytest.fixture
def make_settings(nats_url: str) -> Callable[..., Settings]:
    return lambda *agents, **kw: settings(nats_url, *agents, **kw)
