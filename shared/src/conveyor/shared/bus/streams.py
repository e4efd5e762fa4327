"""Stream and KV bucket configurations, and the idempotent bootstrap that declares them.

Every service declares what it uses at start. Creating a stream that exists with the same
config is a no-op on the server; one that exists with another config is converged with an
update, so replicas starting at once, or a new release changing a limit, both end in the
same state.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from conveyor.shared.contracts import subjects

log = logging.getLogger(__name__)

DAY: Final = 24 * 3600.0
HOUR: Final = 3600.0
MiB: Final = 1024 * 1024

# How long the server remembers Nats-Msg-Id values. Every id is held in memory on every replica
# for the whole window (about 120 bytes of Go heap each, and the heap is about twice the live
# data), so a day-long window on EVENTS and RESULTS cost about 0.5 KB of broker memory per job.
# They do not need it: idempotency rests on the job record (KV jobs) and on RESULTS itself. A
# webhook repeated after the window is stored again but answered as a duplicate (its record is
# older than it) and its JobRequest is dropped by JOBS' window; a job found over publishes its
# result only when RESULTS has none (executor handlers/results.py). The window covers the
# retries of one publish: a 503 answered while the event was stored, a PubAck lost in a reconnect.
DUPLICATE_WINDOW_S: Final = 120.0
# JOBS keeps a day: one JobRequest per job must be in the work queue while the job lives (a
# worker that finds a second one of a job still running takes the first for dead), and a late
# repeat of its webhook, routed again, may come while it waits in a backlog or runs.
JOBS_DUPLICATE_WINDOW_S: Final = DAY


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """How long the product keeps what a job leaves behind, in seconds (settings, in hours and
    days, in conveyor.shared.runtime.config: EVENTS_RETENTION_H, RESULTS_RETENTION_D, JOB_LOGS_RETENTION_D).
    Every service that declares a stream must be given the same values: each converges the
    stream to its own."""

    events_s: float = DAY  # raw webhook payloads (EVENTS)
    results_s: float = 7 * DAY  # results waiting for and after their callback (RESULTS)
    job_logs_s: float = 30 * DAY  # per-run logs (KV job_logs)


DEFAULT_RETENTION: Final = Retention()


def stream_configs(replicas: int = 1, retention: Retention = DEFAULT_RETENTION) -> dict[str, StreamConfig]:
    """All streams, keyed by name, at the given replica count (1 locally, 3 in a cluster)."""

    def cfg(name: str, subs: list[str], **kw: object) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subs,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_msg_size=2 * MiB,
            **kw,  # type: ignore[arg-type]
        )

    return {
        subjects.EVENTS: cfg(
            subjects.EVENTS,
            ["events.>"],
            retention=RetentionPolicy.LIMITS,
            # An event not routed by then (the executor down that long) is gone with it.
            max_age=retention.events_s,
            duplicate_window=min(DUPLICATE_WINDOW_S, retention.events_s),
        ),
        subjects.JOBS: cfg(
            subjects.JOBS,
            ["jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=7 * DAY,
            duplicate_window=JOBS_DUPLICATE_WINDOW_S,
        ),
        subjects.RESULTS: cfg(
            subjects.RESULTS,
            ["results.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=retention.results_s,
            duplicate_window=min(DUPLICATE_WINDOW_S, retention.results_s),
        ),
        subjects.DEPLOYS: cfg(
            subjects.DEPLOYS,
            ["deploys.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=30 * DAY,
            duplicate_window=DAY,
        ),
        subjects.DLQ: cfg(
            subjects.DLQ,
            ["dlq.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=30 * DAY,
            duplicate_window=120.0,
        ),
        # GET /api/jobs lists from here: an entry per job on its project's subject, kept as long
        # as job records are (KV jobs' TTL).
        subjects.JOBINDEX: cfg(
            subjects.JOBINDEX,
            ["jobindex.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=7 * DAY,
            duplicate_window=120.0,
            allow_direct=True,  # pages are read with direct gets (conveyor.shared.bus.streamread)
        ),
        subjects.CONTROL: cfg(
            subjects.CONTROL,
            ["ctl.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=DAY,
            duplicate_window=120.0,
        ),
        # Results waiting for a later attempt (deliverer parking.py): a hold is removed when it
        # fires, the due copy when it is acknowledged. No age limit: a parked result is
        # accepted work.
        subjects.PARKED: cfg(
            subjects.PARKED,
            ["parked.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            allow_msg_schedules=True,
            max_age=0,
            duplicate_window=120.0,
        ),
        subjects.SCHEDULES: cfg(
            subjects.SCHEDULES,
            ["schedules.>"],
            retention=RetentionPolicy.LIMITS,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
            max_age=0,
            duplicate_window=120.0,
        ),
    }


def kv_configs(replicas: int = 1, retention: Retention = DEFAULT_RETENTION) -> dict[str, KeyValueConfig]:
    """All KV buckets, keyed by bucket name."""

    def kv(bucket: str, *, ttl: float | None = None, history: int = 1) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=bucket,
            ttl=ttl,
            history=history,
            storage=StorageType.FILE,
            replicas=replicas,
            max_value_size=2 * MiB,
            # Direct gets (as the Go client's buckets have by default): a read is one raw
            # message instead of a JSON API reply with a base64 body, several times cheaper.
            direct=True,
        )

    return {
        subjects.KV_JOBS: kv(subjects.KV_JOBS, ttl=7 * DAY),
        subjects.KV_CANCELS: kv(subjects.KV_CANCELS, ttl=7 * DAY),
        subjects.KV_APIKEYS: kv(subjects.KV_APIKEYS),
        subjects.KV_RATELIMITS: kv(subjects.KV_RATELIMITS, ttl=2 * DAY),
        subjects.KV_DELIVERIES: kv(subjects.KV_DELIVERIES, ttl=7 * DAY),
        subjects.KV_JOB_LOGS: kv(subjects.KV_JOB_LOGS, ttl=retention.job_logs_s),
        subjects.KV_SITES: kv(subjects.KV_SITES),
        subjects.KV_DEPLOYMENTS: kv(subjects.KV_DEPLOYMENTS, ttl=30 * DAY),
        subjects.KV_DEPLOY_LEASES: kv(subjects.KV_DEPLOY_LEASES),
        subjects.KV_SCHEDULES: kv(subjects.KV_SCHEDULES),
        subjects.KV_SECRETS: kv(subjects.KV_SECRETS),
        subjects.KV_ORGS: kv(subjects.KV_ORGS),
        subjects.KV_PROJECTS: kv(subjects.KV_PROJECTS),
        subjects.KV_INTEGRATION: kv(subjects.KV_INTEGRATION),
        subjects.KV_CONNECTIONS: kv(subjects.KV_CONNECTIONS),
        # A spent state is kept past the longest a state lives (OAUTH_STATE_TTL_S, at most 1 h).
        subjects.KV_OAUTH_STATES: kv(subjects.KV_OAUTH_STATES, ttl=2 * 3600),
        subjects.KV_AGENTS: kv(subjects.KV_AGENTS),
        subjects.KV_AGENT_ROUTES: kv(subjects.KV_AGENT_ROUTES),
        # A project's spend per UTC day and month: kept a year and a bit (a month's record
        # must outlive the month; a day's is small).
        subjects.KV_USAGE: kv(subjects.KV_USAGE, ttl=400 * DAY),
    }


async def ensure_streams(
    js: JetStreamContext,
    names: list[str],
    *,
    replicas: int = 1,
    retention: Retention = DEFAULT_RETENTION,
) -> None:
    """Create or converge the named streams; safe to run from every replica at once."""
    configs = stream_configs(replicas, retention)
    for name in names:
        config = configs[name]
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with another config (an older release, or a replica that won the race
            # with different limits): converge to ours.
            await js.update_stream(config)


async def ensure_kv(
    js: JetStreamContext,
    buckets: list[str],
    *,
    replicas: int = 1,
    retention: Retention = DEFAULT_RETENTION,
) -> dict[str, KeyValue]:
    """Create the named KV buckets if missing and return handles to them."""
    configs = kv_configs(replicas, retention)
    handles: dict[str, KeyValue] = {}
    for bucket in buckets:
        try:
            handles[bucket] = await js.create_key_value(configs[bucket])
        except nats.js.errors.BadRequestError:
            handles[bucket] = await js.key_value(bucket)
            if not await _converge_ttl(js, configs[bucket]):
                log.warning("kv bucket %s exists with another config; using it as it is", bucket)
    return handles


async def _converge_ttl(js: JetStreamContext, config: KeyValueConfig) -> bool:
    """Give a bucket made with another TTL (an earlier release, a changed retention setting)
    ours; True if it was converged. Its other settings are left as they are."""
    info = await js.stream_info(f"KV_{config.bucket}")
    want, have = config.ttl or 0.0, info.config.max_age or 0.0  # 0 and None: no limit
    if abs(want - have) < 0.001:
        return False
    info.config.max_age = want
    if want and (info.config.duplicate_window or 0.0) > want:
        info.config.duplicate_window = want
    await js.update_stream(info.config)
    log.info("kv bucket %s: TTL %.0f s -> %.0f s", config.bucket, have, want)
    return True
