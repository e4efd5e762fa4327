"""Schedules API: recurring agent runs on JetStream message schedules.

Routes (an API key, with the jobs API's limits; a schedule belongs to the key that created it,
admin keys see and change every schedule):
  POST   /api/schedules                 201 the schedule (a repeated Idempotency-Key: 200, the first)
  GET    /api/schedules                 the caller's schedules (admin keys: all)
  GET    /api/schedules/{schedule_id}   one schedule with its last and next runs
  PATCH  /api/schedules/{schedule_id}   pause ({"paused": true}), resume ({"paused": false}), change
  DELETE /api/schedules/{schedule_id}   stop and forget it

The record lives in KV ``schedules``. An API key holds at most SCHEDULE_MAX_PER_OWNER schedules:
``owner.<key id>`` in the same bucket lists them, and a create first adds its id there
(compare-and-set), a delete removes it last. An active schedule also has one message on
``schedules.def.<id>`` carrying Nats-Schedule and Nats-Schedule-Target ``schedules.fire.<id>``:
nats-server fires copies of it, and the executor turns each copy into a job. Pause writes the
record, then purges the def subject; resume writes the record, then publishes the definition
again; delete removes the record, then purges. The executor reads the record at every firing,
so a firing that slips through between the two steps is dropped, never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import replace

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers.jobs import valid_url
from conveyor.receiver.openapi import Operation, Param, link
from conveyor.receiver.schemas import ProjectRef
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import NATS_DOWN, STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import JobStatus, encoder, job_record_decoder, utcnow
from conveyor.shared.contracts.schedules import (
    FiringOutcome,
    Overlap,
    OwnerIndex,
    ScheduleError,
    ScheduleRecord,
    ScheduleStatus,
    Timing,
    definition_headers,
    format_every,
    next_run,
    owner_index_decoder,
    owner_index_key,
    record_timing,
    schedule_record_decoder,
    timing,
)
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.runtime.http import HTTPError

log = logging.getLogger(__name__)

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}\Z")
_WRITE_TRIES = 5
# An id in an owner's index without its record is a create still under way, or one that died
# between the two writes; after this long it is the latter and its place is given back.
_RESERVATION_GRACE = dt.timedelta(seconds=60)
# Server error codes for a definition it refuses (nats-server errors.json).
_BAD_PATTERN, _BAD_TIME_ZONE = 10189, 10223

_EVERY_DOC = 'An interval as a Go duration in whole seconds: "90s", "15m", "1h30m".'
_CRON_DOC = (
    'Cron: 5 fields ("0 9 * * 1-5"), 6 with seconds first ("*/30 * * * * *"), or @hourly, @daily, '
    "@weekly, @monthly, @yearly. Weekdays 0-6, 0 = Sunday; names allowed (mon, jan)."
)
_TZ_DOC = "IANA time zone of a cron expression (default UTC); not allowed with every."
_OVERLAP_DOC = "skip: no new run while the previous one is queued or running; allow: run anyway."

Agent = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        description="An agent the project may run: a configured one, a built-in pipeline or one of "
        "its definitions.",
    ),
]
Url = Annotated[str, Meta(min_length=1, max_length=2048, description="Where each run's result is POSTed.")]
Prompt = Annotated[str, Meta(min_length=1, max_length=5000)]
Every = Annotated[str, Meta(min_length=1, max_length=64, description=_EVERY_DOC)]
CronText = Annotated[str, Meta(min_length=1, max_length=200, description=_CRON_DOC)]
Zone = Annotated[str, Meta(min_length=1, max_length=64, description=_TZ_DOC)]
When = Annotated[dt.datetime, Meta(tz=True)]
ProjectId = Annotated[str, Meta(max_length=200)]
TimeoutMs = Annotated[int, Meta(ge=1000, le=86_400_000)]
OverlapField = Annotated[Overlap, Meta(description=_OVERLAP_DOC)]


# --- bodies ---------------------------------------------------------------------------------------


class ScheduleCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/schedules: what to run (as POST /api/jobs), and when (every or cron)."""

    agent: Agent
    callback_url: Url
    input: dict[str, Any] = {}
    prompt: Prompt | None = None
    every: Every | None = None
    cron: CronText | None = None
    timezone: Zone | None = None
    start_at: When | None = None
    end_at: When | None = None
    overlap: OverlapField = "skip"
    paused: bool = False
    project_id: ProjectId | None = None
    timeout_ms: TimeoutMs | None = None
    project: ProjectRef | None = None
    """The Conveyor project the schedule and its jobs belong to (admin and organisation keys; a
    project key's own by default). Fixed when the schedule is made."""


class SchedulePatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PATCH /api/schedules/{id}: only the fields given change; null clears an optional one.
    Giving every drops cron (and its timezone), giving cron drops every."""

    paused: bool | UnsetType = UNSET
    agent: Agent | UnsetType = UNSET
    callback_url: Url | UnsetType = UNSET
    input: dict[str, Any] | UnsetType = UNSET
    prompt: Prompt | UnsetType | None = UNSET
    every: Every | UnsetType | None = UNSET
    cron: CronText | UnsetType | None = UNSET
    timezone: Zone | UnsetType | None = UNSET
    start_at: When | UnsetType | None = UNSET
    end_at: When | UnsetType | None = UNSET
    overlap: OverlapField | UnsetType = UNSET
    project_id: ProjectId | UnsetType | None = UNSET
    timeout_ms: TimeoutMs | UnsetType | None = UNSET


class LastRun(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    at: dt.datetime  # when the server fired it
    status: JobStatus | None  # the job's status now (null once its record has expired)
    status_url: str


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as the API shows it. ``pattern`` is what nats-server was given; ``status`` is
    ended once end_at has passed."""

    schedule_id: str
    status: ScheduleStatus
    agent: str
    callback_url: str
    input: dict[str, Any]
    prompt: str | None
    every: str | None
    cron: str | None
    timezone: str | None
    pattern: str
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    overlap: Overlap
    project_id: str | None
    timeout_ms: int | None
    next_run_at: dt.datetime | None
    last_run: LastRun | None
    runs: int  # jobs created so far
    skipped: int  # firings skipped: the overlap policy, or the owner's key over its rate limit
    last_skipped_at: dt.datetime | None
    last_skip_reason: str | None
    last_outcome: FiringOutcome | None  # what the last firing did: run, skipped_overlap, rate_limited
    owner: str
    created_at: dt.datetime
    updated_at: dt.datetime
    status_url: str
    project: str


class ScheduleList(msgspec.Struct, frozen=True, kw_only=True):
    schedules: list[ScheduleView]


class ScheduleDeleted(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str
    runs: int  # jobs the schedule made, all told: no firing takes a run after this answer
    deleted: bool = True


_create_decoder = msgspec.json.Decoder(ScheduleCreate)
_patch_decoder = msgspec.json.Decoder(SchedulePatch)


# --- storage --------------------------------------------------------------------------------------


async def _store(st: Receiver) -> tuple[bus.Bus, bus.Kv]:
    """JetStream and the schedules bucket; the stream and bucket are declared on first use."""
    js = st.require_nats()
    kv = st.kv.get(subjects.KV_SCHEDULES)
    if kv is None:
        with st.nats_errors():
            kv = (
                await js.declare(
                    [subjects.SCHEDULES], [subjects.KV_SCHEDULES], replicas=st.settings.nats_replicas
                )
            )[subjects.KV_SCHEDULES]
        st.kv[subjects.KV_SCHEDULES] = kv
    return js, kv


async def _load(st: Receiver, kv: bus.Kv, schedule_id: str) -> tuple[ScheduleRecord, int] | None:
    with st.nats_errors():
        try:
            entry = await kv.get(schedule_id)
        except bus.NotFound:
            return None
    if not entry.value:
        return None
    return schedule_record_decoder.decode(entry.value), entry.revision or 0


async def _own(
    st: Receiver, kv: bus.Kv, principal: Principal, schedule_id: str, *, write: bool = False
) -> tuple[ScheduleRecord, int]:
    """The schedule when the caller's scope sees its project; another project's answers as a
    missing one. ``write``: a read-only key gets 403."""
    found = await _load(st, kv, schedule_id) if subjects.is_token(schedule_id) else None
    if found is None or not st.sees(principal, found[0].project):
        raise HTTPError(404, "schedule_not_found", f"no schedule {schedule_id[:100]!r}")
    if write:
        st.writable(principal, found[0].project)
    return found


async def _arm(st: Receiver, js: bus.Bus, record: ScheduleRecord) -> None:
    """Publish the definition; the server replaces any earlier one on the same subject."""
    try:
        await js.publish(
            subjects.schedule(record.schedule_id),
            encoder.encode(record.fire()),
            timeout_s=st.settings.publish_timeout_s,
            stream=subjects.SCHEDULES,
            headers=definition_headers(record),
            trace=False,
        )
    except NATS_DOWN as exc:
        raise st.unavailable(f"NATS JetStream did not acknowledge ({type(exc).__name__})") from None
    except bus.BusError as exc:
        if exc.err_code == _BAD_TIME_ZONE:
            raise _invalid("timezone", f"refused by the server: {exc.description}") from None
        if exc.err_code == _BAD_PATTERN:
            raise _invalid(
                "cron" if record.cron else "every", f"refused by the server: {exc.description}"
            ) from None
        raise st.unavailable(f"NATS JetStream refused the schedule ({exc.description})") from None


async def _disarm(st: Receiver, js: bus.Bus, schedule_id: str) -> None:
    """Purge the def subject: the server forgets the schedule; firings already made stay."""
    with st.nats_errors():
        await js.purge(subjects.SCHEDULES, subject=subjects.schedule(schedule_id))


# --- the cap per owner ----------------------------------------------------------------------------


async def _index(st: Receiver, kv: bus.Kv, owner: str) -> tuple[OwnerIndex, int] | None:
    """The owner's index and its revision; None when there is none yet."""
    with st.nats_errors():
        try:
            entry = await kv.get(owner_index_key(owner))
        except bus.NotFound:
            return None
    if not entry.value:
        return None
    return owner_index_decoder.decode(entry.value), entry.revision or 0


async def _held_before_index(st: Receiver, kv: bus.Kv, owner: str) -> dict[str, dt.datetime]:
    """The owner's schedules found by a scan: once per key, for schedules made before indexes."""
    with st.nats_errors():
        try:
            keys = await kv.keys()
        except bus.NotFound:
            keys = []
    found = await asyncio.gather(*(_load(st, kv, k) for k in keys if subjects.is_token(k)))
    return {r.schedule_id: r.created_at for r, _ in filter(None, found) if r.owner == owner}


async def _write_index(st: Receiver, kv: bus.Kv, index: OwnerIndex, revision: int) -> bool:
    key, data = owner_index_key(index.owner), encoder.encode(index)
    with st.nats_errors():
        try:
            if revision:
                await kv.update(key, data, last=revision)
            else:
                await kv.create(key, data)
        except bus.Conflict:
            return False  # another request of this owner wrote first: decide again
    return True


async def _reserve(st: Receiver, kv: bus.Kv, owner: str, schedule_id: str, now: dt.datetime) -> None:
    """Give ``schedule_id`` a place among the owner's schedules (before its record is written, so
    concurrent creates cannot pass the cap together); 409 when every place is taken."""
    cap = st.settings.schedule_max_per_owner
    for _ in range(_WRITE_TRIES):
        found = await _index(st, kv, owner)
        if found is None:
            held, revision = await _held_before_index(st, kv, owner), 0
        else:
            held, revision = dict(found[0].schedules), found[1]
        if schedule_id in held:
            return  # a repeated Idempotency-Key: its place is taken already
        if len(held) >= cap:
            held = await _without_lost(st, kv, held, now)
            if len(held) >= cap:
                raise HTTPError(
                    409,
                    "schedule_limit_reached",
                    f"this API key holds {len(held)} schedules, the most SCHEDULE_MAX_PER_OWNER "
                    f"allows ({cap}); delete one to make another",
                    limit=cap,
                )
        held[schedule_id] = now
        if await _write_index(st, kv, OwnerIndex(owner=owner, schedules=held), revision):
            return
    raise st.unavailable("this API key's schedules kept changing; retry")


async def _without_lost(
    st: Receiver, kv: bus.Kv, held: dict[str, dt.datetime], now: dt.datetime
) -> dict[str, dt.datetime]:
    """``held`` without the places whose record never came (a create that died between its two
    writes) or went without giving its place back (a delete that died before its last step)."""
    old = [i for i, at in held.items() if now - at > _RESERVATION_GRACE]
    found = await asyncio.gather(*(_load(st, kv, i) for i in old))
    lost = {i for i, f in zip(old, found, strict=True) if f is None}
    return {i: at for i, at in held.items() if i not in lost}


async def _release(st: Receiver, kv: bus.Kv, owner: str, schedule_id: str) -> None:
    """Give the place back. Best effort: a place not given back is found when the owner reaches
    the cap (see _without_lost)."""
    with contextlib.suppress(Exception):
        for _ in range(_WRITE_TRIES):
            found = await _index(st, kv, owner)
            if found is None or schedule_id not in found[0].schedules:
                return
            index, revision = found
            held = {i: at for i, at in index.schedules.items() if i != schedule_id}
            if await _write_index(st, kv, OwnerIndex(owner=owner, schedules=held), revision):
                return


# --- validation -----------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid_field", f"{field}: {message}", field=field)


def _check_job(st: Receiver, project: Project, agent: str, callback_url: str, prompt: str | None) -> None:
    # What POST /api/jobs may run (a definition's firing runs its latest version).
    st.require_runnable(project, agent)
    if not valid_url(callback_url):
        raise _invalid("callback_url", "must be an absolute http(s) URL")
    if prompt is not None and len(prompt) > st.settings.max_prompt_chars:
        raise _invalid("prompt", f"longer than {st.settings.max_prompt_chars} characters")


def _check_timing(
    st: Receiver, every: str | None, cron: str | None, timezone: str | None, now: dt.datetime
) -> Timing:
    try:
        return timing(
            every=every,
            cron=cron,
            timezone=timezone,
            min_interval_s=st.settings.schedule_min_interval_s,
            now=now,
        )
    except ScheduleError as exc:
        raise _invalid(exc.field, exc.message) from None


def _check_window(start_at: dt.datetime | None, end_at: dt.datetime | None, now: dt.datetime) -> None:
    if end_at is not None and end_at <= now:
        raise _invalid("end_at", "is in the past")
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise _invalid("end_at", "must be after start_at")


# --- views ----------------------------------------------------------------------------------------


def _status_url(st: Receiver, schedule_id: str) -> str:
    return f"{st.settings.public_url.rstrip('/')}/api/schedules/{schedule_id}"


async def _view(st: Receiver, record: ScheduleRecord, now: dt.datetime) -> ScheduleView:
    last = None
    if record.last_job_id and record.last_run_at:
        last = LastRun(
            job_id=record.last_job_id,
            at=record.last_run_at,
            status=await _job_status(st, record.last_job_id),
            status_url=st.urls(record.last_job_id)[0],
        )
    status = record.status
    if status == "active" and record.end_at is not None and now > record.end_at:
        status = "ended"  # the executor purges the definition at its next firing
    try:
        upcoming = next_run(record, now)
    except ScheduleError:  # a record written by a newer release with a form this one lacks
        upcoming = None
    return ScheduleView(
        schedule_id=record.schedule_id,
        status=status,
        agent=record.agent,
        callback_url=record.callback_url,
        input=msgspec.json.decode(record.input) if record.input else {},
        prompt=record.prompt,
        every=format_every(record.every_s) if record.every_s is not None else None,
        cron=record.cron,
        timezone=record.timezone,
        pattern=record.pattern,
        start_at=record.start_at,
        end_at=record.end_at,
        overlap=record.overlap,
        project_id=record.project_id,
        timeout_ms=record.timeout_ms,
        next_run_at=upcoming if status == "active" else None,
        last_run=last,
        runs=record.runs,
        skipped=record.skipped,
        last_skipped_at=record.last_skipped_at,
        last_skip_reason=record.last_skip_reason,
        last_outcome=record.last_outcome,
        owner=record.owner,
        created_at=record.created_at,
        updated_at=record.updated_at,
        status_url=_status_url(st, record.schedule_id),
        project=record.project,
    )


async def _job_status(st: Receiver, job_id: str) -> JobStatus | None:
    with st.nats_errors():
        try:
            entry = await st.bucket(subjects.KV_JOBS).get(job_id)
        except bus.NotFound:
            return None
    return job_record_decoder.decode(entry.value).status if entry.value else None


def _json(body: msgspec.Struct, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


# --- handlers -------------------------------------------------------------------------------------


async def _caller(request: web.Request) -> tuple[Receiver, Principal]:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    return st, principal


async def create(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    body: ScheduleCreate = decode_json(_create_decoder, await st.read_body(request))
    project = st.writable(principal, body.project)
    now = utcnow()
    _check_job(st, project, body.agent, body.callback_url, body.prompt)
    t = _check_timing(st, body.every, body.cron, body.timezone, now)
    _check_window(body.start_at, body.end_at, now)
    await st.limit_work(project)

    key = request.headers.get("Idempotency-Key")
    if key is None:
        schedule_id = ids.new_id("sch")
    elif _IDEMPOTENCY_KEY.match(key):
        schedule_id = ids.derived_id("sch", principal.key_id, key)
    else:
        raise HTTPError(
            400,
            "invalid_header",
            "Idempotency-Key must be 1-255 printable characters",
            field="Idempotency-Key",
        )
    active = not body.paused
    record = ScheduleRecord(
        schedule_id=schedule_id,
        owner=principal.key_id,
        status="active" if active else "paused",
        agent=body.agent,
        callback_url=body.callback_url,
        pattern=t.pattern,
        created_at=now,
        updated_at=now,
        prompt=body.prompt,
        input=msgspec.Raw(encoder.encode(body.input)),
        project_id=body.project_id,
        timeout_ms=body.timeout_ms,
        every_s=t.every_s,
        cron=body.cron,
        timezone=body.timezone,
        start_at=body.start_at,
        end_at=body.end_at,
        overlap=body.overlap,
        armed_at=now if active else None,
        owner_per_minute=principal.per_minute,
        owner_per_day=principal.per_day,
        project=project.project_id,
    )
    js, kv = await _store(st)
    await _reserve(st, kv, principal.key_id, schedule_id, now)
    with st.nats_errors():
        try:
            await kv.create(schedule_id, encoder.encode(record))
        except bus.Conflict:
            found = await _load(st, kv, schedule_id)
            if found is None:  # deleted in between: the key was used once
                await _release(st, kv, principal.key_id, schedule_id)
                raise HTTPError(
                    409, "idempotency_key_reused", "this Idempotency-Key named a deleted schedule"
                ) from None
            return _json(await _view(st, found[0], now), 200, {"Location": _status_url(st, schedule_id)})
    if active:
        try:
            await _arm(st, js, record)
        except HTTPError:
            with contextlib.suppress(Exception):
                await kv.delete(schedule_id)
                await _release(st, kv, principal.key_id, schedule_id)
            raise
    log.info("schedule %s created: %s %s", schedule_id, record.agent, record.pattern)
    return _json(await _view(st, record, now), 201, {"Location": _status_url(st, schedule_id)})


async def list_schedules(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    _, kv = await _store(st)
    with st.nats_errors():
        try:
            keys = await kv.keys()
        except bus.NotFound:
            keys = []
    found = await asyncio.gather(*(_load(st, kv, k) for k in keys if subjects.is_token(k)))  # not owner.*
    records = [r for r, _ in filter(None, found) if st.sees(principal, r.project)]
    records.sort(key=lambda r: (r.created_at, r.schedule_id))
    now = utcnow()
    views = await asyncio.gather(*(_view(st, r, now) for r in records))
    return _json(ScheduleList(schedules=list(views)))


async def get_schedule(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    _, kv = await _store(st)
    record, _ = await _own(st, kv, principal, request.match_info["schedule_id"])
    return _json(await _view(st, record, utcnow()))


async def patch_schedule(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    schedule_id = request.match_info["schedule_id"]
    js, kv = await _store(st)
    await _own(st, kv, principal, schedule_id, write=True)  # 404/403 before the body is looked at
    patch: SchedulePatch = decode_json(_patch_decoder, await st.read_body(request))
    for _ in range(_WRITE_TRIES):
        old, revision = await _own(st, kv, principal, schedule_id, write=True)
        now = utcnow()
        new, rearm = _apply(st, old, patch, now)
        if principal.key_id == old.owner:  # firings are charged to the limits the key has now
            new = replace(new, owner_per_minute=principal.per_minute, owner_per_day=principal.per_day)
        with st.nats_errors():
            try:
                written = await kv.update(schedule_id, encoder.encode(new), last=revision)
            except bus.Conflict:
                continue  # the executor recorded a run meanwhile: apply the change to that
        try:
            if new.status == "active" and rearm:
                await _arm(st, js, new)
            elif new.status != "active" and old.status == "active":
                await _disarm(st, js, schedule_id)
        except HTTPError:
            with contextlib.suppress(Exception):  # leave the record as the schedule still is
                await kv.update(schedule_id, encoder.encode(old), last=written)
            raise
        log.info("schedule %s changed: %s -> %s", schedule_id, old.status, new.status)
        return _json(await _view(st, new, now))
    raise st.unavailable("the schedule kept changing; retry")


def _apply(
    st: Receiver, old: ScheduleRecord, patch: SchedulePatch, now: dt.datetime
) -> tuple[ScheduleRecord, bool]:
    """The record after ``patch`` (validated), and whether the definition must be published."""

    def given(value: Any, current: Any) -> Any:
        return current if value is UNSET else value

    agent = given(patch.agent, old.agent)
    callback_url = given(patch.callback_url, old.callback_url)
    prompt = given(patch.prompt, old.prompt)
    project = st.directory.get(old.project)
    if project is None:  # deleted meanwhile: its schedules are gone with it
        raise HTTPError(404, "schedule_not_found", f"no schedule {old.schedule_id!r}")
    _check_job(st, project, agent, callback_url, prompt)

    t = record_timing(old)
    every = format_every(old.every_s) if old.every_s is not None else None
    cron, timezone = old.cron, old.timezone
    if not all(v is UNSET for v in (patch.every, patch.cron, patch.timezone)):
        if patch.every is not UNSET:
            every = patch.every
            if patch.every is not None and patch.cron is UNSET:
                cron, timezone = None, None
        if patch.cron is not UNSET:
            cron = patch.cron
            if patch.cron is not None and patch.every is UNSET:
                every = None
        timezone = given(patch.timezone, timezone)
        t = _check_timing(st, every, cron, timezone, now)

    start_at = given(patch.start_at, old.start_at)
    end_at = given(patch.end_at, old.end_at)
    if patch.start_at is not UNSET or patch.end_at is not UNSET:
        _check_window(start_at, end_at, now)

    status: ScheduleStatus = old.status
    if patch.paused is not UNSET:
        status = "paused" if patch.paused else "active"
    elif old.status == "ended" and patch.end_at is not UNSET:
        status = "active"  # a new end: the schedule runs again
    if status == "active" and end_at is not None and end_at <= now:
        raise _invalid("end_at", "has passed; give a later end_at (or null) to resume")

    new = replace(
        old,
        status=status,
        agent=agent,
        callback_url=callback_url,
        prompt=prompt,
        input=old.input if patch.input is UNSET else msgspec.Raw(encoder.encode(patch.input)),
        project_id=given(patch.project_id, old.project_id),
        timeout_ms=given(patch.timeout_ms, old.timeout_ms),
        every_s=t.every_s,
        cron=cron if t.cron is not None else None,
        timezone=timezone if t.cron is not None else None,
        pattern=t.pattern,
        start_at=start_at,
        end_at=end_at,
        overlap=given(patch.overlap, old.overlap),
        updated_at=now,
        ended_at=None if status == "active" else old.ended_at,
    )
    changed = new.fire() != old.fire() or (new.pattern, new.timezone) != (old.pattern, old.timezone)
    rearm = status == "active" and (old.status != "active" or changed or patch.paused is False)
    if rearm:
        # A definition published now fires on its own timing from now on.
        new = replace(new, armed_at=now, next_run_at=None)
    return new, rearm


async def delete_schedule(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    schedule_id = request.match_info["schedule_id"]
    js, kv = await _store(st)
    # Record first (compare-and-set): a firing that slips in before the purge finds no schedule
    # and runs nothing, and the runs counted in the deleted record are all there will be.
    for _ in range(_WRITE_TRIES):
        record, revision = await _own(st, kv, principal, schedule_id, write=True)
        with st.nats_errors():
            try:
                await kv.delete(schedule_id, last=revision)
            except bus.Conflict:
                continue  # the executor recorded a run meanwhile
        await _disarm(st, js, schedule_id)
        await _release(st, kv, record.owner, schedule_id)
        log.info("schedule %s deleted after %d runs", schedule_id, record.runs)
        return _json(ScheduleDeleted(schedule_id=schedule_id, runs=record.runs))
    raise st.unavailable("the schedule kept changing; retry")


# --- wiring ---------------------------------------------------------------------------------------

_E = None
_KEYED = {401: _E, 429: _E, 503: _E}
_KEY_QUERY = (Param("api_key", "query", "The API key, when an Authorization header cannot be sent."),)
_ONE = "/api/schedules/{schedule_id}"
_LINKS = {
    name: link(f"{method}_api_schedules_schedule_id", schedule_id="schedule_id")
    for name, method in (("GetSchedule", "get"), ("ChangeSchedule", "patch"), ("DeleteSchedule", "delete"))
}


def operations() -> list[Operation]:
    """The schedule routes with their types, for the route table and the OpenAPI document."""

    def op(
        method: str, path: str, handler: Any, summary: str, responses: dict[int, Any], **kw: Any
    ) -> Operation:
        params = kw.pop("params", _KEY_QUERY)
        return Operation(
            method,
            path,
            handler,
            summary,
            "schedules",
            {**responses, **_KEYED},
            auth="api_key",
            params=params,
            **kw,
        )

    return [
        op(
            "POST",
            "/api/schedules",
            create,
            "Create a schedule: an agent run every interval or on a cron expression",
            {
                200: ScheduleView,
                201: ScheduleView,
                400: _E,
                402: _E,
                403: _E,
                404: _E,
                409: _E,
                413: _E,
                422: _E,
            },
            body=ScheduleCreate,
            params=(*_KEY_QUERY, Param("Idempotency-Key", "header", "A repeat answers the first schedule.")),
            description="Each firing becomes a job like POST /api/jobs (own id, status, callback, dead "
            "letters), tagged with the schedule id, and is charged to this key's rate limits (a firing "
            "over them is skipped: last_outcome rate_limited). 422 names the field of an invalid cron "
            "expression, time zone, or an interval below SCHEDULE_MIN_INTERVAL_S (default a minute); "
            "409 schedule_limit_reached when the key holds SCHEDULE_MAX_PER_OWNER schedules.",
            links={200: _LINKS, 201: _LINKS},
        ),
        op(
            "GET",
            "/api/schedules",
            list_schedules,
            "The caller's schedules (admin keys: all)",
            {200: ScheduleList},
        ),
        op(
            "GET",
            _ONE,
            get_schedule,
            "A schedule with its last and next runs",
            {200: ScheduleView, 403: _E, 404: _E},
        ),
        op(
            "PATCH",
            _ONE,
            patch_schedule,
            "Pause, resume or change a schedule",
            {200: ScheduleView, 400: _E, 403: _E, 404: _E, 413: _E, 422: _E},
            body=SchedulePatch,
        ),
        op(
            "DELETE",
            _ONE,
            delete_schedule,
            "Stop a schedule and remove it",
            {200: ScheduleDeleted, 403: _E, 404: _E},
        ),
    ]
