"""Dead letters through the API: list, read and replay the ones the key's scope owns.

A dead letter belongs to the project named by its ``Conveyor-Project`` header (taken from the
message body when it was dead-lettered); one without it is an operator's alone (admin keys,
and the ``conveyor dlq`` command). Another project's dead letter answers 404, as a missing
one. Reading and replaying go through conveyor.shared.domain.deadletters, the code the CLI uses.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.openapi import Operation, Param
from conveyor.receiver.query import query_int
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared.contracts import subjects
from conveyor.shared.domain import deadletters
from conveyor.shared.domain.deadletters import DeadLetter
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.urls import redact_text

E = None
_SCAN_MAX = 2000  # letters looked at per page, seen or not: a page costs a bounded amount
_BODY_MAX = 64 * 1024


class DeadLetterView(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    stage: str
    original_subject: str
    error: str | None
    attempts: int | None
    failed_at: str | None
    job_id: str | None
    project: str | None
    size: int
    time: dt.datetime | None = None
    body: str | None = None  # GET of one dead letter only; UTF-8 text, cut at 64 KiB


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: list[DeadLetterView]
    next_cursor: int | None
    """Pass as ``cursor`` for the next page; null when the scan reached the end."""


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    replayed: bool
    detail: str


def _view(letter: DeadLetter, *, body: bool = False) -> DeadLetterView:
    attempts = letter.header(subjects.H_ATTEMPTS)
    return DeadLetterView(
        seq=letter.seq,
        stage=letter.stage,
        original_subject=letter.original_subject,
        error=letter.header(subjects.H_ERROR),
        attempts=int(attempts) if attempts and attempts.isdigit() else None,
        failed_at=letter.header(subjects.H_FAILED_AT),
        job_id=letter.header(subjects.H_JOB_ID),
        project=letter.project,
        size=len(letter.data),
        time=letter.time,
        # The body as it was published; a callback URL in it keeps its credentials (a replay
        # sends them), so readers see them hidden.
        body=redact_text(letter.data[:_BODY_MAX].decode(errors="replace")) if body else None,
    )


def _visible(st: Receiver, principal: Principal, letter: DeadLetter) -> bool:
    project = letter.project
    if project is None:
        return principal.scope.kind == "admin"
    return st.sees(principal, project)


async def _caller(request: web.Request) -> tuple[Receiver, Principal]:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    st.require_nats()
    return st, principal


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise HTTPError(404, "dead_letter_not_found", f"no dead letter {raw[:32]!r}")
    return int(raw)


async def _letter(st: Receiver, principal: Principal, seq: int) -> DeadLetter:
    with st.nats_errors():
        letter = await deadletters.get(st.require_nats(), seq)
    if letter is None or not _visible(st, principal, letter):
        raise HTTPError(404, "dead_letter_not_found", f"no dead letter {seq}")
    return letter


async def list_letters(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = query_int(request, "cursor", 1, 1, 2**62)
    stage = request.query.get("stage")
    if stage is not None and not subjects.is_token(stage):
        raise HTTPError(400, "invalid_query", "stage: a subject token such as deliver", field="stage")
    js = st.require_nats()
    found: list[DeadLetterView] = []
    next_cursor: int | None = None
    scanned = 0
    with st.nats_errors():
        async for letter in deadletters.scan(js, deadletters.subject_filter(stage), start=cursor):
            scanned += 1
            if _visible(st, principal, letter):
                found.append(_view(letter))
            if len(found) >= limit or scanned >= _SCAN_MAX:
                next_cursor = letter.seq + 1
                break
    return respond(200, DeadLetterPage(dead_letters=found, next_cursor=next_cursor))


async def get_letter(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    return respond(200, _view(await _letter(st, principal, _seq(request)), body=True))


async def replay_letter(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    letter = await _letter(st, principal, _seq(request))
    if letter.project is not None:
        st.writable(principal, letter.project)
    elif principal.scope.read_only:
        raise HTTPError(403, "read_only_key", "this key is read-only")
    with st.nats_errors():
        outcome = await deadletters.replay_one(st.require_nats(), letter)
    if not outcome.ok:
        raise st.unavailable(f"the replay did not complete ({outcome.detail})")
    return respond(202, Replayed(seq=letter.seq, replayed=True, detail=outcome.detail))


def operations() -> list[Operation]:
    keyed = {401: E, 403: E, 429: E, 503: E}
    query = (
        Param("stage", "query", "Only this stage (deliver, execute, route, deploy...)."),
        Param("limit", "query", "At most this many (1-500, default 50)."),
        Param("cursor", "query", "Start at this sequence: next_cursor of the previous page."),
    )
    return [
        Operation(
            "GET",
            "/api/dead-letters",
            list_letters,
            "Dead letters the key's scope owns, oldest first",
            "dead-letters",
            {200: DeadLetterPage, 400: E, **keyed},
            auth="api_key",
            params=query,
        ),
        Operation(
            "GET",
            "/api/dead-letters/{seq}",
            get_letter,
            "One dead letter, with its body",
            "dead-letters",
            {200: DeadLetterView, 404: E, **keyed},
            auth="api_key",
        ),
        Operation(
            "POST",
            "/api/dead-letters/{seq}/replay",
            replay_letter,
            "Republish a dead letter to its original subject, then delete it",
            "dead-letters",
            {202: Replayed, 404: E, **keyed},
            auth="api_key",
        ),
    ]
