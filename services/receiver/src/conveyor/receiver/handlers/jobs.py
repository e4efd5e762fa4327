"""The jobs API: submit (POST /api/jobs), read, result, cancel, logs and deliveries."""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers.webhooks import accepted, respond
from conveyor.receiver.query import query_int, query_time
from conveyor.receiver.schemas import CancelAccepted, JobCreate, JobList, JobPending, JobSummary
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import CORRELATION_ID, STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import ids, lifecycle, subjects
from conveyor.shared.contracts.events import (
    CancelRequest,
    DeliveryLog,
    JobLog,
    JobRecord,
    JobRequest,
    delivery_log_decoder,
    encoder,
    job_index_decoder,
    job_log_decoder,
    job_record_decoder,
    utcnow,
)
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.urls import callback_url_problem, redact_url

_job_create_decoder = msgspec.json.Decoder(JobCreate)
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}\Z")


def _invalid(field: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid_field", f"{field}: {message}", field=field)


def valid_url(url: str) -> bool:
    """A URL the deliverer can call back: the deliverer's own check (conveyor.shared.runtime.urls)."""
    return callback_url_problem(url) is None


def shown(record: JobRecord) -> JobRecord:
    """The record as readers get it: the callback URL's credentials hidden. The stored record
    keeps them, because the executor publishes the job's result (for the deliverer, which sends
    them as Basic auth) from it."""
    url = record.callback_url
    if url is None or "@" not in url:
        return record
    return msgspec.structs.replace(record, callback_url=redact_url(url))


async def create(request: web.Request) -> web.Response:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    st.require_nats()
    body: JobCreate = decode_json(_job_create_decoder, await st.read_body(request))
    project = st.writable(principal, body.project)
    found = st.require_runnable(project, body.agent)
    return await submit(
        st, request, principal, project, body, None if found is None or found.read_only else found.version
    )


async def submit(
    st: Receiver,
    request: web.Request,
    principal: Principal,
    project: Project,
    body: JobCreate,
    version: int | None,
) -> web.Response:
    """Accept a job for ``body.agent`` (already known runnable by ``project``): 202 once the
    request and its record are in JetStream. ``version``: the project's definition it runs."""
    claimed = st.directory.resolve(f"lovable:{body.project_id}") if body.project_id else None
    if claimed is not None and claimed.project_id != project.project_id:
        # The callback names this Lovable project: only the project that owns it may.
        raise _invalid("project_id", "belongs to another project")
    if len(body.prompt) > st.settings.max_prompt_chars:
        raise _invalid("prompt", f"longer than {st.settings.max_prompt_chars} characters")
    if body.callback_url is not None and (problem := callback_url_problem(body.callback_url)):
        raise _invalid("callback_url", problem)

    await st.limit_work(project)
    job_id = job_id_for(st, request, principal)

    now = utcnow()
    correlation = request[CORRELATION_ID]
    job = JobRequest(
        job_id=job_id,
        agent=body.agent,
        created_at=now,
        source="api",
        prompt=body.prompt,
        input=msgspec.Raw(encoder.encode(body.input)),
        project_id=body.project_id,
        callback_url=body.callback_url,
        timeout_ms=body.timeout_ms,
        correlation_id=correlation,
        project=project.project_id,
        agent_version=version,
    )
    record = lifecycle.new(
        job_id,
        created_at=now,
        agent=body.agent,
        source="api",
        project_id=body.project_id,
        callback_url=body.callback_url,
        project=project.project_id,
        agent_version=version,
    )
    duplicate = await st.accept(
        subject=subjects.job_run(body.agent),
        stream=subjects.JOBS,
        data=encoder.encode(job),
        msg_id=job_id,
        record=record,
        correlation_id=correlation,
    )
    label = body.agent if version is None else "defined"  # a project's own: one label for all
    st.metrics.jobs.labels(label, "duplicate" if duplicate else "accepted").inc()
    return accepted(st, job_id, duplicate)


def job_id_for(st: Receiver, request: web.Request, principal: Principal) -> str:
    """A new job's id: derived from the caller's Idempotency-Key (a repeat names the same job),
    else new."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ids.new_id("job")
    if _IDEMPOTENCY_KEY.match(key):
        return ids.api_job_id(st.job_id_key, principal.key_id, key)
    raise HTTPError(
        400, "invalid_header", "Idempotency-Key must be 1-255 printable characters", field="Idempotency-Key"
    )


async def load(st: Receiver, job_id: str, principal: Principal | None) -> tuple[JobRecord, int]:
    """The job's record and KV revision; 404 when there is none or the caller's scope does not
    see its project (the same answer, so ids of other projects' jobs cannot be probed)."""
    if not subjects.is_token(job_id):
        raise _not_found(job_id)
    kv = st.bucket(subjects.KV_JOBS)
    with st.nats_errors():
        try:
            entry = await kv.get(job_id)
        except bus.NotFound:
            raise _not_found(job_id) from None
    record = job_record_decoder.decode(entry.value or b"")
    if not st.sees(principal, record.project):
        raise _not_found(job_id)
    return record, entry.revision or 0


def _not_found(job_id: str) -> HTTPError:
    return HTTPError(404, "job_not_found", f"no job {job_id[:100]!r}")


async def write_access(request: web.Request) -> tuple[Receiver, JobRecord]:
    """A write on a job: a full key whose scope sees the job's project."""
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    record, _ = await load(st, request.match_info["job_id"], principal)
    st.writable(principal, record.project)
    return st, record


async def read_access(request: web.Request) -> tuple[Receiver, JobRecord]:
    """A read of a job: its record, when the caller may see it (see READS_REQUIRE_API_KEY)."""
    st = request.app[STATE]
    principal = await st.reader(request)
    record, _ = await load(st, request.match_info["job_id"], principal)
    return st, record


async def get(request: web.Request) -> web.Response:
    _, record = await read_access(request)
    return respond(200, shown(record))


async def result(request: web.Request) -> web.Response:
    """The callback body (AgentResult) once there is one; 202 while the job runs; 409 when it
    finished without one (cancelled, or failed before producing a result)."""
    _, record = await read_access(request)
    if record.result is not None:
        return respond(200, record.result)
    if not record.terminal:
        pending = JobPending(job_id=record.job_id, status=record.status, progress=record.progress)
        return respond(202, pending, {"Retry-After": "1"})
    raise HTTPError(
        409,
        "no_result",
        f"job ended {record.status} without a result" + (f": {record.error}" if record.error else ""),
        job_status=record.status,
    )


async def cancel(request: web.Request) -> web.Response:
    st, record = await write_access(request)
    if record.terminal:
        raise HTTPError(
            409, "job_finished", f"job already {record.status}; nothing to cancel", job_status=record.status
        )
    req = CancelRequest(job_id=record.job_id, requested_at=utcnow())
    kv = st.bucket(subjects.KV_CANCELS)
    with st.nats_errors():
        await kv.put(record.job_id, encoder.encode(req))
    return respond(202, CancelAccepted(job_id=record.job_id, status=record.status))


async def logs(request: web.Request) -> web.Response:
    st, record = await read_access(request)
    raw = await _optional(st, subjects.KV_JOB_LOGS, record.job_id)
    return respond(200, job_log_decoder.decode(raw) if raw else JobLog(job_id=record.job_id))


async def deliveries(request: web.Request) -> web.Response:
    st, record = await read_access(request)
    raw = await _optional(st, subjects.KV_DELIVERIES, record.job_id)
    return respond(200, delivery_log_decoder.decode(raw) if raw else DeliveryLog(job_id=record.job_id))


async def _optional(st: Receiver, bucket: str, key: str) -> bytes | None:
    kv = st.bucket(bucket)
    with st.nats_errors():
        try:
            entry = await kv.get(key)
        except bus.NotFound:
            return None
    return entry.value or None


# --- GET /api/jobs ------------------------------------------------------------------------------

_SCAN_MAX = 2000  # index entries looked at per page, shown or not: a page costs a bounded amount
_STATUSES = frozenset(("queued", "processing", "completed", "failed", "timeout", "cancelled"))


async def list_jobs(request: web.Request) -> web.Response:
    """The jobs the key's scope sees, oldest first from ``since`` or ``cursor``; filters on
    project, status, agent and creation time. Fan-out children are listed with their parent."""
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    st.require_nats()
    q = request.query
    project = q.get("project") or principal.scope.project_id
    if project is not None and not (subjects.is_token(project) and st.sees(principal, project)):
        raise HTTPError(404, "project_not_found", f"no project {project[:64]!r}", field="project")
    status = q.get("status")
    if status is not None and status not in _STATUSES:
        raise HTTPError(
            400, "invalid_query", f"status: one of {', '.join(sorted(_STATUSES))}", field="status"
        )
    agent = q.get("agent")
    since, until = query_time(request, "since"), query_time(request, "until")
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = query_int(request, "cursor", 0, 1, 2**62) or None
    subject = subjects.job_index(project) if project else "jobindex.>"

    found: list[JobSummary] = []
    seen: set[str] = set()
    next_cursor: int | None = None
    seq, scanned = cursor, 0
    records = st.kv[subjects.KV_JOBS]
    with st.nats_errors():
        while scanned < _SCAN_MAX:
            stored = await st.rt.bus.next_message(
                subjects.JOBINDEX, subject, seq=seq or 1, since=None if seq else since
            )
            if stored is None:
                next_cursor = None
                break
            scanned += 1
            seq = next_cursor = stored.seq + 1
            entry = job_index_decoder.decode(stored.data)
            owner = stored.subject.removeprefix("jobindex.")
            if until is not None and entry.created_at > until:
                next_cursor = None
                break
            if entry.job_id in seen or not st.sees(principal, owner):
                continue
            if agent is not None and entry.agent != agent:
                continue
            got = await records.lookup(entry.job_id)
            if got is None:
                continue  # expired, or never came to be (its publish failed)
            record = job_record_decoder.decode(got.value)
            if record.created_at != entry.created_at:
                continue  # the entry of a repeated delivery: the job is listed at its first
            if status is not None and record.status != status:
                continue
            seen.add(entry.job_id)
            found.append(JobSummary.of(record))
            if len(found) >= limit:
                break
    return respond(200, JobList(jobs=found, next_cursor=next_cursor))
