"""Every message on a subject and every record in a KV bucket, as msgspec Structs.

Rules (msgspec's schema-evolution guide): fields added later get defaults; a field's type
never changes; a breaking change is a new ``v`` and a new Struct. Messages never forbid
unknown fields, so an old reader survives a newer writer during a rolling deploy. Identity
and timestamps are required on the wire: a message without them is rejected, not re-identified.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

JobStatus = Literal["queued", "processing", "completed", "failed", "timeout", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "timeout", "cancelled"})
ResultStatus = Literal["completed", "failed", "timeout"]


# Objects made before projects belong to the default project (conveyor.shared.domain.tenancy).
DEFAULT_PROJECT = "default"

# What msgspec raises for bytes it cannot read as JSON: malformed (DecodeError, and its subclass
# ValidationError for the wrong shape), not UTF-8, or nested deeper than the stack allows.
NOT_JSON: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of our own messages and records; ``v`` is the schema version."""

    v: int = 1


# --- The callback contract (field names fixed by the product) ---------------------------------


class ResultBody(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    files_changed: list[str] = []
    suggestions: list[str] = []
    code_diff: str | msgspec.UnsetType = msgspec.UNSET  # "code_diff?": absent, not null, when none


class AgentResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The callback body: jobId, lovableProjectId, agentId, status, result, executionTime, timestamp."""

    job_id: str
    lovable_project_id: str | None
    agent_id: str
    status: ResultStatus
    result: ResultBody
    execution_time: int  # milliseconds
    timestamp: dt.datetime


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens an LLM run used (one response, or the sum over a job) and what they cost."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


# --- events.<source>.<type> -------------------------------------------------------------------


class WebhookEvent(Message, frozen=True, kw_only=True):
    """A verified webhook, as the receiver accepted it. ``payload`` is the sender's JSON, unchanged."""

    event_id: str  # the sender's delivery id; also the Nats-Msg-Id
    job_id: str  # decided by the receiver so the 202 can name it
    source: str
    type: str
    received_at: dt.datetime
    payload: msgspec.Raw
    project_id: str | None = None
    callback_url: str | None = None
    correlation_id: str | None = None
    project: str = DEFAULT_PROJECT  # the Conveyor project that owns the job (project_id is the sender's)


# --- jobs.run.<agent> -------------------------------------------------------------------------


class JobRequest(Message, frozen=True, kw_only=True):
    """One agent run. Published by the router (from events) or by the receiver (API jobs)."""

    job_id: str
    agent: str
    created_at: dt.datetime
    source: str = "api"
    event_type: str | None = None
    prompt: str | None = None
    input: msgspec.Raw = msgspec.Raw(b"{}")
    project_id: str | None = None
    callback_url: str | None = None
    parent_id: str | None = None  # set on fan-out children
    timeout_ms: int | None = None  # overrides the agent's own timeout
    schedule_id: str | None = None
    correlation_id: str | None = None
    project: str = DEFAULT_PROJECT
    # A project's definition: the version the caller saw (the executor runs that one or newer).
    agent_version: int | None = None


# --- results.<job_id> -------------------------------------------------------------------------


class JobResult(Message, frozen=True, kw_only=True):
    """What the deliverer needs to call back: where, and the contract body."""

    job_id: str
    callback_url: str | None
    source: str
    result: AgentResult
    correlation_id: str | None = None
    kind: Literal["job", "test", "deployment"] = "job"
    project: str = DEFAULT_PROJECT  # whose callback secret signs it


# --- KV jobs ------------------------------------------------------------------------------------


class PipelineStage(msgspec.Struct, frozen=True, kw_only=True):
    """One stage of a running pipeline: what runs, its child jobs once started, its deadline."""

    agents: list[str]
    on_failure: Literal["stop", "continue"] = "stop"
    timeout_ms: int | None = None
    children: list[str] = []
    deadline: dt.datetime | None = None
    timed_out: bool = False


class PipelineRun(msgspec.Struct, frozen=True, kw_only=True):
    """A pipeline's durable state, in its job's record: the plan fixed when it started, the
    stage running, and the job's own task, which every stage is given with the earlier stages'
    results (nothing of it is held only in an executor's memory)."""

    name: str
    stages: list[PipelineStage]
    input: msgspec.Raw
    stage: int = 0
    prompt: str | None = None


class JobRecord(Message, frozen=True, kw_only=True):
    """The state of one job, in KV ``jobs`` under its id."""

    job_id: str
    status: JobStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    agent: str | None = None
    source: str = "api"
    event_type: str | None = None
    progress: int = 0
    attempts: int = 0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    backend: str | None = None
    error: str | None = None
    project_id: str | None = None
    callback_url: str | None = None
    parent_id: str | None = None
    children: list[str] = []
    schedule_id: str | None = None
    result: AgentResult | None = None
    project: str = DEFAULT_PROJECT  # who may see it; another project's job answers 404
    agent_version: int | None = None  # the version of the project's definition the job ran
    pipeline: PipelineRun | None = None  # set on a pipeline's job
    usage: TokenUsage | None = None  # LLM tokens and cost over all attempts (None: no LLM ran)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobIndexEntry(Message, frozen=True, kw_only=True):
    """On ``jobindex.<project>`` when a job is made: what lists of jobs filter on without
    reading every record. A repeat of an accepted delivery writes one again; the list keeps the
    entry whose ``created_at`` is the record's."""

    job_id: str
    created_at: dt.datetime
    source: str
    agent: str | None = None
    event_type: str | None = None
    schedule_id: str | None = None

    @classmethod
    def of(cls, record: JobRecord) -> JobIndexEntry:
        return cls(
            job_id=record.job_id,
            created_at=record.created_at,
            source=record.source,
            agent=record.agent,
            event_type=record.event_type,
            schedule_id=record.schedule_id,
        )


class CancelRequest(Message, frozen=True, kw_only=True):
    """KV ``job_cancels``: presence means "stop this job"; workers watch the bucket."""

    job_id: str
    requested_at: dt.datetime
    reason: str = "cancelled by request"


# --- joboutput.<job_id>, jobprogress.<job_id> (core NATS: live, not stored) -------------------


class JobOutput(Message, frozen=True, kw_only=True):
    """Text a running job's model streamed, batched; ``seq`` counts an attempt's batches from 1,
    so a reader sees a gap (it subscribed late, or a batch was lost)."""

    job_id: str
    attempt: int
    seq: int
    text: str


class JobProgress(Message, frozen=True, kw_only=True):
    """A running job's progress for its project's progress callbacks (at most one a second)."""

    job_id: str
    project: str
    source: str
    callback_url: str | None
    status: str
    progress: int
    output: str  # the text streamed since the previous one
    timestamp: dt.datetime


class ProgressCallback(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a progress callback."""

    job_id: str
    status: str
    progress: int
    output: str
    timestamp: dt.datetime


# --- KV deliveries ------------------------------------------------------------------------------


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    at: dt.datetime
    url: str
    status_code: int | None
    latency_ms: float
    error: str | None = None
    outcome: Literal["delivered", "retry", "failed", "dead_lettered", "skipped"] = "delivered"


class DeliveryLog(Message, frozen=True, kw_only=True):
    job_id: str
    attempts: list[DeliveryAttempt] = []
    delivered: bool = False


class SendTestEvent(Message, frozen=True, kw_only=True):
    """On ``ctl.test_send.<id>``: the receiver asks the deliverer to send a signed test event.
    The deliverer writes the outcome as a DeliveryLog under ``test_<id>`` in KV ``deliveries``."""

    id: str
    url: str
    requested_at: dt.datetime
    event_type: str = "conveyor.test"
    project: str = DEFAULT_PROJECT  # whose secret signs it, and who may read its outcome


# --- KV job_logs ----------------------------------------------------------------------------------


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    at: dt.datetime
    level: str
    message: str
    attempt: int = 1


class JobLog(Message, frozen=True, kw_only=True):
    """An execution's log lines, in KV ``job_logs`` under the job id (GET /api/jobs/{id}/logs)."""

    job_id: str
    lines: list[LogLine] = []


# --- KV apikeys -------------------------------------------------------------------------------


class ApiKeyRecord(Message, frozen=True, kw_only=True):
    """Stored under sha256(key) hex; the key itself is shown once and never stored."""

    key_id: str
    name: str
    created_at: dt.datetime
    prefix: str  # first characters of the key, to recognise it in lists
    admin: bool = False
    per_minute: int = 60
    per_day: int = 10_000
    revoked: bool = False
    # Scope (conveyor.shared.domain.tenancy): "" for keys made before projects, which act as admin
    # keys (admin=true) or keys of the default project.
    scope: Literal["", "admin", "org", "project"] = ""
    org_id: str | None = None
    project_id: str | None = None
    read_only: bool = False


# Built once, reused (msgspec perf tips).
encoder = msgspec.json.Encoder()
webhook_event_decoder = msgspec.json.Decoder(WebhookEvent)
job_request_decoder = msgspec.json.Decoder(JobRequest)
job_result_decoder = msgspec.json.Decoder(JobResult)
job_record_decoder = msgspec.json.Decoder(JobRecord)
agent_result_decoder = msgspec.json.Decoder(AgentResult)
cancel_request_decoder = msgspec.json.Decoder(CancelRequest)
delivery_log_decoder = msgspec.json.Decoder(DeliveryLog)
api_key_decoder = msgspec.json.Decoder(ApiKeyRecord)
send_test_decoder = msgspec.json.Decoder(SendTestEvent)
job_log_decoder = msgspec.json.Decoder(JobLog)
job_index_decoder = msgspec.json.Decoder(JobIndexEntry)
job_output_decoder = msgspec.json.Decoder(JobOutput)
job_progress_decoder = msgspec.json.Decoder(JobProgress)
