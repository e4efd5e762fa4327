"""The schedules API on a real receiver and nats-server (no executor): validation with 422s that
name the field, the definition the server is given, pause/resume/change/delete as JetStream
sees them, ownership, next runs checked against croniter."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import nats.js.errors
import pytest
from croniter import croniter
from nats.js import JetStreamContext

from conveyor.shared import subjects
from conveyor.shared.testing.fixtures import eventually

ADMIN_KEY = "admin-test-key"  # the receiver fixture's ADMIN_API_KEY
CALLBACK = "http://127.0.0.1:9/callback"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(**over: Any) -> dict[str, Any]:
    return {"agent": "qa", "callback_url": CALLBACK, "input": {"files": {"a.py": "x = 1\n"}}, **over}


async def definition(js: JetStreamContext, schedule_id: str) -> Any | None:
    """The message on schedules.def.<id>, or None when there is none (paused, deleted)."""
    try:
        return await js.get_last_msg(subjects.SCHEDULES, subjects.schedule(schedule_id))
    except nats.js.errors.NotFoundError:
        return None


async def definitions(js: JetStreamContext) -> int:
    """How many schedules the server holds (0 before the stream exists)."""
    try:
        info = await js.stream_info(subjects.SCHEDULES, subjects_filter="schedules.def.>")
    except nats.js.errors.NotFoundError:
        return 0
    return len(info.state.subjects or {})


async def fired(js: JetStreamContext, schedule_id: str) -> int:
    info = await js.stream_info(subjects.SCHEDULES, subjects_filter=subjects.schedule_fire(schedule_id))
    return sum((info.state.subjects or {}).values())


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_every_second_is_armed_and_the_server_fires_it(receiver: Any, js: JetStreamContext) -> None:
    r = await receiver.http.post(
        "/api/schedules", json=body(every="1s", prompt="check"), headers=auth(ADMIN_KEY)
    )
    assert r.status_code == 201, r.text
    s = r.json()
    sid = s["schedule_id"]
    assert r.headers["Location"].endswith(f"/api/schedules/{sid}")
    assert s["status"] == "active" and s["every"] == "1s" and s["pattern"] == "@every 1s"
    assert s["overlap"] == "skip" and s["runs"] == 0 and s["last_run"] is None
    assert s["input"] == {"files": {"a.py": "x = 1\n"}} and s["prompt"] == "check"
    created = parse(s["created_at"])
    assert created < parse(s["next_run_at"]) <= created + dt.timedelta(seconds=2)

    msg = await definition(js, sid)
    assert msg is not None and msg.headers is not None
    assert msg.headers[subjects.H_SCHEDULE] == "@every 1s"
    assert msg.headers[subjects.H_SCHEDULE_TARGET] == f"schedules.fire.{sid}"
    assert msg.headers[subjects.H_SCHEDULE_TTL] == "24h"
    assert subjects.MSG_ID not in msg.headers  # a republished definition must replace, not dedupe
    assert b'"agent":"qa"' in msg.data and b'"callback_url":"http://127.0.0.1:9/callback"' in msg.data

    # No executor here: the copies stay in the stream, carrying the definition's body.
    async def two() -> None:
        assert await fired(js, sid) >= 2

    await eventually(two, timeout=10)
    copy = await js.get_last_msg(subjects.SCHEDULES, subjects.schedule_fire(sid))
    assert copy.data == msg.data
    assert copy.headers is not None and copy.headers[subjects.H_SCHEDULER] == subjects.schedule(sid)
    assert parse(copy.headers[subjects.H_SCHEDULE_NEXT]) > created


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"cron": "0 9 * *"}, "cron", "5 fields"),
        ({"cron": "0 61 9 * * *"}, "cron", "minute"),
        ({"cron": "0 9 * * 7"}, "cron", "0 = Sunday"),
        ({"cron": "0 9 31 2 *"}, "cron", "never fires"),
        ({"cron": "0 9 * * mon-fry"}, "cron", "day of week"),
        ({"every": "500ms"}, "every", "whole number of seconds"),
        ({"every": "0s"}, "every", "at least 1 s"),
        ({"every": "soon"}, "every", "duration"),
        ({"every": "1m", "cron": "* * * * *"}, "every", "exactly one"),
        ({}, "every", "exactly one"),
        ({"every": "1m", "timezone": "Europe/Amsterdam"}, "timezone", "cron only"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"every": "1m", "agent": "nobody"}, "agent", "unknown agent"),
        ({"every": "1m", "callback_url": "ftp://x"}, "callback_url", "http"),
        ({"every": "1m", "end_at": "2020-01-01T00:00:00Z"}, "end_at", "past"),
        (
            {"every": "1m", "start_at": "2099-01-02T00:00:00Z", "end_at": "2099-01-01T00:00:00Z"},
            "end_at",
            "after start_at",
        ),
        ({"every": "1m", "start_at": "2099-01-01T00:00:00"}, "start_at", "timezone"),
        ({"every": "1m", "overlap": "sometimes"}, "overlap", "enum"),
        ({"every": "1m", "colour": "blue"}, "colour", "unknown"),
    ],
)
async def test_invalid_schedules_get_422_naming_the_field(
    receiver: Any, js: JetStreamContext, over: dict[str, Any], field: str, words: str
) -> None:
    r = await receiver.http.post("/api/schedules", json=body(**over), headers=auth(ADMIN_KEY))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert words in r.json()["message"]
    assert await definitions(js) == 0


async def test_minimum_interval_is_configurable(start_receiver: Any) -> None:
    async with start_receiver(schedule_min_interval_s=60) as r:
        short = await r.http.post("/api/schedules", json=body(every="30s"), headers=auth(ADMIN_KEY))
        assert short.status_code == 422 and short.json()["field"] == "every"
        assert "at least 1m" in short.json()["message"]
        tight = await r.http.post("/api/schedules", json=body(cron="*/10 * * * * *"), headers=auth(ADMIN_KEY))
        assert tight.status_code == 422 and tight.json()["field"] == "cron"
        assert "10 s apart" in tight.json()["message"]
        ok = await r.http.post("/api/schedules", json=body(every="1m"), headers=auth(ADMIN_KEY))
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("cron", "timezone", "server_form"),
    [
        ("0 9 * * 1-5", "Europe/Amsterdam", "0 0 9 * * 1-5"),
        ("30 2 * * *", "America/New_York", "0 30 2 * * *"),
        ("*/15 * * * * *", None, "*/15 * * * * *"),
        ("@weekly", "Asia/Kolkata", "0 0 0 * * 0"),
        ("0 0 12 1,15 jan-jun mon", None, "0 0 12 1,15 jan-jun mon"),
    ],
)
async def test_cron_is_accepted_and_its_next_run_matches_croniter(
    receiver: Any, js: JetStreamContext, cron: str, timezone: str | None, server_form: str
) -> None:
    extra = {"timezone": timezone} if timezone else {}
    r = await receiver.http.post("/api/schedules", json=body(cron=cron, **extra), headers=auth(ADMIN_KEY))
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["cron"] == cron and s["pattern"] == server_form and s["timezone"] == timezone
    msg = await definition(js, s["schedule_id"])
    assert msg is not None and msg.headers is not None
    assert msg.headers[subjects.H_SCHEDULE] == server_form
    assert msg.headers.get(subjects.H_SCHEDULE_TIME_ZONE) == timezone

    async def reported() -> None:
        got = await receiver.http.get(f"/api/schedules/{s['schedule_id']}", headers=auth(ADMIN_KEY))
        now = dt.datetime.now(dt.UTC)
        tz = zoneinfo.ZoneInfo(timezone or "UTC")
        expected = croniter(server_form, now.astimezone(tz), second_at_beginning=True).get_next(dt.datetime)
        # Between the answer and our "now" a firing may have passed; the next one is right then.
        assert parse(got.json()["next_run_at"]) == expected.astimezone(dt.UTC)

    await eventually(reported, timeout=5)


async def test_pause_resume_change_and_delete(receiver: Any, js: JetStreamContext) -> None:
    created = await receiver.http.post("/api/schedules", json=body(every="1h"), headers=auth(ADMIN_KEY))
    sid = created.json()["schedule_id"]
    url = f"/api/schedules/{sid}"

    paused = await receiver.http.patch(url, json={"paused": True}, headers=auth(ADMIN_KEY))
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["next_run_at"] is None
    assert await definition(js, sid) is None  # purged: the server fires nothing
    # Changing a paused schedule keeps it paused and unarmed.
    changed = await receiver.http.patch(url, json={"cron": "0 8 * * *"}, headers=auth(ADMIN_KEY))
    assert changed.json()["status"] == "paused" and changed.json()["pattern"] == "0 0 8 * * *"
    assert changed.json()["every"] is None and await definition(js, sid) is None

    resumed = await receiver.http.patch(url, json={"paused": False}, headers=auth(ADMIN_KEY))
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    msg = await definition(js, sid)
    assert msg is not None and msg.headers is not None and msg.headers[subjects.H_SCHEDULE] == "0 0 8 * * *"

    # A change of timing while active replaces the definition (one message on the subject).
    every = await receiver.http.patch(url, json={"every": "90s", "overlap": "allow"}, headers=auth(ADMIN_KEY))
    assert (
        every.json()["every"] == "1m30s"
        and every.json()["cron"] is None
        and every.json()["overlap"] == "allow"
    )
    msg = await definition(js, sid)
    assert msg is not None and msg.headers is not None and msg.headers[subjects.H_SCHEDULE] == "@every 1m30s"
    info = await js.stream_info(subjects.SCHEDULES, subjects_filter=subjects.schedule(sid))
    assert info.state.subjects == {subjects.schedule(sid): 1}

    bad = await receiver.http.patch(url, json={"every": "1m", "timezone": "UTC"}, headers=auth(ADMIN_KEY))
    assert bad.status_code == 422 and bad.json()["field"] == "timezone"
    assert (await receiver.http.patch(url, json={"nope": 1}, headers=auth(ADMIN_KEY))).status_code == 422

    gone = await receiver.http.delete(url, headers=auth(ADMIN_KEY))
    assert gone.status_code == 200 and gone.json() == {"schedule_id": sid, "runs": 0, "deleted": True}
    assert await definition(js, sid) is None
    assert (await receiver.http.get(url, headers=auth(ADMIN_KEY))).status_code == 404
    assert (await receiver.http.delete(url, headers=auth(ADMIN_KEY))).status_code == 404


async def test_schedules_belong_to_their_key(receiver: Any, new_key: Any) -> None:
    alice, bob = await new_key(receiver), await new_key(receiver)
    assert (await receiver.http.post("/api/schedules", json=body(every="1h"))).status_code == 401
    mine = (await receiver.http.post("/api/schedules", json=body(every="1h"), headers=auth(alice))).json()
    theirs = (await receiver.http.post("/api/schedules", json=body(every="2h"), headers=auth(bob))).json()

    listed = (await receiver.http.get("/api/schedules", headers=auth(alice))).json()["schedules"]
    assert [s["schedule_id"] for s in listed] == [mine["schedule_id"]]
    everything = (await receiver.http.get("/api/schedules", headers=auth(ADMIN_KEY))).json()["schedules"]
    assert {s["schedule_id"] for s in everything} == {mine["schedule_id"], theirs["schedule_id"]}

    other = f"/api/schedules/{theirs['schedule_id']}"
    assert (await receiver.http.get(other, headers=auth(alice))).status_code == 403
    assert (await receiver.http.patch(other, json={"paused": True}, headers=auth(alice))).status_code == 403
    assert (await receiver.http.delete(other, headers=auth(alice))).status_code == 403
    assert (await receiver.http.get(other, headers=auth(ADMIN_KEY))).status_code == 200
    assert (await receiver.http.get("/api/schedules/no..such", headers=auth(alice))).status_code == 404


async def test_idempotency_key_answers_the_first_schedule(receiver: Any, js: JetStreamContext) -> None:
    headers = {**auth(ADMIN_KEY), "Idempotency-Key": "nightly-qa"}
    first = await receiver.http.post("/api/schedules", json=body(cron="@daily"), headers=headers)
    again = await receiver.http.post("/api/schedules", json=body(cron="@daily"), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["schedule_id"] == first.json()["schedule_id"]
    listed = (await receiver.http.get("/api/schedules", headers=auth(ADMIN_KEY))).json()["schedules"]
    assert len(listed) == 1


async def test_created_paused_and_windowed(receiver: Any, js: JetStreamContext) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=2)
    end = start + dt.timedelta(days=1)
    r = await receiver.http.post(
        "/api/schedules",
        json=body(every="1h", start_at=start.isoformat(), end_at=end.isoformat()),
        headers=auth(ADMIN_KEY),
    )
    s = r.json()
    # The first run that will do anything is the first firing at or after start_at.
    nxt = parse(s["next_run_at"])
    assert start <= nxt < start + dt.timedelta(hours=1)
    held = await receiver.http.post(
        "/api/schedules", json=body(every="1h", paused=True), headers=auth(ADMIN_KEY)
    )
    assert held.json()["status"] == "paused" and held.json()["next_run_at"] is None
    assert await definition(js, held.json()["schedule_id"]) is None


async def test_document_lists_the_schedule_routes(receiver: Any) -> None:
    doc = (await receiver.http.get("/openapi.json")).json()
    assert set(doc["paths"]["/api/schedules"]) == {"get", "post"}
    assert set(doc["paths"]["/api/schedules/{schedule_id}"]) == {"get", "patch", "delete"}
    create = doc["components"]["schemas"]["ScheduleCreate"]
    assert set(create["required"]) == {"agent", "callback_url"}
    assert "422" in doc["paths"]["/api/schedules"]["post"]["responses"]


async def test_nats_down_answers_503(receiver: Any, nats_server: Any) -> None:
    await nats_server.stop()

    async def unavailable() -> None:
        r = await receiver.http.post("/api/schedules", json=body(every="1h"), headers=auth(ADMIN_KEY))
        assert r.status_code == 503 and "Retry-After" in r.headers

    await eventually(unavailable)
