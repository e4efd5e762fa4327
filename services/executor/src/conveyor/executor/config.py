"""Executor settings: timeouts, concurrency, LLM endpoints, the agent registry and the routes.

Env var = field name upper-cased; the TOML file named by CONVEYOR_CONFIG may hold the same
keys in its ``[executor]`` table, with agents as ``[[executor.agents]]`` and routes as
``[executor.routes]``. Structured values given in the environment (AGENTS, ROUTES) are JSON.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from conveyor.executor.pricing import ModelPrice
from conveyor.shared.runtime.config import BaseSettings, Secret

BackendName = Literal["auto", "openai", "anthropic", "command", "builtin"]

# Route value standing for "the agent(s) named in the event's payload".
PAYLOAD_AGENT = "$payload"


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent as configured. Unset fields (None) come from the shipped agent of the same
    name, else from the executor-wide settings."""

    name: str
    backend: BackendName | None = None
    model: str | None = None
    system_prompt: str | None = None
    timeout_ms: int | None = None
    retries: int | None = None
    concurrency: int | None = None
    builtin: str | None = None  # which offline analysis the builtin backend runs (default: name)
    base_url: str | None = None
    api_key: Secret | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    command: list[str] | None = None
    env: dict[str, str] | None = None  # fixed extra environment for the command backend
    env_allowlist: list[str] | None = None
    instant: bool | None = None  # returns in microseconds: no separate "processing" write
    description: str | None = None
    tools: list[str] | None = None  # tools an LLM agent may call (http_fetch, github, slack, delegate)
    allowed_hosts: list[str] | None = None  # hosts http_fetch may reach
    max_tool_calls: int | None = None  # per run
    max_run_tokens: int | None = None  # input + output tokens per run, over all its responses
    stream: bool | None = None  # stream the model's answer (tokens reach the job's SSE stream)


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 3101
    aios_agent_timeout_ms: int = 900_000
    """AIOS_AGENT_TIMEOUT_MS: an agent's time limit per attempt unless the agent sets its own."""
    concurrency: int = 5
    """CONCURRENCY: jobs one executor runs at once (replicas share the work)."""
    router_concurrency: int = 256
    """ROUTER_CONCURRENCY: events routed at once. Routing an event is a publish and a wait for
    its PubAck, so a slot costs almost nothing while it waits; with 32 the router fell behind
    the workers under load."""
    ack_wait_s: float = 30.0
    """ACK_WAIT_S: JetStream AckWait for jobs and routed events; in-progress acks keep a live job."""
    retry_base_ms: int = 1000
    """RETRY_BASE_MS: first retry delay; doubles per attempt (with jitter)."""
    retry_cap_ms: int = 30_000
    """RETRY_CAP_MS: the longest backoff between attempts."""
    retry_after_cap_ms: int = 300_000
    """RETRY_AFTER_CAP_MS: the longest Retry-After honoured from an LLM API."""
    fanout_deadline_ms: int | None = None
    """FANOUT_DEADLINE_MS: a fan-out parent's deadline (default: its slowest child's timeout
    times its attempts, plus a minute)."""
    llm_backend: Literal["auto", "openai", "anthropic", "builtin"] = "auto"
    """LLM_BACKEND: what agents with backend "auto" use; auto = anthropic if ANTHROPIC_API_KEY,
    else openai if OPENAI_API_KEY or OPENAI_BASE_URL, else builtin."""
    openai_base_url: str | None = None
    openai_api_key: Secret | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_base_url: str | None = None
    anthropic_api_key: Secret | None = None
    anthropic_model: str = "claude-sonnet-4-5"
    llm_max_tokens: int = 4096
    llm_connect_timeout_ms: int = 10_000
    command_workdir: str = ""
    """COMMAND_WORKDIR: parent of the per-job working directories (default: the temp dir)."""
    command_env_allowlist: list[str] = msgspec.field(default_factory=lambda: ["PATH", "LANG", "LC_ALL", "TZ"])
    max_output_bytes: int = 4 * 1024 * 1024
    """MAX_OUTPUT_BYTES: the most a command agent may write to stdout (or an LLM answer)."""
    github_api_url: str = "https://api.github.com"
    """GITHUB_API_URL: the GitHub REST API the github tool and the pr-review agent call, and where
    a project's GitHub App installation tokens are minted (POST /app/installations/{id}/access_tokens)."""
    github_token: Secret | None = None
    """GITHUB_TOKEN: a deployment-wide GitHub token, used only for a job whose project has no
    GitHub integration connected (a single-team deployment); unset: such jobs post nothing."""
    slack_api_url: str = "https://slack.com/api"
    """SLACK_API_URL: the Slack Web API the slack tool calls."""
    tool_allowed_networks: str = ""
    """TOOL_ALLOWED_NETWORKS: comma-separated CIDRs http_fetch may reach although they are
    loopback, private or otherwise non-public (the deliverer's SSRF guard, as for callbacks)."""
    tool_timeout_s: float = 30.0
    """TOOL_TIMEOUT_S: the longest one tool call's HTTP request may take (within the run's time)."""
    http_fetch_max_bytes: int = 1024 * 1024
    """HTTP_FETCH_MAX_BYTES: the most of a body http_fetch reads; the rest is cut off."""
    agents: list[AgentConfig | str] = []
    """AGENTS: agents added to, or overriding fields of, the shipped ones. A bare name is an agent
    with every field at its default (so the receiver's list of names is valid here too)."""
    routes: dict[str, list[str]] = {}
    """ROUTES: event type (or "<source>:<type>", or "*") -> agents; merged over the defaults."""
    prices: dict[str, ModelPrice] = {}
    """PRICES: model -> {input_per_mtok_usd, output_per_mtok_usd}, merged over the defaults
    (executor pricing.py); a model without a price costs 0 (its tokens are still counted)."""
    usage_flush_s: float = 1.0
    """USAGE_FLUSH_S: how often usage is merged into KV ``usage`` (budgets see other replicas'
    spend this late)."""
    output_batch_ms: int = 100
    """OUTPUT_BATCH_MS: streamed text is published to SSE readers in batches this far apart."""
    progress_callback_every_s: float = 1.0
    """PROGRESS_CALLBACK_EVERY_S: at most one progress callback per job this often."""

    def __post_init__(self) -> None:
        # Fail at start with one line naming the problem (msgspec turns ValueError into a
        # ValidationError, which the runner reports as a ConfigError).
        from conveyor.executor.registry import build_registry, build_routes

        if self.concurrency < 1 or self.router_concurrency < 1:
            raise ValueError("CONCURRENCY and ROUTER_CONCURRENCY must be at least 1")
        if self.ack_wait_s < 1:
            raise ValueError("ACK_WAIT_S must be at least 1 second")
        from conveyor.shared.runtime.ssrf import parse_networks

        parse_networks(self.tool_allowed_networks, "TOOL_ALLOWED_NETWORKS")
        agents = build_registry(self)
        build_routes(self, agents)
