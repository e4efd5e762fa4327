"""Deliverer settings: env var = field name upper-cased; TOML section [deliverer]."""

from __future__ import annotations

import msgspec

from conveyor.shared.runtime.config import BaseSettings, Secret
from conveyor.shared.runtime.ssrf import IPNetwork, parse_networks


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 3102
    """PORT: health and metrics."""

    callback_timeout_s: float = 10.0
    """CALLBACK_TIMEOUT_S: total time one callback attempt may take (DNS, connect, send, answer)."""
    callback_max_attempts: int = 3
    """CALLBACK_MAX_ATTEMPTS: HTTP attempts before a result is dead-lettered."""
    callback_retry_schedule_s: str = "1,2,4,8"
    """CALLBACK_RETRY_SCHEDULE_S: delay before retry n (comma-separated seconds); past its end
    the last delay doubles, capped by CALLBACK_RETRY_MAX_DELAY_S."""
    callback_retry_jitter: float = 0.2
    """CALLBACK_RETRY_JITTER: each delay is scaled by a random factor in [1 - j, 1 + j]."""
    callback_retry_max_delay_s: float = 600.0
    """CALLBACK_RETRY_MAX_DELAY_S: the longest computed backoff."""
    callback_retry_after_max_s: float = 300.0
    """CALLBACK_RETRY_AFTER_MAX_S: a Retry-After answer is honoured up to this many seconds."""

    lovable_callback_url: str = ""
    """LOVABLE_CALLBACK_URL: where results of source "lovable" go when the job names no URL."""
    callback_default_urls: dict[str, str] = {}
    """CALLBACK_DEFAULT_URLS: JSON {"<source>": "<url>"}: defaults for other sources."""

    callback_signing_secrets: Secret = Secret("")
    """CALLBACK_SIGNING_SECRETS: comma-separated ``whsec_<base64>`` secrets; several during a
    rotation, each producing one signature."""
    callback_endpoint_secrets: Secret = Secret("")
    """CALLBACK_ENDPOINT_SECRETS: JSON {"<url, origin or host>": "whsec_a,whsec_b"}: secrets of
    particular endpoints (exact URL first, then scheme://host[:port], then host)."""
    lovable_webhook_secret: Secret = Secret("")
    """LOVABLE_WEBHOOK_SECRET: used as the signing secret when CALLBACK_SIGNING_SECRETS is empty."""

    callback_allowed_networks: str = ""
    """CALLBACK_ALLOWED_NETWORKS: comma-separated CIDRs that callbacks may reach although they
    are loopback, private, link-local or otherwise non-public (e.g. 127.0.0.0/8 locally)."""

    callback_breaker_threshold: int = 5
    """CALLBACK_BREAKER_THRESHOLD: consecutive failures that open an endpoint's circuit (0: off)."""
    callback_breaker_cooldown_s: float = 30.0
    """CALLBACK_BREAKER_COOLDOWN_S: how long an open circuit pauses deliveries to its endpoint."""

    callback_concurrency: int = 64
    """CALLBACK_CONCURRENCY: callbacks in flight per process."""
    callback_batch: int = 64
    """CALLBACK_BATCH: results fetched from JetStream per pull."""
    callback_max_ack_pending: int = 20_000
    """CALLBACK_MAX_ACK_PENDING: results fetched and not yet settled, across replicas; results
    waiting for a retry count here, so it must be far above the concurrency."""

    progress_callback_timeout_s: float = 5.0
    """PROGRESS_CALLBACK_TIMEOUT_S: one progress callback's time (it is sent once, never retried)."""
    progress_callback_concurrency: int = 32
    """PROGRESS_CALLBACK_CONCURRENCY: progress callbacks in flight per process, on connections
    of their own (results never wait for them); past it, progress is dropped."""
    progress_callback_every_s: float = 1.0
    """PROGRESS_CALLBACK_EVERY_S: the executors send a job's progress at most this often; a
    deliverer drops one arriving less than half of it after the job's last."""

    test_send_max_age_s: float = 300.0
    """TEST_SEND_MAX_AGE_S: a test-send request older than this is answered "expired", not sent."""
    dlq_gauge_interval_s: float = 5.0
    """DLQ_GAUGE_INTERVAL_S: how often dlq_depth_messages is refreshed from the DLQ stream."""

    def __post_init__(self) -> None:
        # Fail at start, naming the setting, rather than at the first callback.
        retry_schedule(self)
        allowed_networks(self)
        endpoint_secrets(self)
        if not signing_secrets(self):
            raise ValueError(
                "CALLBACK_SIGNING_SECRETS: set at least one whsec_<base64> secret "
                "(or LOVABLE_WEBHOOK_SECRET): callbacks are always signed"
            )
        for name in (
            "callback_timeout_s",
            "callback_breaker_cooldown_s",
            "dlq_gauge_interval_s",
            "progress_callback_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()}: must be > 0")
        for name in ("callback_max_attempts", "callback_concurrency", "callback_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()}: must be >= 1")
        if not 0 <= self.callback_retry_jitter < 1:
            raise ValueError("CALLBACK_RETRY_JITTER: must be in [0, 1)")


def retry_schedule(settings: Settings) -> list[float]:
    try:
        delays = [float(p) for p in settings.callback_retry_schedule_s.split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"CALLBACK_RETRY_SCHEDULE_S: not comma-separated seconds: {settings.callback_retry_schedule_s!r}"
        ) from None
    if not delays or any(d < 0 for d in delays):
        raise ValueError("CALLBACK_RETRY_SCHEDULE_S: give at least one delay, none negative")
    return delays


def allowed_networks(settings: Settings) -> list[IPNetwork]:
    return parse_networks(settings.callback_allowed_networks, "CALLBACK_ALLOWED_NETWORKS")


def _split_secrets(value: str, setting: str) -> list[str]:
    from conveyor.shared.domain.signing import secret_problem

    secrets = [s.strip() for s in value.split(",") if s.strip()]
    for i, s in enumerate(secrets):
        # Empty, undecodable or short key material: anyone could sign as us (never the value).
        if problem := secret_problem(s, standard=True):
            raise ValueError(f"{setting}: secret {i + 1} of {len(secrets)} {problem}")
    return secrets


def signing_secrets(settings: Settings) -> list[str]:
    """The default secrets; LOVABLE_WEBHOOK_SECRET (used as raw bytes) when none are set."""
    configured = _split_secrets(settings.callback_signing_secrets.reveal(), "CALLBACK_SIGNING_SECRETS")
    if configured:
        return configured
    from conveyor.shared.domain.signing import secret_problem

    fallback = settings.lovable_webhook_secret.reveal()
    if not fallback:
        return []
    if problem := secret_problem(fallback, standard=True):
        raise ValueError(
            f"LOVABLE_WEBHOOK_SECRET (signs callbacks while CALLBACK_SIGNING_SECRETS is empty): {problem}"
        )
    return [fallback]


def endpoint_secrets(settings: Settings) -> dict[str, list[str]]:
    raw = settings.callback_endpoint_secrets.reveal().strip()
    if not raw:
        return {}
    try:
        table = msgspec.json.decode(raw, type=dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise ValueError('CALLBACK_ENDPOINT_SECRETS: want JSON {"<url or host>": "whsec_...,..."}') from None
    return {
        key.rstrip("/"): _split_secrets(value, "CALLBACK_ENDPOINT_SECRETS")
        for key, value in table.items()
        if value.strip()
    }
