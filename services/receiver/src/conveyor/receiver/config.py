"""Receiver settings: every field maps to an UPPER_CASE env var (or a key of ``[receiver]`` in
the TOML file named by CONVEYOR_CONFIG); lists and tables take JSON from the environment."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

import msgspec

from conveyor.shared.contracts.subjects import is_token
from conveyor.shared.domain.connections import rsa_key_problem
from conveyor.shared.domain.signing import secret_problem
from conveyor.shared.domain.tenancy import Project
from conveyor.shared.runtime.config import BaseSettings, Secret

Scheme = Literal["lovable", "github", "standard"]

LOVABLE_EVENT_TYPES = ["project.created", "project.updated", "code.review_requested", "agent.task_requested"]
GITHUB_EVENT_TYPES = ["pull_request", "push"]
DEFAULT_AGENTS = ("dev", "qa", "architect", "pm", "ux-design-expert", "pr-review")


class WebhookSource(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One sender of webhooks, answering at POST /api/webhooks/{name}."""

    name: str
    scheme: Scheme
    secrets: list[Secret] = []
    """The deployment-wide secrets: the default project's. Any one verifies (rotation: add the
    new one, later drop the old). Empty: only projects with secrets of their own can send."""
    event_types: list[str] = []
    """Accepted event types. Empty: the scheme's default (lovable: its four; github: pull_request,
    push; standard: any well-formed type)."""
    unknown_events: Literal["reject", "ignore"] | None = None
    """What an event type outside ``event_types`` gets: reject = 422, ignore = 202 "ignored".
    Default: ignore for github (GitHub sends every event the hook subscribes to), else reject."""
    allow_ips: list[str] = []
    """Client addresses or CIDRs allowed to send; empty allows any."""
    tolerance_s: int = 300
    """Accepted clock difference for signed timestamps, both ways (lovable, standard)."""
    callback_url: str | None = None
    """Default callback for this source's results (else the deliverer's per-source default)."""

    def __post_init__(self) -> None:
        if not is_token(self.name) or self.name == "test":  # /api/webhooks/test is the test-send API
            raise ValueError(
                f"webhook source name {self.name!r} must match [A-Za-z0-9_-]{{1,128}}, not 'test'"
            )
        for net in self.allow_ips:
            ipaddress.ip_network(net, strict=False)


class Settings(BaseSettings, frozen=True, kw_only=True):
    """Receiver settings (the HTTP edge)."""

    port: int = 3100
    """PORT: the public HTTP port (API, webhooks, health, metrics)."""
    public_url: str = ""
    """PUBLIC_URL: prefix for status_url/stream_url in answers (empty: relative paths)."""

    lovable_webhook_secret: Secret | None = None
    """LOVABLE_WEBHOOK_SECRET: HMAC secret of the lovable source; several comma-separated during a
    rotation. Enough on its own to enable POST /api/webhooks/lovable."""
    lovable_callback_url: str | None = None
    """LOVABLE_CALLBACK_URL: where Lovable results go (used by the deliverer; shown in /health/lovable)."""
    lovable_api_key: Secret | None = None
    """LOVABLE_API_KEY: a static API key for the jobs API (limits of a new key)."""
    github_webhook_secret: Secret | None = None
    """GITHUB_WEBHOOK_SECRET: enables POST /api/webhooks/github with this secret (comma-separated)."""
    webhook_sources: list[WebhookSource] = []
    """WEBHOOK_SOURCES: JSON list (or [[receiver.webhook_sources]] in TOML) of extra sources."""
    trusted_proxies: str = ""
    """TRUSTED_PROXIES: comma-separated CIDRs whose X-Forwarded-For is believed."""
    job_id_secret: Secret | None = None
    """JOB_ID_SECRET: the key job ids are derived with (HMAC-SHA256 of the source and the signed
    delivery id, or of the API key and its Idempotency-Key), so nobody who knows an event id can
    compute its job id. Every replica must have the same one, or none: unset, the first
    receiver to start stores a random one in the KV bucket ``secrets`` and all use that."""

    admin_api_key: Secret | None = None
    """ADMIN_API_KEY: guards /api/admin/keys (no admin API without it, unless admin keys exist)."""
    api_key_per_minute: int = 60
    """API_KEY_PER_MINUTE: default per-key limit for new keys and LOVABLE_API_KEY."""
    api_key_per_day: int = 10_000
    """API_KEY_PER_DAY: default per-key daily limit."""
    apikey_cache_s: float = 5.0
    """APIKEY_CACHE_S: how long a replica trusts its cached copy of a key record (revocations made
    on another replica take effect within this time; on this replica at once)."""

    reads_require_api_key: bool = True
    """READS_REQUIRE_API_KEY: whether GET /api/jobs/{id}[/...] needs a key (the key's project
    must own the job). false: reads without a key are allowed for the default project's jobs
    only, limited per client address (READ_RATE_LIMIT_MAX)."""
    read_rate_limit_max: int = 600
    """READ_RATE_LIMIT_MAX: reads without an API key per RATE_LIMIT_WINDOW_MS per client address."""
    rate_limit_max: int = 100
    """RATE_LIMIT_MAX: webhooks per window per project (the signed body's project_id) or client
    address; 0 = off."""
    rate_limit_window_ms: int = 60_000
    """RATE_LIMIT_WINDOW_MS: the webhook rate-limit window."""

    agents: list[str | dict[str, Any]] = []
    """AGENTS: agents added to the shipped ones (DEFAULT_AGENTS); names, or the executor's agent
    tables (only ``name`` is read here), so one AGENTS value serves both services."""
    max_body_bytes: int = 1024 * 1024
    """MAX_BODY_BYTES: larger bodies get 413 without being read."""
    max_prompt_chars: int = 5000
    """MAX_PROMPT_CHARS: longest prompt POST /api/jobs accepts, and longest field of a webhook's
    body that becomes a job's prompt (prompt, task, instructions, in data or at the top)."""

    max_connections: int = 1000
    """MAX_CONNECTIONS: open client connections this process keeps; one more is answered 503
    (Retry-After, JSON) and closed at once."""
    max_body_bytes_in_flight: int = 16 * 1024 * 1024
    """MAX_BODY_BYTES_IN_FLIGHT: request body bytes held across all connections (a body counts
    from its head, by its Content-Length, until its answer). A request that would pass it is
    answered 503 (Retry-After, JSON) before its body is read. At least MAX_BODY_BYTES."""
    header_timeout_s: float = 10.0
    """HEADER_TIMEOUT_S: how long a connection may take to send a complete request head,
    counted from connecting or from its previous answer (so also how long an idle keep-alive
    connection stays open). Past it the connection is closed."""
    body_timeout_s: float = 30.0
    """BODY_TIMEOUT_S: how long a request's body may take to arrive once its head has. Past it
    the request is answered 408 and the connection closed."""

    fast_webhooks: bool = True
    """FAST_WEBHOOKS: answer plain webhook POSTs on the lean HTTP/1.1 path (listener.py) and
    hand every other connection to aiohttp; false: aiohttp serves everything. Spans being
    exported turns it off too."""
    publish_timeout_s: float = 2.0
    """PUBLISH_TIMEOUT_S: how long a write waits for JetStream before answering 503."""
    retry_after_s: int = 5
    """RETRY_AFTER_S: Retry-After sent with 503 while NATS is unreachable."""
    sse_heartbeat_s: float = 15.0
    """SSE_HEARTBEAT_S: interval of the heartbeat comment on /stream."""
    sse_max_s: float = 3600.0
    """SSE_MAX_S: a stream closes after this long; clients resume with Last-Event-ID."""
    sse_max_streams: int = 500
    """SSE_MAX_STREAMS: Server-Sent Event streams this process serves at once; 429 past it."""
    sse_max_streams_per_client: int = 10
    """SSE_MAX_STREAMS_PER_CLIENT: streams at once per API key, or per client address for
    streams without a key; 429 past it."""
    mcp_max_sessions: int = 1000
    """MCP_MAX_SESSIONS: MCP sessions open at once on /mcp (docs/mcp.md); 503 past it."""
    mcp_max_sessions_per_key: int = 10
    """MCP_MAX_SESSIONS_PER_KEY: MCP sessions open at once per API key; 429 past it."""
    mcp_session_idle_s: float = 1800.0
    """MCP_SESSION_IDLE_S: an MCP session with no request for this long is ended."""
    test_send_wait_s: float = 15.0
    """TEST_SEND_WAIT_S: how long POST /api/webhooks/test waits for the deliverer's outcome
    before answering 202 with a status URL."""
    schedule_min_interval_s: float = 60.0
    """SCHEDULE_MIN_INTERVAL_S: the shortest interval (or cron gap) a schedule may have; 422 below
    it. Never below 1 s, the server's own floor."""
    schedule_max_per_owner: int = 100
    """SCHEDULE_MAX_PER_OWNER: the most schedules one API key may hold (active, paused or ended;
    deleting one frees its place); 409 beyond it. 1 to 10000: the ids are kept in one KV value."""

    cors_origins: list[str] = []
    """CORS_ORIGINS: browser origins allowed for the default project (JSON list)."""
    global_rate_limit_per_minute: int = 0
    """GLOBAL_RATE_LIMIT_PER_MINUTE: jobs, webhooks and schedules all projects together may make
    per minute across every replica, a ceiling above the per-key and per-project limits; 0 = none."""
    unknown_projects: Literal["auto", "reject", "default"] = "auto"
    """UNKNOWN_PROJECTS: a webhook whose signed project (Lovable's project_id, GitHub's repository)
    no project claims: ``reject`` answers 422 unknown_project; ``default`` gives it to the default
    project when it verifies with the source's own secrets; ``auto`` is ``default`` for sources
    that have secrets of their own (deployments configured before projects) and ``reject`` else."""

    oauth_state_secret: Secret | None = None
    """OAUTH_STATE_SECRET: the HMAC key OAuth ``state`` values are signed with (they name the
    project and expire). Without it the OAuth routes answer 409; every replica needs the same."""
    oauth_state_ttl_s: int = 600
    """OAUTH_STATE_TTL_S: how long a started OAuth flow may take to come back (1 to 3600)."""
    oauth_return_url: str = ""
    """OAUTH_RETURN_URL: where a finished OAuth callback sends the browser (303, with ``provider``,
    ``project`` and ``status`` added to the query); empty: the callback answers the integration
    as JSON."""
    github_url: str = "https://github.com"
    """GITHUB_URL: GitHub's web address (the OAuth authorize and token endpoints, App installs)."""
    github_api_url: str = "https://api.github.com"
    """GITHUB_API_URL: GitHub's REST API (who a token is, a user's installations)."""
    github_client_id: str = ""
    """GITHUB_CLIENT_ID: the OAuth app's (or GitHub App's) client id; enables the GitHub OAuth flow."""
    github_client_secret: Secret | None = None
    """GITHUB_CLIENT_SECRET: its client secret."""
    github_scopes: str = "repo"
    """GITHUB_SCOPES: the scopes the OAuth web flow asks for, space-separated."""
    github_app_slug: str = ""
    """GITHUB_APP_SLUG: the GitHub App users install (github.com/apps/<slug>); enables installs."""
    github_app_id: int = 0
    """GITHUB_APP_ID: that App's id, stored with each installation (tokens are minted with it)."""
    github_app_private_key: Secret | None = None
    """GITHUB_APP_PRIVATE_KEY: that App's private key (PEM), sealed into each installation's record."""
    slack_url: str = "https://slack.com"
    """SLACK_URL: where Slack's OAuth authorize page is (/oauth/v2/authorize)."""
    slack_api_url: str = "https://slack.com/api"
    """SLACK_API_URL: Slack's Web API (oauth.v2.access)."""
    slack_client_id: str = ""
    """SLACK_CLIENT_ID: the Slack app's client id; enables the Slack OAuth flow."""
    slack_client_secret: Secret | None = None
    """SLACK_CLIENT_SECRET: its client secret."""
    slack_scopes: str = "chat:write"
    """SLACK_SCOPES: the bot scopes asked for, comma-separated."""

    def __post_init__(self) -> None:
        if not 1 <= self.schedule_max_per_owner <= 10_000:
            raise ValueError("SCHEDULE_MAX_PER_OWNER: give 1 to 10000")
        for net in filter(None, (p.strip() for p in self.trusted_proxies.split(","))):
            ipaddress.ip_network(net, strict=False)
        for agent in self.known_agents:
            if not is_token(agent):
                raise ValueError(f"AGENTS: agent name {agent!r} must match [A-Za-z0-9_-]{{1,128}}")
        for name in (
            "max_connections",
            "sse_max_streams",
            "sse_max_streams_per_client",
            "mcp_max_sessions",
            "mcp_max_sessions_per_key",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.upper()} must be more than 0")
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("MAX_BODY_BYTES_IN_FLIGHT must be at least MAX_BODY_BYTES")
        names = [s.name for s in self.webhook_sources]
        if len(names) != len(set(names)):
            raise ValueError("webhook_sources: each name may appear once")
        # A weak secret lets anyone sign: refuse to start with one, naming the setting.
        for setting, value in (
            ("LOVABLE_WEBHOOK_SECRET", self.lovable_webhook_secret),
            ("GITHUB_WEBHOOK_SECRET", self.github_webhook_secret),
        ):
            if value is not None:
                secrets = split_secrets(value)
                if not secrets:
                    raise ValueError(f"{setting}: is empty (unset it to turn the source off)")
                for i, secret in enumerate(secrets):
                    which = f" (secret {i + 1} of {len(secrets)})" if len(secrets) > 1 else ""
                    check_secret(f"{setting}{which}", secret, standard=False)
        for i, source in enumerate(self.webhook_sources):
            for j, secret in enumerate(source.secrets):
                where = f"WEBHOOK_SOURCES[{i}].secrets[{j}] (source {source.name!r})"
                check_secret(where, secret.reveal(), standard=source.scheme == "standard")
        if self.job_id_secret is not None:
            check_secret("JOB_ID_SECRET", self.job_id_secret.reveal(), standard=False)
        if self.oauth_state_secret is not None:
            check_secret("OAUTH_STATE_SECRET", self.oauth_state_secret.reveal(), standard=False)
        if not 1 <= self.oauth_state_ttl_s <= 3600:
            raise ValueError("OAUTH_STATE_TTL_S: give 1 to 3600")
        if self.github_app_private_key is not None:
            if problem := rsa_key_problem(self.github_app_private_key.reveal()):
                raise ValueError(f"GITHUB_APP_PRIVATE_KEY: {problem}")

    @property
    def known_agents(self) -> list[str]:
        """What POST /api/jobs accepts: the shipped agents, then AGENTS, each once."""
        extra = [a if isinstance(a, str) else str(a.get("name", "")) for a in self.agents]
        return list(dict.fromkeys([*DEFAULT_AGENTS, *extra]))


def split_secrets(value: Secret) -> list[str]:
    """A comma-separated secret setting (several during a rotation), as its secrets."""
    return [s.strip() for s in value.reveal().split(",") if s.strip()]


def check_secret(setting: str, secret: str, *, standard: bool) -> None:
    """ValueError naming ``setting`` (never the value) when ``secret`` is empty, undecodable or
    short (signing.secret_problem)."""
    if problem := secret_problem(secret, standard=standard):
        raise ValueError(f"{setting}: {problem}")


def default_project(settings: Settings) -> Project:
    """The default project as the receiver knows it: the settings that configured Conveyor
    before projects (its webhook secrets stay with the sources they belong to)."""
    return Project.default(
        callback_url=settings.lovable_callback_url,
        cors_origins=list(settings.cors_origins),
        per_minute=0,
        per_day=0,
    )
