"""Schedules end to end, every service a real process on one nats-server whose message
scheduler does the firing: schedule -> firings -> jobs -> callbacks at a real sink; pause,
resume, delete; every service restarted with NATS kept; a cron's next run; firings charged to the
owner's key limits."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import pytest
from croniter import croniter
from nats.js import JetStreamContext

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobRecord, job_record_decoder
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink as Sink

ADMIN = "e2e-admin-key"
SIGNING = "whsec_ZTJlLXNjaGVkdWxlcy1zaWduaW5nLWtleQ=="
SERVICES = ("receiver", "executor", "deliverer")


class System:
    def __init__(self, procs: dict[str, ServiceProcess], http: httpx.AsyncClient, key: str) -> None:
        self.procs, self.http, self.key = procs, http, key

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def restart(self) -> None:
        """Every Conveyor service stops (cleanly) and starts again; NATS keeps running."""
        codes = await asyncio.gather(*(p.stop() for p in self.procs.values()))
        assert list(codes) == [0] * len(codes), {n: p.tail() for n, p in self.procs.items()}
        await asyncio.gather(*(p.start() for p in self.procs.values()))


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = await Sink().start()
    yield s
    assert s.runner is not None
    await s.runner.cleanup()


@pytest.fixture
async def system(nats_server: NatsServer, sink: Sink, tmp_path: Path) -> AsyncIterator[System]:
    env = service_env(
        nats_server.url,
        ADMIN_API_KEY=ADMIN,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_SIGNING_SECRETS=SIGNING,
        LLM_BACKEND="builtin",
        SCHEDULE_MIN_INTERVAL_S="1",  # every second: the server's floor (the default is a minute)
    )
    procs = {name: ServiceProcess(name, env, tmp_path / "logs" / f"{name}.log") for name in SERVICES}
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        async with httpx.AsyncClient(base_url=procs["receiver"].url, timeout=10) as http:
            # Each firing counts against the key, so its minute holds the firings of a long test.
            made = await http.post(
                "/api/admin/keys",
                json={"name": "e2e", "per_minute": 1000},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert made.status_code == 201, made.text
            yield System(procs, http, made.json()["key"])
    finally:
        codes = await asyncio.gather(*(p.stop() for p in procs.values()))
        assert list(codes) == [0] * len(SERVICES), {n: p.tail() for n, p in procs.items()}


async def jobs_of(js: JetStreamContext, schedule_id: str) -> list[JobRecord]:
    """Every job in KV jobs that the schedule created."""
    kv = await js.key_value(subjects.KV_JOBS)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    entries = await asyncio.gather(*(kv.get(k) for k in keys))
    records = [job_record_decoder.decode(e.value) for e in entries if e.value]
    return [r for r in records if r.schedule_id == schedule_id]


async def holds(check: Callable[[], Awaitable[None]], seconds: float) -> None:
    """``check`` passes every time it is polled for ``seconds`` (a bounded wait for "nothing happens")."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await check()
        await asyncio.sleep(0.2)


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_every_second_runs_jobs_to_callbacks_and_pause_resume_delete_control_it(
    system: System, sink: Sink, js: JetStreamContext
) -> None:
    http = system.http
    r = await http.post(
        "/api/schedules",
        json={"agent": "qa", "every": "1s", "overlap": "allow", "callback_url": sink.url,
              "prompt": "scheduled QA pass", "input": {"files": {"app/a.py": "import os\n"}}},
        headers=system.auth,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    sid = r.json()["schedule_id"]
    url = f"/api/schedules/{sid}"

    # Firings become jobs that complete and call back, one callback per job.
    async def three_called_back() -> list[JobRecord]:
        jobs = {j.job_id: j for j in await jobs_of(js, sid)}
        called = [b for b in sink.bodies if b["jobId"] in jobs]
        assert len(called) >= 3
        return list(jobs.values())

    jobs = await eventually(three_called_back, timeout=20)
    for body in (b for b in sink.bodies if b["jobId"] in {j.job_id for j in jobs}):
        assert body["status"] == "completed" and body["agentId"] == "qa"
        assert "'os' imported but unused" in " ".join(body["result"]["suggestions"])
    assert len(sink.job_ids()) == len(set(sink.job_ids()))
    job = (await http.get(f"/api/jobs/{jobs[0].job_id}", headers=system.auth)).json()
    assert job["schedule_id"] == sid and job["source"] == "schedule"

    view = (await http.get(url, headers=system.auth)).json()
    assert view["runs"] >= 3 and view["last_run"]["job_id"] in {j.job_id for j in await jobs_of(js, sid)}
    assert parse(view["next_run_at"]) > parse(view["last_run"]["at"])

    # Pause: the runs the pause answer counts are all there are (a run is taken by a
    # compare-and-set on the record the pause wrote), then nothing while it stays paused.
    paused = await http.patch(url, json={"paused": True}, headers=system.auth)
    assert paused.status_code == 200 and paused.json()["next_run_at"] is None
    paused_count = paused.json()["runs"]

    async def unchanged() -> None:
        assert len(await jobs_of(js, sid)) == paused_count

    await eventually(unchanged, timeout=5)
    await holds(unchanged, 2.5)

    # Resume: firings start again.
    assert (await http.patch(url, json={"paused": False}, headers=system.auth)).status_code == 200

    async def resumed() -> None:
        assert len(await jobs_of(js, sid)) >= paused_count + 2

    await eventually(resumed, timeout=10)

    # Delete: the record goes first, so no run is taken once the answer is in.
    gone = await http.delete(url, headers=system.auth)
    assert gone.status_code == 200, gone.text
    deleted_count = gone.json()["runs"]
    assert deleted_count >= paused_count + 2
    assert (await http.get(url, headers=system.auth)).status_code == 404

    async def still_none() -> None:
        assert len(await jobs_of(js, sid)) == deleted_count

    await eventually(still_none, timeout=5)
    await holds(still_none, 2.5)


async def test_restarting_every_service_keeps_schedules_and_doubles_no_firing(
    system: System, sink: Sink, js: JetStreamContext
) -> None:
    http = system.http
    started = time.time()
    every = await http.post(
        "/api/schedules",
        json={"agent": "qa", "every": "1s", "overlap": "allow", "callback_url": sink.url},
        headers=system.auth,
    )
    cron = await http.post(
        "/api/schedules",
        json={"agent": "architect", "cron": "0 9 * * 1-5", "timezone": "Europe/Amsterdam",
              "callback_url": sink.url},
        headers=system.auth,
    )  # fmt: skip
    assert every.status_code == 201 and cron.status_code == 201, (every.text, cron.text)
    sid, cid = every.json()["schedule_id"], cron.json()["schedule_id"]

    async def cron_next_is_right() -> None:
        view = (await http.get(f"/api/schedules/{cid}", headers=system.auth)).json()
        assert view["pattern"] == "0 0 9 * * 1-5"
        now = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Amsterdam"))
        expected = croniter("0 9 * * 1-5", now).get_next(dt.datetime)
        assert parse(view["next_run_at"]) == expected.astimezone(dt.UTC)

    await eventually(cron_next_is_right, timeout=5)

    async def jobs_at_least(n: int) -> list[JobRecord]:
        found = await jobs_of(js, sid)
        assert len(found) >= n
        return found

    before = len(await eventually(lambda: jobs_at_least(2), timeout=15))
    await system.restart()

    # The schedule survived: firings made while the services were away and after are taken.
    after = await eventually(lambda: jobs_at_least(before + 3), timeout=20)
    listed = (await http.get("/api/schedules", headers=system.auth)).json()["schedules"]
    assert {s["schedule_id"] for s in listed} == {sid, cid}
    await eventually(cron_next_is_right, timeout=5)

    # No firing doubled: the server fires at most once a second, so there can be no more jobs
    # than seconds since the schedule was made (plus the one at the start); and each run was
    # recorded once.
    elapsed = time.time() - started
    assert len(after) <= int(elapsed) + 1, (len(after), elapsed)
    assert await jobs_of(js, cid) == []  # 09:00 on a weekday has not come in this test

    async def recorded_and_called_back() -> None:
        jobs = await jobs_of(js, sid)
        view = (await http.get(f"/api/schedules/{sid}", headers=system.auth)).json()
        assert view["runs"] == len(jobs)
        done = {j.job_id for j in jobs if j.status == "completed"}
        called = [j for j in sink.job_ids() if j in done]
        assert len(done) == len(jobs) and sorted(called) == sorted(done)  # each exactly once

    await http.patch(f"/api/schedules/{sid}", json={"paused": True}, headers=system.auth)
    await eventually(recorded_and_called_back, timeout=20)


async def test_firings_count_against_the_owners_key_like_its_requests(system: System, sink: Sink) -> None:
    """A key with 4 requests a minute spends one on the create; the schedule gets the other 3 runs,
    and then firings are skipped, recorded as rate_limited, until the minute is over."""
    admin = {"Authorization": f"Bearer {ADMIN}"}  # looks at the schedule without spending the key's
    made = await system.http.post("/api/admin/keys", json={"name": "small", "per_minute": 4}, headers=admin)
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    r = await system.http.post(
        "/api/schedules",
        json={"agent": "qa", "every": "1s", "overlap": "allow", "callback_url": sink.url},
        headers=key,
    )
    assert r.status_code == 201, r.text
    url = f"/api/schedules/{r.json()['schedule_id']}"

    async def limited() -> dict[str, Any]:
        view = (await system.http.get(url, headers=admin)).json()
        assert view["last_outcome"] == "rate_limited" and view["skipped"] >= 1
        return view

    view = await eventually(limited, timeout=20)
    assert view["runs"] == 3 and "over its limit of 4 per minute" in view["last_skip_reason"]
    # The key itself is spent too: its own next request is refused.
    refused = await system.http.get(url, headers=key)
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "4"
    assert (await system.http.delete(url, headers=admin)).status_code == 200
