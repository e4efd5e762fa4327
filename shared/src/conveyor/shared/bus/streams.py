"""Stream and KV bucket configurations, and the idempotent bootstrap that declares them.

Every service declares what it uses at start. Creating a stream that exists with the same
config is a no-op on the server; one that exists with another config is converged with an
update, so replicas starting at once, or a new release changing a limit, both end in the
same state.
"""

from __future__ import annotations

import logging
from typing import Final

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
MiB: Final = 1024 * 1024

# How long the server remembers Nats-Msg-Id values: a webhook redelivered by its sender inside
# this window is dropped by JetStream itself. Senders retry for minutes to hours; a day covers
# the replay tolerance of every scheme we accept (5 minutes) with a wide margin.
DUPLICATE_WINDOW_S: Final = DAY


def stream_configs(replicas: int = 1) -> dict[str, StreamConfig]:
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
            max_age=7 * DAY,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        subjects.JOBS: cfg(
            subjects.JOBS,
            ["jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=7 * DAY,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        subjects.RESULTS: cfg(
            subjects.RESULTS,
            ["results.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=7 * DAY,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        subjects.DEPLOYS: cfg(
            subjects.DEPLOYS,
            ["deploys.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=30 * DAY,
            duplicate_window=DUPLICATE_WINDOW_S,
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


def kv_configs(replicas: int = 1) -> dict[str, KeyValueConfig]:
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
        subjects.KV_JOB_LOGS: kv(subjects.KV_JOB_LOGS, ttl=7 * DAY),
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


async def ensure_streams(js: JetStreamContext, names: list[str], *, replicas: int = 1) -> None:
    """Create or converge the named streams; safe to run from every replica at once."""
    configs = stream_configs(replicas)
    for name in names:
        config = configs[name]
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with another config (an older release, or a replica that won the race
            # with different limits): converge to ours.
            await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, buckets: list[str], *, replicas: int = 1) -> dict[str, KeyValue]:
    """Create the named KV buckets if missing and return handles to them."""
    configs = kv_configs(replicas)
    handles: dict[str, KeyValue] = {}
    for bucket in buckets:
        try:
            handles[bucket] = await js.create_key_value(configs[bucket])
        except nats.js.errors.BadRequestError:
            log.warning("kv bucket %s exists with another config; using it as it is", bucket)
            handles[bucket] = await js.key_value(bucket)
    return handles
