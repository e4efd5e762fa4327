"""The agent registry and the routes: shipped defaults merged with configuration, resolved once.

An agent's backend is decided here, at start: "auto" means the configured LLM (Anthropic
when ANTHROPIC_API_KEY is set, else an OpenAI-compatible API when OPENAI_API_KEY or
OPENAI_BASE_URL is set), otherwise the offline builtin analysis of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from conveyor.executor.builtin import ANALYSES
from conveyor.executor.config import PAYLOAD_AGENT, AgentConfig
from conveyor.executor.tools import TOOL_NAMES
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.agentdefs import BUILTIN_PIPELINES
from conveyor.shared.runtime.config import Secret

if TYPE_CHECKING:
    from conveyor.executor.config import Settings

MAX_RETRIES = 3  # the product's rule: at most 3 retries (4 attempts)
DEFAULT_RETRIES = 2

_OUTPUT = (
    " Answer with one JSON object only, no prose around it: "
    '{"summary": string, "files_changed": [string], "suggestions": [string], "code_diff": string (optional, '
    "a unified diff)}."
)

SHIPPED: tuple[AgentConfig, ...] = (
    AgentConfig(
        name="dev",
        backend="auto",
        description="reviews a change (unified diff) for size, risky patterns and missing tests",
        system_prompt="You are a senior software engineer reviewing a code change. Point out bugs, "
        "risky patterns, missing tests and simpler alternatives; propose a fix as a diff when you can."
        + _OUTPUT,
    ),
    AgentConfig(
        name="qa",
        backend="auto",
        description="lints submitted Python files and scans every file for committed secrets",
        system_prompt="You are a QA engineer. Find defects, lint problems, committed secrets and "
        "untested behaviour in the submitted files, and list concrete test cases to add." + _OUTPUT,
    ),
    AgentConfig(
        name="architect",
        backend="auto",
        description="summarises a project's structure, languages, entry points and dependencies",
        system_prompt="You are a software architect. Summarise the project's structure, components "
        "and dependencies, and name the structural risks and next steps." + _OUTPUT,
    ),
    AgentConfig(
        name="pm",
        backend="auto",
        description="turns a request into user stories, acceptance criteria and open questions",
        system_prompt="You are a product manager. Turn the request into prioritised user stories with "
        "acceptance criteria, and list the ambiguities to resolve." + _OUTPUT,
    ),
    AgentConfig(
        name="ux-design-expert",
        backend="auto",
        description="reviews submitted HTML/JSX/CSS for accessibility and usability problems",
        system_prompt="You are a UX design expert. Review the interface for accessibility (WCAG 2.2 AA) "
        "and usability problems and propose concrete fixes." + _OUTPUT,
    ),
    AgentConfig(
        name="pr-review",
        backend="auto",
        description="reviews a GitHub pull request's diff and posts the review as a comment",
        system_prompt=(
            "You review GitHub pull requests. The input is GitHub's pull_request webhook. If its action "
            "is not opened or synchronize, answer at once that there is nothing to review. Otherwise "
            "read the change with github_pull_request_diff (repo = repository.full_name, number = "
            "number), review it like a senior engineer (bugs, risky patterns, missing tests, simpler "
            "alternatives), then post your review with github_post_comment as concise Markdown. If "
            "the comment cannot be posted, say so in the summary."
        )
        + _OUTPUT,
        tools=["github"],
    ),
    AgentConfig(
        name="noop",
        backend="builtin",
        description="returns at once (benchmarks)",
        retries=0,
        instant=True,
    ),
    AgentConfig(
        name="sleep",
        backend="builtin",
        description='waits {"ms": N} milliseconds, then completes (scale benchmarks)',
    ),
)

DEFAULT_ROUTES: dict[str, tuple[str, ...]] = {
    "code.review_requested": ("dev", "qa"),
    "agent.task_requested": (PAYLOAD_AGENT,),
    "project.created": ("architect",),
    # An update is a change to review; dev reviews a diff when there is one, else the files.
    "project.updated": ("dev",),
    # GitHub's pull_request webhook (X-GitHub-Event): opened and synchronize are reviewed.
    "pull_request": ("pr-review",),
}


@dataclass(frozen=True)
class Agent:
    """A resolved agent: every field concrete, its backend decided."""

    name: str
    backend: str  # openai | anthropic | command | builtin
    timeout_s: float
    retries: int
    system_prompt: str = ""
    model: str | None = None
    concurrency: int | None = None
    builtin: str = ""
    base_url: str | None = None
    api_key: Secret | None = None
    max_tokens: int = 4096
    temperature: float | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    env_allowlist: tuple[str, ...] = ()
    instant: bool = False
    description: str = ""
    tools: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_tool_calls: int = 20
    max_run_tokens: int | None = None
    stream: bool = False
    version: int | None = None  # a project's definition: the version resolved
    project: str | None = None  # a project's definition: its project (None: the deployment's)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def _merge(base: AgentConfig | None, override: AgentConfig) -> AgentConfig:
    if base is None:
        return override
    changes = {
        f: getattr(override, f)
        for f in override.__struct_fields__
        if f != "name" and getattr(override, f) is not None
    }
    return msgspec.structs.replace(base, **changes)


def _auto_backend(settings: Settings) -> str:
    if settings.llm_backend != "auto":
        return settings.llm_backend
    if settings.anthropic_api_key:
        return "anthropic"
    if settings.openai_api_key or settings.openai_base_url:
        return "openai"
    return "builtin"


def build_registry(settings: Settings) -> dict[str, Agent]:
    """Resolve shipped + configured agents; raise ValueError naming the agent and the problem."""
    configs: dict[str, AgentConfig] = {a.name: a for a in SHIPPED}
    for item in settings.agents:
        cfg = AgentConfig(name=item) if isinstance(item, str) else item
        configs[cfg.name] = _merge(configs.get(cfg.name), cfg)
    return {name: resolve_agent(settings, name, cfg) for name, cfg in configs.items()}


def resolve_agent(settings: Settings, name: str, cfg: AgentConfig) -> Agent:
    """One agent with every field concrete; ValueError naming the agent and the problem."""
    where = f"agent {name!r}"
    if not subjects.is_token(name):
        raise ValueError(f"{where}: names are letters, digits, '-' and '_' only")
    backend = cfg.backend or "auto"
    builtin = cfg.builtin or name
    if backend == "auto":
        backend = _auto_backend(settings)
    if backend == "builtin" and builtin not in ANALYSES:
        why = "there is" if cfg.backend == "builtin" else "no LLM is configured and there is"
        raise ValueError(
            f"{where}: {why} no builtin analysis named {builtin!r} "
            f"(set backend, or builtin = one of {sorted(ANALYSES)})"
        )
    if backend == "command" and not cfg.command:
        raise ValueError(f"{where}: backend 'command' needs command = [program, args...]")
    retries = DEFAULT_RETRIES if cfg.retries is None else cfg.retries
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"{where}: retries must be 0..{MAX_RETRIES}")
    timeout_ms = cfg.timeout_ms if cfg.timeout_ms is not None else settings.aios_agent_timeout_ms
    if timeout_ms <= 0:
        raise ValueError(f"{where}: timeout_ms must be positive")
    if cfg.concurrency is not None and cfg.concurrency < 1:
        raise ValueError(f"{where}: concurrency must be at least 1")
    for tool in cfg.tools or ():
        if tool not in TOOL_NAMES:
            raise ValueError(f"{where}: unknown tool {tool!r} (tools: {', '.join(TOOL_NAMES)})")
    if "http_fetch" in (cfg.tools or ()) and not cfg.allowed_hosts:
        raise ValueError(f"{where}: tool 'http_fetch' needs allowed_hosts (the hosts it may fetch from)")
    if cfg.max_tool_calls is not None and cfg.max_tool_calls < 0:
        raise ValueError(f"{where}: max_tool_calls must be 0 or more")
    if cfg.max_run_tokens is not None and cfg.max_run_tokens < 1:
        raise ValueError(f"{where}: max_run_tokens must be at least 1")
    if backend == "openai":
        model = cfg.model or settings.openai_model
        base_url = cfg.base_url or settings.openai_base_url or "https://api.openai.com/v1"
        api_key = cfg.api_key or settings.openai_api_key
    elif backend == "anthropic":
        model = cfg.model or settings.anthropic_model
        base_url = cfg.base_url or settings.anthropic_base_url or "https://api.anthropic.com"
        api_key = cfg.api_key or settings.anthropic_api_key
        if not api_key:
            raise ValueError(f"{where}: backend 'anthropic' needs ANTHROPIC_API_KEY or api_key")
    else:
        model, base_url, api_key = cfg.model, cfg.base_url, cfg.api_key
    return Agent(
        name=name,
        backend=backend,
        timeout_s=timeout_ms / 1000,
        retries=retries,
        system_prompt=cfg.system_prompt or f"You are the {name} agent." + _OUTPUT,
        model=model,
        concurrency=cfg.concurrency,
        builtin=builtin,
        base_url=base_url.rstrip("/") if base_url else None,
        api_key=api_key,
        max_tokens=cfg.max_tokens or settings.llm_max_tokens,
        temperature=cfg.temperature,
        command=tuple(cfg.command or ()),
        env=dict(cfg.env or {}),
        env_allowlist=tuple(
            cfg.env_allowlist if cfg.env_allowlist is not None else settings.command_env_allowlist
        ),
        instant=bool(cfg.instant) and backend == "builtin",
        description=cfg.description or "",
        tools=tuple(cfg.tools or ()),
        allowed_hosts=tuple(cfg.allowed_hosts or ()),
        max_tool_calls=cfg.max_tool_calls if cfg.max_tool_calls is not None else 20,
        max_run_tokens=cfg.max_run_tokens,
        stream=bool(cfg.stream),
    )


def build_routes(settings: Settings, agents: dict[str, Agent]) -> dict[str, tuple[str, ...]]:
    """Default routes overlaid with configured ones; every named agent must exist."""
    routes = dict(DEFAULT_ROUTES)
    for key, names in settings.routes.items():
        routes[key] = tuple(names)
    for key, names in routes.items():
        for n in names:
            if n != PAYLOAD_AGENT and n not in agents and n not in BUILTIN_PIPELINES:
                raise ValueError(f"route {key!r}: unknown agent {n!r} (known: {', '.join(sorted(agents))})")
        if len(set(names)) != len(names):
            raise ValueError(f"route {key!r}: an agent is named twice")
    return routes


def route_for(routes: dict[str, tuple[str, ...]], source: str, event_type: str) -> tuple[str, ...]:
    """The most specific route: "<source>:<type>", then "<type>", then "*"; () when none."""
    return routes.get(f"{source}:{event_type}") or routes.get(event_type) or routes.get("*") or ()
