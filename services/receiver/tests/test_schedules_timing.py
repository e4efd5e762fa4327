"""The timing rules of conveyor.shared.contracts.schedules, which the schedules API validates with:
next runs against croniter across time zones and daylight-saving changes, and acceptance
against the real nats-server (what we accept, the server accepts)."""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo

import nats.js.errors
import pytest
from croniter import croniter
from nats.js import JetStreamContext

from conveyor.shared.bus.streams import ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.schedules import (
    ScheduleError,
    format_every,
    next_cron,
    next_every,
    parse_cron,
    parse_every,
    timing,
    zone,
)

UTC = dt.UTC
EXPRESSIONS = [
    "0 9 * * 1-5",
    "*/15 * * * *",
    "30 4 1,15 * 5",  # both day fields restricted: either matches
    "0 0 12 * * mon-fri",
    "0 30 2 * * *",  # a wall time some zones skip or repeat once a year
    "5/10 * * * * *",
    "0 0 0 1 jan-mar *",
    "15,45 */2 * * *",
    "0 0 * * 0",
    "@daily",
    "@hourly",
    "0 0 0 29 2 *",  # leap days only
]
ZONES = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_next_run_matches_croniter(expr: str) -> None:
    cron = parse_cron(expr)
    rnd = random.Random(expr)
    for name in ZONES:
        tz = zoneinfo.ZoneInfo(name)
        for _ in range(25):
            after = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(
                seconds=rnd.randrange(3 * 365 * 86_400)
            )
            expected = croniter(cron.expr, after.astimezone(tz), second_at_beginning=True).get_next(
                dt.datetime
            )
            assert next_cron(cron, tz, after) == expected.astimezone(UTC), (expr, name, after)


def test_five_fields_gain_a_seconds_field_and_macros_expand() -> None:
    assert parse_cron("0 9 * * 1-5").expr == "0 0 9 * * 1-5"
    assert parse_cron("  */5   * * * * * ").expr == "*/5 * * * * *"
    assert parse_cron("@weekly").expr == "0 0 0 * * 0"
    assert parse_cron("0 0 9 * * MON-fri").weekdays == frozenset(range(1, 6))


def test_intervals_are_go_durations_in_whole_seconds() -> None:
    assert [parse_every(t) for t in ("1s", "15m", "1h30m", "90s", "1.5m", "2h0m0s")] == [
        1,
        900,
        5400,
        90,
        90,
        7200,
    ]
    assert [format_every(s) for s in (1, 90, 900, 5400, 86_400)] == ["1s", "1m30s", "15m", "1h30m", "24h"]
    for bad in ("", "1", "1d", "soon", "1.5s", "-1s", "1 s"):
        with pytest.raises(ScheduleError) as err:
            parse_every(bad)
        assert err.value.field == "every"


def test_an_interval_fires_on_its_armed_second_plus_multiples() -> None:
    armed = dt.datetime(2026, 5, 1, 12, 0, 0, 600_000, tzinfo=UTC)  # rounds up, as the server does
    first = dt.datetime(2026, 5, 1, 12, 0, 1, tzinfo=UTC)
    assert next_every(armed, 60, armed) == first + dt.timedelta(seconds=60)
    assert next_every(armed, 60, first + dt.timedelta(seconds=60)) == first + dt.timedelta(seconds=120)
    assert next_every(armed, 60, first + dt.timedelta(seconds=61)) == first + dt.timedelta(seconds=120)


def test_timing_rules_name_the_field() -> None:
    now = dt.datetime.now(UTC)

    def field(**kw: str | None) -> str:
        args: dict[str, str | None] = {"every": None, "cron": None, "timezone": None, **kw}
        with pytest.raises(ScheduleError) as err:
            timing(**args, min_interval_s=1, now=now)  # type: ignore[arg-type]
        return err.value.field

    assert field() == "every"
    assert field(every="1m", cron="* * * * *") == "every"
    assert field(every="1m", timezone="UTC") == "timezone"
    assert field(cron="* * * * *", timezone="Local") == "timezone"
    assert field(cron="* * * * *", timezone="../../etc/passwd") == "timezone"
    assert field(cron="0 0 9 31 2 *") == "cron"
    assert timing(every="1s", cron=None, timezone=None, min_interval_s=0, now=now).pattern == "@every 1s"
    assert zone("Europe/Amsterdam").key == "Europe/Amsterdam"


# Expressions and whether nats-server takes them as they are (as "Nats-Schedule", with a target).
SERVER_CASES = [
    *((e, len(e.split()) != 5) for e in EXPRESSIONS),  # 5 fields: the server wants 6
    ("@every 1s", True),
    ("@every 1h30m", True),
    ("@monthly", True),
    ("@yearly", True),
    ("0 0 9 * * 1-5", True),
    ("? * * * * ?", True),
    ("0 0 9 * * 7", False),
    ("0 0 9 31 2 *", False),
    ("0 60 9 * * *", False),
    ("0 0 24 * * *", False),
    ("0 0 9 0 * *", False),
    ("0 0 9 * 13 *", False),
    ("0 0 9 * * mon-fry", False),
    ("0 0 9 * * 5-1", False),
    ("0 0 9 */0 * *", False),
    ("0 0 0 9 * * *", False),
    ("@every 500ms", False),
    ("@every 0s", False),
    ("@Daily", False),
    ("whenever", False),
]


async def test_what_we_accept_the_server_accepts(js: JetStreamContext) -> None:
    await ensure_streams(js, [subjects.SCHEDULES])
    now = dt.datetime.now(UTC)

    async def server_takes(pattern: str) -> bool:
        target = subjects.schedule_fire("case")
        try:
            await js.publish(
                subjects.schedule("case"),
                b"{}",
                stream=subjects.SCHEDULES,
                headers={subjects.H_SCHEDULE: pattern, subjects.H_SCHEDULE_TARGET: target},
            )
        except nats.js.errors.BadRequestError:
            return False
        await js.purge_stream(subjects.SCHEDULES, subject=subjects.schedule("case"))
        return True

    for pattern, server_ok in SERVER_CASES:
        assert await server_takes(pattern) is server_ok, pattern
        if pattern.startswith("@every "):
            assert _accepts(every=pattern.removeprefix("@every "), now=now) is server_ok, pattern
        elif len(pattern.split()) == 5:
            # Ours to widen: the 6-field form we send is what the server must take.
            assert _accepts(cron=pattern, now=now) and await server_takes(parse_cron(pattern).expr)
        else:
            assert _accepts(cron=pattern, now=now) is server_ok, pattern


def _accepts(*, now: dt.datetime, every: str | None = None, cron: str | None = None) -> bool:
    try:
        timing(every=every, cron=cron, timezone=None, min_interval_s=1, now=now)
    except ScheduleError:
        return False
    return True
