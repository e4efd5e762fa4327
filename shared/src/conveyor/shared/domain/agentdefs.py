"""Agents as data: the definitions a project makes through the API and its routes.

A definition lives in KV ``agents`` under ``<project>.<id>`` (a project id holds no dot, so
the key names its owner) and is versioned: every change is a compare-and-set that adds one to
``version``, and a job records the version it ran. A project's routes (event type -> agents)
live in KV ``agent_routes`` under the project id. Executors mirror both buckets and resolve a
job's agent in its own project only, so one project's definition is invisible to another.

What a user may set is an agent's behaviour, never where it runs or with which credentials:
``command``, ``base_url`` and ``api_key`` stay the operator's configuration.

The built-in agents (the executor's configuration) and the built-in pipelines below appear in
every project as read-only definitions.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import Message

Kind = Literal["agent", "pipeline"]
BackendChoice = Literal["auto", "openai", "anthropic", "builtin"]
OnFailure = Literal["stop", "continue"]

MAX_RETRIES: Final = 3
DEFAULT_RETRIES: Final = 2
# Offline analyses the builtin backend runs (the executor checks this list against its own).
BUILTIN_ANALYSES: Final = ("architect", "dev", "noop", "pm", "qa", "sleep", "ux-design-expert")
TOOLS: Final = ("delegate", "github", "http_fetch", "slack")
MAX_STAGES: Final = 10
MAX_STAGE_AGENTS: Final = 8
MAX_DELEGATES: Final = 8
# POST /api/agents/delegate publishes events.api.<this>: the router fans it out to the agents named.
DELEGATE_EVENT: Final = "agents.delegate"

_HOST = re.compile(
    r"^(?=.{1,253}\Z)(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)
_ROUTE_KEY = re.compile(r"^(\*|([a-z0-9_-]{1,64}:)?[A-Za-z0-9_.-]{1,128})\Z")

AgentId = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$(?!\n)", description="[A-Za-z0-9_-], 1-64")
]
TimeoutMs = Annotated[int, Meta(ge=1000, le=86_400_000)]
Retries = Annotated[int, Meta(ge=0, le=MAX_RETRIES)]


class Stage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One stage of a pipeline: its agents run in parallel and see the earlier stages' results."""

    agents: list[str]
    timeout_ms: int | None = None  # the stage's deadline (default: its slowest agent's attempts)
    on_failure: OnFailure = "stop"  # a stage with a failed agent: end the pipeline, or go on


class AgentFields(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a user may set on a definition (the body of PUT /api/agents/{id})."""

    kind: Kind = "agent"
    description: Annotated[str, Meta(max_length=500)] = ""
    backend: BackendChoice = "auto"
    builtin: str | None = None  # the offline analysis when the backend is (or falls back to) builtin
    model: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    system_prompt: Annotated[str, Meta(max_length=20_000)] | None = None
    timeout_ms: TimeoutMs | None = None
    retries: Retries | None = None
    tools: list[str] = []
    allowed_hosts: list[str] = []
    max_tool_calls: Annotated[int, Meta(ge=0, le=100)] | None = None
    max_run_tokens: Annotated[int, Meta(ge=1)] | None = None
    stream: bool = False
    stages: list[Stage] = []


class AgentCreate(AgentFields, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/agents: a new definition in the key's project (or ``project``)."""

    id: AgentId
    project: str | None = None


class AgentDefinition(AgentFields, frozen=True, kw_only=True):
    """KV ``agents`` under ``<project>.<id>``; also how the API shows a definition."""

    id: str
    project: str
    version: int = 1
    read_only: bool = False  # a built-in: PUT and DELETE answer 409
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


class RoutesBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PUT /api/routes: event type (or ``<source>:<type>``, or ``*``) -> agents of the project."""

    routes: dict[str, list[str]]
    project: str | None = None


class ProjectRoutes(Message, frozen=True, kw_only=True):
    """KV ``agent_routes`` under the project id: consulted by the router before the defaults."""

    project: str
    routes: dict[str, list[str]] = {}
    version: int = 0
    updated_at: dt.datetime | None = None


definition_decoder = msgspec.json.Decoder(AgentDefinition)
routes_decoder = msgspec.json.Decoder(ProjectRoutes)


def definition_key(project: str, agent_id: str) -> str:
    return f"{project}.{agent_id}"


def split_key(key: str) -> tuple[str, str] | None:
    project, _, agent_id = key.partition(".")
    return (project, agent_id) if project and agent_id else None


FULL_PIPELINE = AgentDefinition(
    id="full-pipeline",
    project="*",
    kind="pipeline",
    description="architect, then pm and ux-design-expert in parallel, then dev, then qa; "
    "each stage sees the earlier stages' results",
    stages=[
        Stage(agents=["architect"]),
        Stage(agents=["pm", "ux-design-expert"]),
        Stage(agents=["dev"]),
        Stage(agents=["qa"]),
    ],
    read_only=True,
)
BUILTIN_PIPELINES: Final[dict[str, AgentDefinition]] = {FULL_PIPELINE.id: FULL_PIPELINE}


class DefinitionError(ValueError):
    """A definition that cannot run; ``field`` names where (``stages[1].agents[0]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check(fields: AgentFields, agent_id: str, runnable: frozenset[str], pipelines: frozenset[str]) -> None:
    """Raise DefinitionError naming the first field that is wrong. ``runnable``: agents the
    project may run (built-ins it may use and its own definitions); ``pipelines``: which of
    those are pipelines (a stage runs agents, not pipelines)."""
    if fields.kind == "pipeline":
        if not fields.stages:
            raise DefinitionError("stages", "a pipeline needs at least one stage")
        if len(fields.stages) > MAX_STAGES:
            raise DefinitionError("stages", f"at most {MAX_STAGES} stages")
        for name in ("tools", "allowed_hosts", "system_prompt", "model", "builtin", "stream"):
            if getattr(fields, name):
                raise DefinitionError(name, "set it on the agents a pipeline runs, not on the pipeline")
        for i, stage in enumerate(fields.stages):
            where = f"stages[{i}]"
            if not stage.agents:
                raise DefinitionError(f"{where}.agents", "a stage runs at least one agent")
            if len(stage.agents) > MAX_STAGE_AGENTS:
                raise DefinitionError(f"{where}.agents", f"at most {MAX_STAGE_AGENTS} agents")
            if len(set(stage.agents)) != len(stage.agents):
                raise DefinitionError(f"{where}.agents", "an agent is named twice")
            for j, name in enumerate(stage.agents):
                at = f"{where}.agents[{j}]"
                if name == agent_id or name in pipelines:
                    raise DefinitionError(at, f"{name[:64]!r} is a pipeline; a stage runs agents")
                if name not in runnable:
                    raise DefinitionError(at, f"unknown agent {name[:64]!r}")
            if stage.timeout_ms is not None and not 1000 <= stage.timeout_ms <= 86_400_000:
                raise DefinitionError(f"{where}.timeout_ms", "between 1000 and 86400000")
        return
    if fields.stages:
        raise DefinitionError("stages", 'only a definition of kind "pipeline" has stages')
    if fields.backend == "builtin" and (fields.builtin or agent_id) not in BUILTIN_ANALYSES:
        raise DefinitionError(
            "builtin", f"the builtin backend runs one of {', '.join(BUILTIN_ANALYSES)} (set builtin)"
        )
    if fields.builtin is not None and fields.builtin not in BUILTIN_ANALYSES:
        raise DefinitionError("builtin", f"one of {', '.join(BUILTIN_ANALYSES)}")
    for i, tool in enumerate(fields.tools):
        if tool not in TOOLS:
            raise DefinitionError(f"tools[{i}]", f"unknown tool {tool[:64]!r}; one of {', '.join(TOOLS)}")
    if len(set(fields.tools)) != len(fields.tools):
        raise DefinitionError("tools", "a tool is named twice")
    if len(fields.allowed_hosts) > 100:
        raise DefinitionError("allowed_hosts", "at most 100 hosts")
    for i, host in enumerate(fields.allowed_hosts):
        if not _HOST.match(host):
            raise DefinitionError(f"allowed_hosts[{i}]", "a lower-case host name (*.example.com allowed)")
    if fields.allowed_hosts and "http_fetch" not in fields.tools:
        raise DefinitionError("allowed_hosts", "only http_fetch reaches hosts: add it to tools")


def check_routes(routes: dict[str, list[str]], runnable: frozenset[str]) -> None:
    if len(routes) > 200:
        raise DefinitionError("routes", "at most 200 routes")
    for key, names in routes.items():
        where = f"routes.{key[:140]}"
        if not _ROUTE_KEY.match(key):
            raise DefinitionError(where, 'an event type, "<source>:<type>" or "*"')
        if not names:
            raise DefinitionError(where, "name at least one agent")
        if len(set(names)) != len(names):
            raise DefinitionError(where, "an agent is named twice")
        for i, name in enumerate(names):
            if name not in runnable:
                raise DefinitionError(f"{where}[{i}]", f"unknown agent {name[:64]!r}")


def is_agent_id(value: str) -> bool:
    return subjects.is_token(value) and len(value) <= 64
