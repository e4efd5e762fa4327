"""Progress callbacks from ``jobprogress.<job_id>`` (core NATS), the deliverer in-process
against a real nats-server and a real endpoint: sent only for projects that ask, signed with
the project's own secret and credential, at most one per job per PROGRESS_CALLBACK_EVERY_S,
and none once the job's result is out."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from standardwebhooks import Webhook

from conveyor.deliverer.config import Settings
from conveyor.shared.bus.streams import ensure_kv
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobProgress, encoder
from conveyor.shared.domain.sealing import Sealer, new_key_setting
from conveyor.shared.domain.tenancy import Project, secret_context
from conveyor.shared.runtime.config import Secret
from conveyor.shared.testing.fixtures import eventually

from .conftest import job_result
from .test_delivery import deliverer, scrape, settings

PROJECT_SECRET = "whsec_cHJvamVjdC1wcm9ncmVzcy1zaWduaW5nLWtleQ=="
KEYS = new_key_setting()


async def store_project(js: JetStreamContext, project_id: str, url: str, **fields: Any) -> None:
    sealer = Sealer.parse(KEYS)
    now = dt.datetime.now(dt.UTC)
    project = Project(
        project_id=project_id,
        org_id="org",
        name=project_id,
        created_at=now,
        updated_at=now,
        callback_url=url,
        callback_secrets=[sealer.seal(PROJECT_SECRET, secret_context(project_id, "callback"))],
        outbound_credential=sealer.seal("its-api-key", secret_context(project_id, "outbound")),
        **fields,
    )
    kv = (await ensure_kv(js, [subjects.KV_PROJECTS]))[subjects.KV_PROJECTS]
    await kv.put(project_id, encoder.encode(project))


def progress(job_id: str, project: str, value: int, output: str) -> bytes:
    return encoder.encode(
        JobProgress(
            job_id=job_id,
            project=project,
            source="api",
            callback_url=None,
            status="processing",
            progress=value,
            output=output,
            timestamp=dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC),
        )
    )


def metric(text: str, outcome: str) -> float:
    line = f'progress_callbacks_total{{outcome="{outcome}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def s(nats_url: str) -> Settings:
    # Every progress after a job's first is "too soon" for the whole test.
    return settings(nats_url, conveyor_secret_keys=Secret(KEYS), progress_callback_every_s=600.0)


async def test_progress_is_signed_sent_once_per_interval_and_only_when_asked(
    nats_url: str, js: JetStreamContext, nc: Client, sink: Any
) -> None:
    await store_project(js, "watched", sink.url("/watched"), progress_callbacks=True)
    await store_project(js, "quiet", sink.url("/quiet"))
    async with deliverer(s(nats_url)) as rt:
        await nc.publish(subjects.job_progress("job_q"), progress("job_q", "quiet", 20, "x"))
        for value in (20, 40, 60):
            await nc.publish(
                subjects.job_progress("job_w"), progress("job_w", "watched", value, f"at {value}")
            )

        async def settled() -> str:
            text = await scrape(rt)
            assert metric(text, "delivered") == 1 and metric(text, "dropped") == 2
            assert metric(text, "skipped") == 1
            return text

        await eventually(settled)
    [request] = sink.requests
    body = json.loads(request.body)
    assert body == {
        "job_id": "job_w",
        "status": "processing",
        "progress": 20,
        "output": "at 20",
        "timestamp": "2026-12-07T06:00:00Z",
    }
    assert request.headers["webhook-id"] == "progress-job_w-1"
    assert request.headers["authorization"] == "Bearer its-api-key"
    Webhook(PROJECT_SECRET).verify(request.body, request.headers)


async def test_no_progress_once_the_result_is_out(
    nats_url: str, js: JetStreamContext, nc: Client, sink: Any, publish_result: Any
) -> None:
    await store_project(js, "watched", sink.url("/watched"), progress_callbacks=True)
    async with deliverer(s(nats_url)) as rt:
        result = msgspec.structs.replace(job_result("job_done", None), project="watched")
        await js.publish(
            subjects.result("job_done"), encoder.encode(result), headers={subjects.MSG_ID: "result-job_done"}
        )
        await eventually(lambda: _one(sink))
        await nc.publish(subjects.job_progress("job_done"), progress("job_done", "watched", 90, "late"))

        async def dropped() -> None:
            assert metric(await scrape(rt), "dropped") == 1

        await eventually(dropped)
    assert [json.loads(r.body).get("jobId") for r in sink.requests] == ["job_done"]


async def _one(sink: Any) -> None:
    assert len(sink.requests) == 1


async def test_progress_spaced_by_the_executor_is_not_dropped_for_arrival_jitter(
    nats_url: str, js: JetStreamContext, nc: Client, sink: Any
) -> None:
    """The executor spaces a job's progress PROGRESS_CALLBACK_EVERY_S apart; messages arrive a
    little closer or further. Two sent 1.5 s apart with an interval of 2 s are both sent on
    (dropping at the full interval lost the text of one of each pair that arrived early)."""
    await store_project(js, "watched", sink.url("/watched"), progress_callbacks=True)
    every = settings(nats_url, conveyor_secret_keys=Secret(KEYS), progress_callback_every_s=2.0)
    async with deliverer(every):
        await nc.publish(subjects.job_progress("job_j"), progress("job_j", "watched", 20, "one "))
        await eventually(lambda: _one(sink))
        await asyncio.sleep(1.5)
        await nc.publish(subjects.job_progress("job_j"), progress("job_j", "watched", 40, "two "))

        async def both() -> None:
            assert [json.loads(r.body)["output"] for r in sink.requests] == ["one ", "two "]

        await eventually(both)
