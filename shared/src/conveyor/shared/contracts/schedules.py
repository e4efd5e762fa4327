"""Schedules: the record in KV ``schedules``, the message that defines a schedule on
``schedules.def.<id>``, and the timing rules (intervals, cron, time zones, next runs).

The receiver validates and stores schedules and publishes their definitions; nats-server fires
copies of a definition onto ``schedules.fire.<id>``; the executor turns each copy into a job.
The timing rules follow the server's own parser (nats-server ``server/scheduler.go`` and
``server/cron.go``), so what passes here is what the server accepts, and the next run we
compute is the one it will fire:

- ``every``: a Go duration in whole seconds ("90s", "15m", "1h30m"); the server wants >= 1 s
  and fires at publish time (rounded to the second) + n * interval.
- ``cron``: 6 fields with seconds first (``sec min hour day-of-month month day-of-week``), the
  usual 5 fields (second 0 is put in front, so "0 9 * * 1-5" is sent as "0 0 9 * * 1-5"), or
  one of @yearly @annually @monthly @weekly @daily @midnight @hourly. A field is ``*``, ``?``,
  a number, a range ``a-b``, any of those with ``/step``, or a comma list of them; months and
  weekdays also take names (jan, mon); weekdays are 0-6 with 0 = Sunday. When both day fields
  are restricted either one matching is enough (classic cron); when one is ``*`` both must.
- ``timezone``: an IANA zone name, for cron only (the server refuses one with @every). Without
  one, cron runs in UTC. At a daylight-saving change a wall time that does not exist is
  skipped, and one that happens twice is reported once (the server's Nats-Schedule-Next,
  recorded after each firing, is what GET shows from then on).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import DEFAULT_PROJECT, Message

Overlap = Literal["skip", "allow"]
ScheduleStatus = Literal["active", "paused", "ended"]
# What the last firing inside the window did: a job, or skipped (overlap policy, owner's limit).
FiringOutcome = Literal["run", "skipped_overlap", "rate_limited"]

UTC: Final = dt.UTC
# Fired copies expire after this long if no executor takes them (each one handled is deleted at
# once), so a stream nobody consumes cannot grow without end.
FIRE_TTL: Final = "24h"
MAX_EVERY_S: Final = 366 * 86_400
_SECOND = dt.timedelta(seconds=1)


class ScheduleError(ValueError):
    """A schedule's timing cannot be used; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- messages and records ---------------------------------------------------------------------


class ScheduleFire(Message, frozen=True, kw_only=True):
    """The body of ``schedules.def.<id>``; nats-server copies it onto ``schedules.fire.<id>`` at
    every firing, so it carries what the job needs."""

    schedule_id: str
    agent: str
    callback_url: str
    prompt: str | None = None
    input: msgspec.Raw = msgspec.Raw(b"{}")
    project_id: str | None = None
    timeout_ms: int | None = None
    project: str = DEFAULT_PROJECT  # the Conveyor project its jobs belong to


class ScheduleRecord(Message, frozen=True, kw_only=True):
    """A schedule in KV ``schedules`` under its id. The receiver writes the definition; the
    executor writes what happened (last run, next run, counts). Both compare-and-set."""

    schedule_id: str
    owner: str  # the API key id that created it
    status: ScheduleStatus
    agent: str
    callback_url: str
    pattern: str  # the Nats-Schedule header value
    created_at: dt.datetime
    updated_at: dt.datetime
    prompt: str | None = None
    input: msgspec.Raw = msgspec.Raw(b"{}")
    project_id: str | None = None
    timeout_ms: int | None = None
    every_s: int | None = None
    cron: str | None = None  # as given (5 or 6 fields or a macro)
    timezone: str | None = None
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    overlap: Overlap = "skip"
    armed_at: dt.datetime | None = None  # when the definition was last published
    next_run_at: dt.datetime | None = None
    last_job_id: str | None = None
    last_run_at: dt.datetime | None = None
    runs: int = 0
    skipped: int = 0
    last_skipped_at: dt.datetime | None = None
    last_skip_reason: str | None = None
    ended_at: dt.datetime | None = None
    project: str = DEFAULT_PROJECT  # who may see and change it; another project's answers 404
    # The owner's key limits (0 = unlimited), copied from the key when the owner writes the
    # schedule: each firing that would run is charged to them (records older than these
    # fields are not charged).
    owner_per_minute: int = 0
    owner_per_day: int = 0
    last_outcome: FiringOutcome | None = None

    def fire(self) -> ScheduleFire:
        return ScheduleFire(
            schedule_id=self.schedule_id,
            agent=self.agent,
            callback_url=self.callback_url,
            prompt=self.prompt,
            input=self.input,
            project_id=self.project_id,
            timeout_ms=self.timeout_ms,
            project=self.project,
        )


class OwnerIndex(Message, frozen=True, kw_only=True):
    """KV ``schedules`` under ``owner.<key id>``: the schedules one API key holds (id -> when it
    was added), so the cap per owner is one compare-and-set rather than a scan of the bucket.
    Schedule ids are single tokens, so no schedule's key looks like this."""

    owner: str
    schedules: dict[str, dt.datetime] = {}


def owner_index_key(owner: str) -> str:
    return f"owner.{owner}"


schedule_record_decoder = msgspec.json.Decoder(ScheduleRecord)
schedule_fire_decoder = msgspec.json.Decoder(ScheduleFire)
owner_index_decoder = msgspec.json.Decoder(OwnerIndex)


def fire_job_id(schedule_id: str, stream_seq: int, next_header: str | None) -> str:
    """The job of one firing: the same fired message (redelivered, or handled by two executors)
    always names the same job. The server's next-run header is in it too, so a SCHEDULES
    stream made anew (sequences from 1 again) cannot name an old job."""
    return ids.derived_id("job", "schedule", schedule_id, str(stream_seq), next_header or "")


def definition_headers(record: ScheduleRecord) -> dict[str, str]:
    """Headers of the message on ``schedules.def.<id>`` (no Nats-Msg-Id: republishing the
    same definition must replace it, not be dropped as a duplicate)."""
    headers = {
        subjects.H_SCHEDULE: record.pattern,
        subjects.H_SCHEDULE_TARGET: subjects.schedule_fire(record.schedule_id),
        subjects.H_SCHEDULE_TTL: FIRE_TTL,
        subjects.H_SCHEDULE_ID: record.schedule_id,
    }
    if record.timezone:
        headers[subjects.H_SCHEDULE_TIME_ZONE] = record.timezone
    return headers


def parse_next(value: str | None) -> dt.datetime | None:
    """The Nats-Schedule-Next header (RFC 3339), or None (absent, or "purge" for one-shots)."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- intervals --------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_every(text: str) -> int:
    """A Go duration ("90s", "15m", "1h30m") as whole seconds; ScheduleError(field="every")."""
    s = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ScheduleError("every", f"{text[:40]!r} is not a duration such as 90s, 15m or 1h30m")
    seconds = round(total)
    if abs(total - seconds) > 1e-6:
        raise ScheduleError("every", "must be a whole number of seconds")
    if seconds > MAX_EVERY_S:
        raise ScheduleError("every", "must be at most 366 days (8784h)")
    return seconds


def format_every(seconds: int) -> str:
    """Whole seconds as a Go duration: 5400 -> "1h30m", 90 -> "1m30s", 0 -> "0s"."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"


def next_every(armed_at: dt.datetime, every_s: int, after: dt.datetime) -> dt.datetime:
    """The first firing after ``after`` of an interval armed at ``armed_at`` (the server fires
    at armed time, rounded to the second, plus n intervals)."""
    base = _round_second(armed_at)
    step = dt.timedelta(seconds=every_s)
    if after < base + step:
        return base + step
    return base + ((after - base) // step + 1) * step


# --- cron -------------------------------------------------------------------------------------

_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_WEEKDAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _WEEKDAYS),
)
_NUMBER = re.compile(r"^\d{1,4}\Z")


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression; ``expr`` is the 6-field form the server is given."""

    expr: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_star: bool
    weekdays_star: bool

    def day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return in_month and in_week
        return in_month or in_week


def parse_cron(text: str) -> Cron:
    """Parse a cron expression as the server does; ScheduleError(field="cron") names the part."""
    raw = " ".join(text.split())
    expr = _MACROS.get(raw, raw)
    parts = expr.split(" ")
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ScheduleError(
            "cron",
            "needs 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, "
            "or one of " + ", ".join(_MACROS),
        )
    parsed = [_cron_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    return Cron(
        expr=" ".join(parts),
        seconds=tuple(sorted(parsed[0][0])),
        minutes=tuple(sorted(parsed[1][0])),
        hours=tuple(sorted(parsed[2][0])),
        days=frozenset(parsed[3][0]),
        months=frozenset(parsed[4][0]),
        weekdays=frozenset(parsed[5][0]),
        days_star=parsed[3][1],
        weekdays_star=parsed[5][1],
    )


def _cron_field(
    text: str, name: str, lo: int, hi: int, names: dict[str, int] | None
) -> tuple[set[int], bool]:
    values: set[int] = set()
    star = False
    for item in text.split(","):
        if item.count("/") > 1:
            raise ScheduleError("cron", f"{name}: too many slashes in {item!r}")
        span, slash, step_text = item.partition("/")
        bounds = span.split("-")
        if span in ("*", "?"):
            start, end, item_star = lo, hi, True
        elif len(bounds) > 2:
            raise ScheduleError("cron", f"{name}: too many hyphens in {item!r}")
        else:
            start = _cron_value(bounds[0], name, names)
            end = _cron_value(bounds[1], name, names) if len(bounds) == 2 else start
            item_star = False
        step = 1
        if slash:
            if not _NUMBER.match(step_text) or int(step_text) == 0:
                raise ScheduleError("cron", f"{name}: the step in {item!r} must be a positive number")
            step = int(step_text)
            if len(bounds) == 1:  # "5/15" means 5-max/15
                end = hi
            if step > 1:
                item_star = False
        if start < lo or end > hi:
            hint = " (0 = Sunday)" if name == "day of week" else ""
            raise ScheduleError("cron", f"{name}: {item!r} is outside {lo}-{hi}{hint}")
        if start > end:
            raise ScheduleError("cron", f"{name}: {item!r} starts after it ends")
        values.update(range(start, end + 1, step))
        star = star or item_star
    return values, star


def _cron_value(text: str, name: str, names: dict[str, int] | None) -> int:
    if names is not None and text.lower() in names:
        return names[text.lower()]
    if not _NUMBER.match(text):
        raise ScheduleError("cron", f"{name}: {text!r} is not a number" + (" or a name" if names else ""))
    return int(text)


def next_cron(cron: Cron, tz: dt.tzinfo, after: dt.datetime) -> dt.datetime | None:
    """The first firing strictly after ``after`` (rounded to the second, as the server does),
    in UTC; None when nothing matches within five years (e.g. the 31st of February)."""
    start = _round_second(after.astimezone(UTC)) + _SECOND
    local = start.astimezone(tz)
    day = local.date()
    last_year = local.year + 5
    while day.year <= last_year:
        if day.month not in cron.months:
            day = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            continue
        if cron.day_matches(day):
            first = day == local.date()
            for h in cron.hours:
                if first and h < local.hour:
                    continue
                for mi in cron.minutes:
                    if first and h == local.hour and mi < local.minute:
                        continue
                    for s in cron.seconds:
                        wall = dt.datetime(day.year, day.month, day.day, h, mi, s)
                        at = wall.replace(tzinfo=tz).astimezone(UTC)
                        if at.astimezone(tz).replace(tzinfo=None) != wall:
                            continue  # skipped by a daylight-saving change
                        if at >= start:
                            return at
        day += dt.timedelta(days=1)
    return None


def cron_min_gap_s(cron: Cron, tz: dt.tzinfo, after: dt.datetime, runs: int = 64) -> float | None:
    """The shortest gap between the next ``runs`` firings (None: fewer than two within reach)."""
    gaps: list[float] = []
    prev = next_cron(cron, tz, after)
    for _ in range(runs):
        if prev is None:
            break
        nxt = next_cron(cron, tz, prev)
        if nxt is None:
            break
        gaps.append((nxt - prev).total_seconds())
        prev = nxt
    return min(gaps) if gaps else None


def zone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone; ScheduleError(field="timezone") for anything else."""
    try:
        if not name or name != name.strip() or name.lower() == "local":
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            "timezone", f"{name[:64]!r} is not an IANA time zone such as Europe/Amsterdam"
        ) from None


# --- timing as a whole ------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How a schedule fires: an interval or a cron expression (in a zone)."""

    pattern: str
    every_s: int | None = None
    cron: Cron | None = None
    tz: dt.tzinfo = UTC

    def next_after(self, after: dt.datetime, armed_at: dt.datetime) -> dt.datetime | None:
        if self.every_s is not None:
            return next_every(armed_at, self.every_s, after)
        assert self.cron is not None
        return next_cron(self.cron, self.tz, after)


def timing(
    *,
    every: str | None,
    cron: str | None,
    timezone: str | None,
    min_interval_s: float,
    now: dt.datetime,
) -> Timing:
    """Validate a schedule's timing as given in a request; ScheduleError names the field."""
    if (every is None) == (cron is None):
        raise ScheduleError("every", "give exactly one of every (an interval) or cron")
    floor = max(1.0, min_interval_s)  # the server refuses intervals under a second
    if every is not None:
        if timezone is not None:
            raise ScheduleError("timezone", "applies to cron only; an interval runs in absolute time")
        seconds = parse_every(every)
        if seconds < floor:
            raise ScheduleError("every", f"must be at least {_seconds(floor)}")
        return Timing(pattern=f"@every {format_every(seconds)}", every_s=seconds)
    assert cron is not None
    parsed = parse_cron(cron)
    tz = zone(timezone) if timezone is not None else UTC
    if next_cron(parsed, tz, now) is None:
        raise ScheduleError("cron", "never fires (no date matches within five years)")
    gap = cron_min_gap_s(parsed, tz, now)
    if gap is not None and gap < floor:
        raise ScheduleError("cron", f"fires {_seconds(gap)} apart; the minimum interval is {_seconds(floor)}")
    return Timing(pattern=parsed.expr, cron=parsed, tz=tz)


def record_timing(record: ScheduleRecord) -> Timing:
    """The timing of a stored (already validated) schedule."""
    if record.every_s is not None:
        return Timing(pattern=record.pattern, every_s=record.every_s)
    return Timing(
        pattern=record.pattern,
        cron=parse_cron(record.pattern),
        tz=zone(record.timezone) if record.timezone else UTC,
    )


def next_run(record: ScheduleRecord, now: dt.datetime) -> dt.datetime | None:
    """The next firing that will run a job: none while paused or ended; not before start_at;
    none past end_at. The server's own Nats-Schedule-Next (recorded at each firing) wins over
    our computation while it is still ahead."""
    if record.status != "active":
        return None
    t = record_timing(record)
    armed = record.armed_at or record.updated_at
    nxt = record.next_run_at if record.next_run_at is not None and record.next_run_at > now else None
    if nxt is None:
        nxt = t.next_after(now, armed)
    if nxt is not None and record.start_at is not None and nxt < record.start_at:
        nxt = t.next_after(record.start_at - _SECOND, armed)
        while nxt is not None and nxt < record.start_at:
            nxt = t.next_after(nxt, armed)
    if nxt is None or (record.end_at is not None and nxt > record.end_at):
        return None
    return nxt


def window(record: ScheduleRecord, at: dt.datetime) -> Literal["before", "inside", "after"]:
    """Where ``at`` falls in the schedule's [start_at, end_at] window."""
    if record.start_at is not None and at < record.start_at:
        return "before"
    if record.end_at is not None and at > record.end_at:
        return "after"
    return "inside"


def _round_second(t: dt.datetime) -> dt.datetime:
    """Go's Round(time.Second): half a second and more rounds up."""
    base = t.replace(microsecond=0)
    return base + _SECOND if t.microsecond >= 500_000 else base


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 60 else format_every(int(value))
