"""Stream, subject, bucket, consumer and header names: the only place they are spelled out.

Streams are UPPER_SNAKE and filename-safe (no ".", "*", ">") per NATS ADR-6.
Subjects are lower-case tokens from broad to narrow, so one wildcard selects a family.
Anything user-supplied that becomes a subject token goes through :func:`token` first.
"""

from __future__ import annotations

import re
from typing import Final

# Streams ------------------------------------------------------------------------------------------
EVENTS: Final = "EVENTS"  # events.<source>.<type...>        receiver -> executor router
JOBS: Final = "JOBS"  # jobs.run.<agent>                     router/receiver -> executor workers
#                       jobs.fanout.<parent_id>              router -> executor (a fan-out's deadline)
#                       jobs.limited.<project>.<agent>       executor -> executor (a project's running limit)
RESULTS: Final = "RESULTS"  # results.<job_id>               executor -> deliverer
DEPLOYS: Final = "DEPLOYS"  # deploys.{requested,status}.<site>
DLQ: Final = "DLQ"  # dlq.<stage>.<original subject>         any stage -> operators
CONTROL: Final = "CONTROL"  # ctl.<verb>.<id>                 receiver -> any service (test sends, ...)
SCHEDULES: Final = "SCHEDULES"  # schedules.def.<id> (+ fired copies on schedules.fire.<id>)
PARKED: Final = "PARKED"  # parked.hold.<job_id> -> (at its time) parked.results.<job_id>  deliverer
JOBINDEX: Final = "JOBINDEX"  # jobindex.<project>: one JobIndexEntry per job, in creation order

# KV buckets ---------------------------------------------------------------------------------------
KV_JOBS: Final = "jobs"  # job_id -> JobRecord (written by executor; receiver creates "queued")
KV_CANCELS: Final = "job_cancels"  # job_id -> CancelRequest (receiver writes, executor watches)
KV_APIKEYS: Final = "apikeys"  # sha256(key) -> ApiKeyRecord
KV_RATELIMITS: Final = "ratelimits"  # <scope>.<window> -> counter (per-key TTL)
KV_DELIVERIES: Final = "deliveries"  # job_id -> DeliveryLog
KV_JOB_LOGS: Final = "job_logs"  # job_id -> JobLog
KV_SITES: Final = "sites"  # site_id -> SiteRecord
KV_DEPLOYMENTS: Final = "deployments"  # deployment_id -> DeploymentRecord
KV_DEPLOY_LEASES: Final = "deploy_leases"  # site_id -> DeployLease (one active deployment per site)
KV_SCHEDULES: Final = "schedules"  # schedule_id -> ScheduleRecord (receiver writes; executor records runs)
KV_SECRETS: Final = "secrets"  # name -> a server-held secret (receiver: job_id); no API reads it
KV_ORGS: Final = "orgs"  # org_id -> Organisation
KV_PROJECTS: Final = "projects"  # project_id -> Project (every service mirrors it in memory)
KV_INTEGRATION: Final = "integration"  # project_id -> IntegrationStatus (receiver, deliverer)
KV_CONNECTIONS: Final = "connections"  # <project>.<provider> -> Connection (sealed GitHub/Slack credentials)
KV_OAUTH_STATES: Final = "oauth_states"  # used.<nonce> -> when an OAuth state was spent (no replay)
KV_AGENTS: Final = "agents"  # <project>.<agent id> -> AgentDefinition (receiver writes; executors mirror)
KV_AGENT_ROUTES: Final = "agent_routes"  # project_id -> ProjectRoutes (receiver writes; executors mirror)
KV_USAGE: Final = "usage"  # <project>.day.<date> / <project>.month.<month> -> PeriodUsage (executor writes)

# Durable consumers --------------------------------------------------------------------------------
ROUTER: Final = "executor-router"
WORKERS: Final = "executor"
FANOUT: Final = "executor-fanout"  # on JOBS, jobs.fanout.>: fan-out parents' deadlines
DELIVERER: Final = "deliverer"
DELIVERER_TEST_SENDS: Final = "deliverer-test-sends"  # on CONTROL, ctl.test_send.>
DELIVERER_PARKED: Final = "deliverer-parked"  # on PARKED, parked.results.>: parked results due
DEPLOYER: Final = "deployer"
SCHEDULER: Final = "executor-scheduler"  # on SCHEDULES, schedules.fire.>: firings -> jobs
LIMITED_PREFIX: Final = "executor-limited-"  # + <project>, on JOBS, jobs.limited.<project>.>

# Headers we add (Nats-* ones are the server's) ----------------------------------------------------
MSG_ID: Final = "Nats-Msg-Id"
H_JOB_ID: Final = "Conveyor-Job-Id"
H_CORRELATION_ID: Final = "Conveyor-Correlation-Id"
H_ORIGINAL_SUBJECT: Final = "Conveyor-Original-Subject"
H_ORIGINAL_STREAM: Final = "Conveyor-Original-Stream"
H_ORIGINAL_SEQ: Final = "Conveyor-Original-Seq"
H_ERROR: Final = "Conveyor-Error"
H_ATTEMPTS: Final = "Conveyor-Attempts"
H_FAILED_AT: Final = "Conveyor-Failed-At"
H_LAST_STATUS: Final = "Conveyor-Last-Status"
H_STAGE: Final = "Conveyor-Stage"
H_SCHEDULE_ID: Final = "Conveyor-Schedule-Id"
H_PROJECT: Final = "Conveyor-Project"  # on dead letters: the project that owns the message

# JetStream message schedules (ADR-51; @every and cron need nats-server 2.14+): set on schedules.def.<id> ...
H_SCHEDULE: Final = "Nats-Schedule"  # "@every 15m", a 6-field cron (seconds first), "@daily"
H_SCHEDULE_TARGET: Final = "Nats-Schedule-Target"  # where copies go: a subject of the same stream
H_SCHEDULE_TIME_ZONE: Final = "Nats-Schedule-Time-Zone"  # IANA zone for cron (not for @every)
H_SCHEDULE_TTL: Final = "Nats-Schedule-TTL"  # becomes Nats-TTL on each copy
# ... and added by the server to each fired copy.
H_SCHEDULER: Final = "Nats-Scheduler"  # the subject holding the schedule
H_SCHEDULE_NEXT: Final = "Nats-Schedule-Next"  # RFC 3339 time of the next firing

# \Z, not $: "$" also matches before a trailing newline, which would end a protocol line.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


def token(value: str) -> str:
    """Return ``value`` if it is safe as one subject token, else raise ``ValueError``."""
    if not _TOKEN.match(value):
        raise ValueError(f"not a safe subject token: {value!r}")
    return value


def is_token(value: str) -> bool:
    """Whether ``value`` may be used as one subject token or KV key."""
    return bool(_TOKEN.match(value))


def event(source: str, event_type: str) -> str:
    """``events.<source>.<type>``; dotted types (``project.created``) keep their dots."""
    parts = event_type.split(".")
    for p in (source, *parts):
        token(p)
    return f"events.{source}.{event_type}"


def job_run(agent: str) -> str:
    return f"jobs.run.{token(agent)}"


def fanout_deadline(parent_id: str) -> str:
    """The executor's timer for a fan-out parent (JOBS is a work queue: one consumer per filter)."""
    return f"jobs.fanout.{token(parent_id)}"


# The jobs of a project with a running limit (Project.max_running) wait here for one of its slots;
# each project has its own durable (executor handlers/fairness.py).
LIMITED_JOBS_FILTER: Final = "jobs.limited.>"


def job_limited(project: str, agent: str) -> str:
    return f"jobs.limited.{token(project)}.{token(agent)}"


def limited_filter(project: str) -> str:
    return f"jobs.limited.{token(project)}.>"


def limited_consumer(project: str) -> str:
    return f"{LIMITED_PREFIX}{token(project)}"


def result(job_id: str) -> str:
    return f"results.{token(job_id)}"


def job_index(project: str) -> str:
    """One subject per project, not per job: the server's per-subject state stays bounded."""
    return f"jobindex.{token(project)}"


# A result waiting for a later attempt: held as a scheduled message, then due (deliverer parking.py).
PARKED_RESULTS_PREFIX: Final = "parked.results."
PARKED_RESULTS_FILTER: Final = "parked.results.>"


def parked_hold(job_id: str) -> str:
    return f"parked.hold.{token(job_id)}"


def parked_result(job_id: str) -> str:
    return f"{PARKED_RESULTS_PREFIX}{token(job_id)}"


def deploy_requested(site: str) -> str:
    return f"deploys.requested.{token(site)}"


def deploy_status(site: str) -> str:
    return f"deploys.status.{token(site)}"


def dlq(stage: str, original_subject: str) -> str:
    """Dead letter subject: the original subject after the stage, so a filter can pick either."""
    return f"dlq.{token(stage)}.{original_subject}"


def control(verb: str, ident: str) -> str:
    return f"ctl.{token(verb)}.{token(ident)}"


# ctl.test_send.<id>: the receiver asks the deliverer to send a signed test event (SendTestEvent).
TEST_SEND_VERB: Final = "test_send"
TEST_SEND_FILTER: Final = "ctl.test_send.>"


def schedule(schedule_id: str) -> str:
    return f"schedules.def.{token(schedule_id)}"


def schedule_fire(schedule_id: str) -> str:
    return f"schedules.fire.{token(schedule_id)}"


# Core NATS, no stream captures them (nothing is stored): a running job's streamed text, read by
# the receivers' SSE streams, and its progress for the deliverers' progress callbacks.
JOB_OUTPUT_PREFIX: Final = "joboutput."
JOB_PROGRESS_FILTER: Final = "jobprogress.>"


def job_output(job_id: str) -> str:
    return f"{JOB_OUTPUT_PREFIX}{token(job_id)}"


def job_progress(job_id: str) -> str:
    return f"jobprogress.{token(job_id)}"


SCHEDULE_FIRE_FILTER: Final = "schedules.fire.>"
SCHEDULE_FIRE_PREFIX: Final = "schedules.fire."
