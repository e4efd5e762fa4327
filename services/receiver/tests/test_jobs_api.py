"""The jobs API: submit, read, result, cancel, logs, deliveries, aliases, validation, auth."""

from __future__ import annotations

import datetime as dt

import pytest
from nats.js import JetStreamContext

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import (
    AgentResult,
    DeliveryAttempt,
    DeliveryLog,
    JobLog,
    JobRecord,
    LogLine,
    ResultBody,
    cancel_request_decoder,
    encoder,
    job_request_decoder,
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def put_record(js: JetStreamContext, record: JobRecord) -> None:
    kv = await js.key_value(subjects.KV_JOBS)
    await kv.put(record.job_id, encoder.encode(record))


def finished(job_id: str, status: str = "completed") -> JobRecord:
    now = dt.datetime.now(dt.UTC)
    result = AgentResult(
        job_id=job_id,
        lovable_project_id=None,
        agent_id="dev",
        status="completed",
        result=ResultBody(summary="looks fine", files_changed=["a.py"]),
        execution_time=1200,
        timestamp=now,
    )
    return JobRecord(
        job_id=job_id,
        status=status,  # type: ignore[arg-type]
        created_at=now,
        updated_at=now,
        agent="dev",
        progress=100,
        finished_at=now,
        result=result if status == "completed" else None,
    )


async def test_submit_read_and_idempotency(receiver, new_key, js, bus) -> None:
    key = await new_key(receiver)
    body = {
        "agent": "qa",
        "prompt": "check this",
        "input": {"files": ["a.py"]},
        "callback_url": "https://cb.test/x",
    }
    headers = auth(key) | {"Idempotency-Key": "order-1", "X-Correlation-ID": "corr-123"}
    first = await receiver.http.post("/api/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.text
    job = first.json()
    assert first.headers["Location"] == job["status_url"] == f"/api/jobs/{job['job_id']}"
    assert first.headers["X-Correlation-ID"] == "corr-123"
    assert job["duplicate"] is False

    msg = await js.get_last_msg(subjects.JOBS, "jobs.run.qa")
    request = job_request_decoder.decode(msg.data)
    assert (request.job_id, request.agent, request.prompt) == (job["job_id"], "qa", "check this")
    assert request.callback_url == "https://cb.test/x" and request.correlation_id == "corr-123"
    assert msg.headers and msg.headers[subjects.MSG_ID] == job["job_id"]

    again = await receiver.http.post("/api/jobs", json=body, headers=headers)
    assert again.status_code == 202
    assert again.json()["job_id"] == job["job_id"] and again.json()["duplicate"] is True
    assert await bus.count(subjects.JOBS) == 1

    record = (await receiver.http.get(job["status_url"], headers=auth(key))).json()
    assert (record["job_id"], record["status"], record["agent"]) == (job["job_id"], "queued", "qa")
    result = await receiver.http.get(f"{job['status_url']}/result", headers=auth(key))
    assert result.status_code == 202
    assert result.json() == {"job_id": job["job_id"], "status": "queued", "progress": 0}

    other = await receiver.http.post("/api/jobs", json=body, headers=auth(key))
    assert other.json()["job_id"] != job["job_id"]


INVALID = {
    "unknown agent": ({"agent": "wizard", "prompt": "x"}, 422, "agent"),
    "prompt too long": ({"agent": "dev", "prompt": "x" * 5001}, 422, "prompt"),
    "empty prompt": ({"agent": "dev", "prompt": ""}, 422, "prompt"),
    "missing prompt": ({"agent": "dev"}, 422, "prompt"),
    "bad callback url": ({"agent": "dev", "prompt": "x", "callback_url": "ftp://x"}, 422, "callback_url"),
    "callback url not absolute": (
        {"agent": "dev", "prompt": "x", "callback_url": "/relative"},
        422,
        "callback_url",
    ),
    # Parseable, but no resolver can take the host: refused here, not dead-lettered later.
    "callback host label over 63": (
        {"agent": "dev", "prompt": "x", "callback_url": f"https://{'a' * 64}.example/cb"},
        422,
        "callback_url",
    ),
    "callback host with an empty label": (
        {"agent": "dev", "prompt": "x", "callback_url": "https://hooks..example/cb"},
        422,
        "callback_url",
    ),
    "callback host over 253": (
        {"agent": "dev", "prompt": "x", "callback_url": "https://" + "a." * 124 + "example/cb"},
        422,
        "callback_url",
    ),
    "callback host with a bad character": (
        {"agent": "dev", "prompt": "x", "callback_url": "https://hooks%2e.example/cb"},
        422,
        "callback_url",
    ),
    "callback host a number": (
        {"agent": "dev", "prompt": "x", "callback_url": "http://2130706433/cb"},
        422,
        "callback_url",
    ),
    "callback host not IDNA": (
        {"agent": "dev", "prompt": "x", "callback_url": "https://" + "é" * 70 + ".example/cb"},
        422,
        "callback_url",
    ),
    "input not an object": ({"agent": "dev", "prompt": "x", "input": [1]}, 422, "input"),
    "unknown field": ({"agent": "dev", "prompt": "x", "colour": "red"}, 422, "colour"),
}


@pytest.mark.parametrize("name", list(INVALID))
async def test_submit_validation_names_the_field(name: str, receiver, new_key, bus) -> None:
    key = await new_key(receiver)
    body, status, field = INVALID[name]
    resp = await receiver.http.post("/api/jobs", json=body, headers=auth(key))
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field
    assert field in resp.json()["message"]
    await bus.assert_nothing_accepted()


async def test_callback_credentials_are_sent_on_but_never_shown(receiver, new_key, js) -> None:
    key = await new_key(receiver)
    url = "https://cb-user:s3cret-pw@cb.test/x"
    body = {"agent": "qa", "prompt": "check", "callback_url": url}
    created = await receiver.http.post("/api/jobs", json=body, headers=auth(key))
    assert created.status_code == 202, created.text
    job = created.json()
    # The executor gets them, for the deliverer to send as Basic auth ...
    request = job_request_decoder.decode((await js.get_last_msg(subjects.JOBS, "jobs.run.qa")).data)
    assert request.callback_url == url
    # ... readers never do: the record, its seed alias and its stream show the URL redacted.
    shown = "https://cb-user:***@cb.test/x"
    record = await receiver.http.get(job["status_url"], headers=auth(key))
    assert record.json()["callback_url"] == shown
    alias = await receiver.http.get(f"/api/agents/status/{job['job_id']}", headers=auth(key))
    assert alias.json()["callback_url"] == shown
    async with receiver.http.stream("GET", job["stream_url"], headers=auth(key)) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                assert '"callback_url":"https://cb-user:***@cb.test/x"' in line
                break
    for text in (record.text, alias.text):
        assert "s3cret" not in text


async def test_submit_body_errors(receiver, new_key, bus) -> None:
    key = await new_key(receiver)
    h = auth(key)
    resp = await receiver.http.post("/api/jobs", content=b"{not json", headers=h)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_json")
    resp = await receiver.http.post("/api/jobs", content=b"", headers=h)
    assert (resp.status_code, resp.json()["error"]) == (400, "empty_body")
    resp = await receiver.http.post("/api/jobs", content=b"x" * (1024 * 1024 + 1), headers=h)
    assert (resp.status_code, resp.json()["error"]) == (413, "payload_too_large")
    resp = await receiver.http.post(
        "/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=h | {"Idempotency-Key": "has spaces in it"}
    )
    assert (resp.status_code, resp.json()["field"]) == (400, "Idempotency-Key")
    await bus.assert_nothing_accepted()


async def test_api_key_required(receiver, new_key, bus) -> None:
    body = {"agent": "dev", "prompt": "x"}
    resp = await receiver.http.post("/api/jobs", json=body)
    assert (resp.status_code, resp.json()["error"]) == (401, "missing_api_key")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await receiver.http.post("/api/jobs", json=body, headers=auth("cvk_nope"))
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_api_key")
    await bus.assert_nothing_accepted()

    key = await new_key(receiver)
    resp = await receiver.http.post("/api/jobs", json=body, headers=auth(key))
    assert resp.status_code == 202


async def test_reads_without_a_key(start_receiver, new_key) -> None:
    async with start_receiver(read_rate_limit_max=3, reads_require_api_key=False) as r:
        key = await new_key(r)
        job = (await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=auth(key))).json()
        # The status URL a webhook sender gets works without a key, limited per client address.
        answers = [await r.http.get(job["status_url"]) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["X-RateLimit-Limit"] == "3"
        # A key given is a key checked, and its own budget applies.
        assert (await r.http.get(job["status_url"], headers=auth("cvk_wrong"))).status_code == 401
        assert (await r.http.get(job["status_url"], headers=auth(key))).status_code == 200
        # Writes always need a key.
        assert (await r.http.post(f"{job['status_url']}/cancel")).status_code == 401
    async with start_receiver() as r:
        resp = await r.http.get(job["status_url"])
        assert (resp.status_code, resp.json()["error"]) == (401, "missing_api_key")


async def test_unknown_job_is_404(receiver, new_key) -> None:
    key = await new_key(receiver)
    for path in (
        "/api/jobs/job_nope",
        "/api/jobs/job_nope/result",
        "/api/jobs/job_nope/logs",
        "/api/jobs/job_nope/deliveries",
        "/api/agents/status/job_nope",
        "/api/results/job_nope",
        "/api/jobs/not%20a%20token",
    ):
        resp = await receiver.http.get(path, headers=auth(key))
        assert resp.status_code == 404, path
        assert resp.json()["error"] == "job_not_found"
    resp = await receiver.http.post("/api/jobs/job_nope/cancel", headers=auth(key))
    assert resp.status_code == 404


async def test_result_logs_deliveries_and_aliases(receiver, new_key, js) -> None:
    key = await new_key(receiver)
    await put_record(js, finished("job_done"))
    result = (await receiver.http.get("/api/jobs/job_done/result", headers=auth(key))).json()
    assert (
        result["jobId"] == "job_done" and result["executionTime"] == 1200 and result["status"] == "completed"
    )
    assert result["result"]["files_changed"] == ["a.py"]
    await put_record(js, finished("job_cancelled", "cancelled"))
    resp = await receiver.http.get("/api/jobs/job_cancelled/result", headers=auth(key))
    assert (resp.status_code, resp.json()["error"], resp.json()["job_status"]) == (
        409,
        "no_result",
        "cancelled",
    )
    alias = (await receiver.http.get("/api/results/job_done", headers=auth(key))).json()
    assert alias == result
    status = (await receiver.http.get("/api/agents/status/job_done", headers=auth(key))).json()
    assert status["status"] == "completed" and status["progress"] == 100

    empty = (await receiver.http.get("/api/jobs/job_done/logs", headers=auth(key))).json()
    assert empty["job_id"] == "job_done" and empty["lines"] == []
    now = dt.datetime.now(dt.UTC)
    logs = JobLog(job_id="job_done", lines=[LogLine(at=now, level="info", message="started")])
    await (await js.key_value(subjects.KV_JOB_LOGS)).put("job_done", encoder.encode(logs))
    got = (await receiver.http.get("/api/jobs/job_done/logs", headers=auth(key))).json()
    assert [line["message"] for line in got["lines"]] == ["started"]

    attempt = DeliveryAttempt(at=now, url="https://cb.test/x", status_code=200, latency_ms=12.5)
    log = DeliveryLog(job_id="job_done", attempts=[attempt], delivered=True)
    await (await js.key_value(subjects.KV_DELIVERIES)).put("job_done", encoder.encode(log))
    got = (await receiver.http.get("/api/jobs/job_done/deliveries", headers=auth(key))).json()
    assert got["delivered"] is True and got["attempts"][0]["status_code"] == 200


async def test_cancel(receiver, new_key, js) -> None:
    key = await new_key(receiver)
    job = (
        await receiver.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=auth(key))
    ).json()
    resp = await receiver.http.post(f"/api/jobs/{job['job_id']}/cancel", headers=auth(key))
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"job_id": job["job_id"], "status": "queued", "cancel_requested": True}
    kv = await js.key_value(subjects.KV_CANCELS)
    assert cancel_request_decoder.decode((await kv.get(job["job_id"])).value).job_id == job["job_id"]

    # The seed's path does the same.
    resp = await receiver.http.post(f"/api/agents/cancel/{job['job_id']}", headers=auth(key))
    assert resp.status_code == 202

    for status in ("completed", "failed", "cancelled"):
        await put_record(js, finished("job_over", status))
        resp = await receiver.http.post("/api/jobs/job_over/cancel", headers=auth(key))
        assert resp.status_code == 409
        assert resp.json()["error"] == "job_finished" and resp.json()["job_status"] == status
