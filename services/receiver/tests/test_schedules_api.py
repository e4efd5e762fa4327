"""The schedules API on a real receiver and nats-server (no executor): validation with 422s that
name the field, the definition the server is given, pause/resume/change/delete as JetStream
sees them, ownership, next runs checked against croniter."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import pytest
from croniter import croniter
from nats.js import JetStreamContext

from conveyor.receiver.config import Settings
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import encoder
from conveyor.shared.contracts.schedules import (
    OwnerIndex,
    owner_index_decoder,
    owner_index_key,
    schedule_record_decoder,
)
from conveyor.shared.testing.fixtures import eventually

ADMIN_KEY = "admin-test-key"  # the receiver fixture's ADMIN_API_KEY
CALLBACK = "http://127.0.0.1:9/callback"


@pytest.fixture
async def receiver(start_receiver: Any) -> AsyncIterator[Any]:
    """These tests go down to the server's own floor of 1 s (the default minimum is a minute)."""
    async with start_receiver(schedule_min_interval_s=1) as r:
        yield r


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(**over: Any) -> dict[str, Any]:
    return {"agent": "qa", "callback_url": CALLBACK, "input": {"files": {"a.py": "x = 1\n"}}, **over}


async def create(r: Any, key: str, headers: dict[str, str] | None = None, **over: Any) -> Any:
    """POST /api/schedules as ``key`` (hourly unless ``over`` says otherwise)."""
    return await r.http.post(
        "/api/schedules", json=body(**{"every": "1h", **over}), headers={**auth(key), **(headers or {})}
    )


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


async def test_minimum_interval_is_a_minute_unless_configured(start_receiver: Any) -> None:
    async with start_receiver() as r:  # the default
        short = await r.http.post("/api/schedules", json=body(every="59s"), headers=auth(ADMIN_KEY))
        assert short.status_code == 422 and short.json()["field"] == "every"
        assert "at least 1m" in short.json()["message"]
        tight = await r.http.post("/api/schedules", json=body(cron="*/10 * * * * *"), headers=auth(ADMIN_KEY))
        assert tight.status_code == 422 and tight.json()["field"] == "cron"
        assert "10 s apart" in tight.json()["message"]
        ok = await r.http.post("/api/schedules", json=body(every="1m"), headers=auth(ADMIN_KEY))
        assert ok.status_code == 201, ok.text
        changed = await r.http.patch(
            f"/api/schedules/{ok.json()['schedule_id']}", json={"every": "1s"}, headers=auth(ADMIN_KEY)
        )
        assert changed.status_code == 422 and changed.json()["field"] == "every"
    async with start_receiver(schedule_min_interval_s=10) as r:
        assert (
            await r.http.post("/api/schedules", json=body(every="9s"), headers=auth(ADMIN_KEY))
        ).status_code == 422
        ok = await r.http.post("/api/schedules", json=body(cron="*/10 * * * * *"), headers=auth(ADMIN_KEY))
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


async def test_schedules_belong_to_their_project(receiver: Any, make_project: Any, project_key: Any) -> None:
    await make_project(receiver, "alpha")
    await make_project(receiver, "beta")
    alice, bob = await project_key(receiver, "alpha"), await project_key(receiver, "beta")
    assert (await receiver.http.post("/api/schedules", json=body(every="1h"))).status_code == 401
    mine = (await receiver.http.post("/api/schedules", json=body(every="1h"), headers=alice)).json()
    theirs = (await receiver.http.post("/api/schedules", json=body(every="2h"), headers=bob)).json()
    assert (mine["project"], theirs["project"]) == ("alpha", "beta")

    listed = (await receiver.http.get("/api/schedules", headers=alice)).json()["schedules"]
    assert [s["schedule_id"] for s in listed] == [mine["schedule_id"]]
    everything = (await receiver.http.get("/api/schedules", headers=auth(ADMIN_KEY))).json()["schedules"]
    assert {s["schedule_id"] for s in everything} == {mine["schedule_id"], theirs["schedule_id"]}

    # Another project's schedule is a missing one, for every verb.
    other = f"/api/schedules/{theirs['schedule_id']}"
    missing = "/api/schedules/sch_0000"
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"paused": True}}), ("DELETE", {})):
        got = await receiver.http.request(method, other, headers=alice, **kwargs)
        gone = await receiver.http.request(method, missing, headers=alice, **kwargs)
        assert got.status_code == gone.status_code == 404, method
        assert got.json()["error"] == gone.json()["error"] == "schedule_not_found"
    assert (await receiver.http.get(other, headers=auth(ADMIN_KEY))).json()["status"] == "active"
    # A read-only key of the project reads it and may not change it.
    reader = await project_key(receiver, "alpha", read_only=True)
    mine_url = f"/api/schedules/{mine['schedule_id']}"
    assert (await receiver.http.get(mine_url, headers=reader)).status_code == 200
    assert (await receiver.http.delete(mine_url, headers=reader)).status_code == 403


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


# --- the cap per owner ----------------------------------------------------------------------------

LONG_AGO = dt.timedelta(minutes=5)  # longer than any create takes (the receiver allows 60 s)


async def test_each_key_holds_at_most_the_cap(
    start_receiver: Any, new_key: Any, js: JetStreamContext
) -> None:
    async with start_receiver(schedule_max_per_owner=3) as r:
        alice, bob = await new_key(r), await new_key(r)
        made = [
            await create(r, alice),
            await create(r, alice, paused=True),
            await create(r, alice, every=None, cron="@daily"),
        ]
        assert [m.status_code for m in made] == [201, 201, 201]
        over = await create(r, alice)
        assert over.status_code == 409, over.text
        assert over.json()["error"] == "schedule_limit_reached" and over.json()["limit"] == 3
        assert "SCHEDULE_MAX_PER_OWNER" in over.json()["message"]
        assert await definitions(js) == 2  # the refused one was never armed
        # Paused ones hold their place too; another key has its own places.
        assert (await create(r, bob)).status_code == 201
        # A repeat of a create already made is answered, not refused.
        idem = {"Idempotency-Key": "k1"}
        assert (await create(r, bob, idem)).status_code == 201
        assert (await create(r, bob, every="2h")).status_code == 201
        assert (await create(r, bob, idem)).status_code == 200
        # Deleting one (by the owner or an admin) frees its place.
        sid = made[1].json()["schedule_id"]
        assert (await r.http.delete(f"/api/schedules/{sid}", headers=auth(ADMIN_KEY))).status_code == 200
        again = await create(r, alice)
        assert again.status_code == 201, again.text
        assert (await create(r, alice)).status_code == 409
        # Both keys are the default project's: its list holds both; the cap is each key's own.
        listed = (await r.http.get("/api/schedules", headers=auth(alice))).json()["schedules"]
        mine = [s for s in listed if s["owner"] == made[0].json()["owner"]]
        assert len(mine) == 3 and len(listed) == 6


async def test_concurrent_creates_cannot_pass_the_cap_together(start_receiver: Any, new_key: Any) -> None:
    async with start_receiver(schedule_max_per_owner=3) as r:
        key = await new_key(r, per_minute=0, per_day=0)
        answers = await asyncio.gather(*(create(r, key) for _ in range(12)))
        codes = sorted(a.status_code for a in answers)
        assert codes.count(201) == 3 and set(codes) <= {201, 409, 503}, [a.text for a in answers]
        listed = (await r.http.get("/api/schedules", headers=auth(key))).json()["schedules"]
        assert len(listed) == 3


async def test_schedules_made_before_the_index_count(
    start_receiver: Any, new_key: Any, js: JetStreamContext
) -> None:
    async with start_receiver(schedule_max_per_owner=3) as r:
        key = await new_key(r)
        first = [(await create(r, key)).json() for _ in range(2)]
        kv = await js.key_value(subjects.KV_SCHEDULES)
        owner = schedule_record_decoder.decode((await kv.get(first[0]["schedule_id"])).value).owner
        await kv.purge(owner_index_key(owner))  # as a release without owner indexes left them
        assert (await create(r, key)).status_code == 201
        assert (await create(r, key)).status_code == 409
        index = owner_index_decoder.decode((await kv.get(owner_index_key(owner))).value)
        assert {s["schedule_id"] for s in first} < set(index.schedules) and len(index.schedules) == 3


async def test_a_place_whose_record_never_came_is_given_back(
    start_receiver: Any, new_key: Any, js: JetStreamContext
) -> None:
    """A create that died between taking its place and writing its record: the place is given
    back once it is older than a create takes, never while a create may still be under way."""
    async with start_receiver(schedule_max_per_owner=2) as r:
        key = await new_key(r)
        made = (await create(r, key)).json()
        kv = await js.key_value(subjects.KV_SCHEDULES)
        owner = made["owner"]
        entry = await kv.get(owner_index_key(owner))
        index = owner_index_decoder.decode(entry.value)
        now = dt.datetime.now(dt.UTC)
        under_way = OwnerIndex(owner=owner, schedules={**index.schedules, "sch_under_way": now})
        revision = await kv.update(owner_index_key(owner), encoder.encode(under_way), last=entry.revision)
        assert (await create(r, key)).status_code == 409
        lost = OwnerIndex(owner=owner, schedules={**index.schedules, "sch_lost": now - LONG_AGO})
        await kv.update(owner_index_key(owner), encoder.encode(lost), last=revision)
        ok = await create(r, key)
        assert ok.status_code == 201, ok.text
        index = owner_index_decoder.decode((await kv.get(owner_index_key(owner))).value)
        assert set(index.schedules) == {made["schedule_id"], ok.json()["schedule_id"]}


async def test_the_record_carries_the_owners_limits(
    receiver: Any, new_key: Any, js: JetStreamContext
) -> None:
    """What the executor charges each firing to: the creating key's limits, kept when an admin
    changes the schedule."""
    key = await new_key(receiver, per_minute=7, per_day=70)
    made = (await create(receiver, key)).json()
    assert made["last_outcome"] is None
    kv = await js.key_value(subjects.KV_SCHEDULES)

    async def limits() -> tuple[int, int]:
        rec = schedule_record_decoder.decode((await kv.get(made["schedule_id"])).value)
        return rec.owner_per_minute, rec.owner_per_day

    assert await limits() == (7, 70)
    url = f"/api/schedules/{made['schedule_id']}"
    assert (await receiver.http.patch(url, json={"every": "2h"}, headers=auth(ADMIN_KEY))).status_code == 200
    assert await limits() == (7, 70)
    admins = (await create(receiver, ADMIN_KEY)).json()
    rec = schedule_record_decoder.decode((await kv.get(admins["schedule_id"])).value)
    assert (rec.owner_per_minute, rec.owner_per_day) == (0, 0)  # the admin key is not limited


@pytest.mark.parametrize("cap", [0, -1, 10_001])
def test_the_cap_is_a_number_one_value_can_hold(cap: int) -> None:
    with pytest.raises(ValueError, match="SCHEDULE_MAX_PER_OWNER"):
        Settings(schedule_max_per_owner=cap)
