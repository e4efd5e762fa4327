"""A project's agent definitions and routes, as the executor resolves them at run time.

Both buckets are mirrored in memory (conveyor.shared.bus.kvmirror) like the projects bucket: the
router and the workers resolve a job's agent without a round trip, and a definition saved on
any receiver reaches every executor in milliseconds. A job that names a version newer than
the mirror holds (the receiver just wrote it) reads the bucket once instead of waiting.

Resolution order: the deployment's agents (configuration), the built-in pipelines, then the
job's project's own definitions, only its own: ``<project>.<id>``.
"""

from __future__ import annotations

import dataclasses
import logging

from conveyor.executor.config import AgentConfig, Settings
from conveyor.executor.registry import Agent, resolve_agent
from conveyor.shared import bus
from conveyor.shared.bus import KvMirror
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.agentdefs import (
    BUILTIN_PIPELINES,
    AgentDefinition,
    ProjectRoutes,
    definition_decoder,
    definition_key,
    routes_decoder,
)

log = logging.getLogger(__name__)

PIPELINE = "pipeline"  # the backend name a pipeline's job shows


class Definitions:
    def __init__(
        self,
        settings: Settings,
        agents: dict[str, Agent],
        kv_agents: bus.Kv | None = None,
        kv_routes: bus.Kv | None = None,
    ) -> None:
        self.settings = settings
        self.agents = agents
        self.kv = kv_agents
        self.defs: KvMirror[AgentDefinition] | None = (
            KvMirror(kv_agents, subjects.KV_AGENTS, definition_decoder.decode) if kv_agents else None
        )
        self.routes: KvMirror[ProjectRoutes] | None = (
            KvMirror(kv_routes, subjects.KV_AGENT_ROUTES, routes_decoder.decode) if kv_routes else None
        )
        self._resolved: dict[tuple[str, int], Agent] = {}

    async def start(self) -> None:
        for mirror in (self.defs, self.routes):
            if mirror is not None:
                await mirror.start()

    async def stop(self) -> None:
        for mirror in (self.defs, self.routes):
            if mirror is not None:
                await mirror.stop()

    # --- lookups ---------------------------------------------------------------------------------

    def definition(self, project: str, name: str) -> AgentDefinition | None:
        """A built-in pipeline or the project's own definition (from the mirror)."""
        if name in self.agents:
            return None
        if name in BUILTIN_PIPELINES:
            return BUILTIN_PIPELINES[name]
        if self.defs is None:
            return None
        return self.defs.values.get(definition_key(project, name))

    def own(self, project: str, name: str) -> bool:
        """Whether ``name`` is one of the project's definitions (not a deployment's agent)."""
        return name not in self.agents and self.definition(project, name) is not None

    def known(self, project: str, name: str) -> bool:
        return name in self.agents or self.definition(project, name) is not None

    def lookup(self, project: str, name: str) -> Agent | None:
        """The agent as the router and the fan-out need it (a pipeline as an agent whose time
        is its stages' sum); None when the project has no such agent."""
        if (agent := self.agents.get(name)) is not None:
            return agent
        found = self.definition(project, name)
        return None if found is None else self.agent_of(found)

    async def fetch(self, project: str, name: str, version: int | None) -> Agent | None:
        """As :meth:`lookup`, reading the bucket when the mirror lacks the definition or holds
        an older version than the job names."""
        if (agent := self.agents.get(name)) is not None:
            return agent
        found = self.definition(project, name)
        if self.kv is not None and (found is None or (version is not None and found.version < version)):
            key = definition_key(project, name)
            try:
                entry = await self.kv.get(key)
            except bus.NotFound:
                entry = None
            if entry is not None and entry.value:
                read = definition_decoder.decode(entry.value)
                held = self.defs.values.get(key) if self.defs is not None else None
                if self.defs is not None and (held is None or held.version < read.version):
                    self.defs.put_local(key, read)  # the pipeline's plan is read from the mirror next
                found = read
        return None if found is None else self.agent_of(found)

    def agent_of(self, d: AgentDefinition) -> Agent:
        """A definition resolved like a configured agent (ValueError when it cannot run here,
        e.g. an LLM backend that is not configured)."""
        key = (definition_key(d.project, d.id), d.version)
        if (cached := self._resolved.get(key)) is not None:
            return cached
        if d.kind == "pipeline":
            agent = Agent(
                name=d.id,
                backend=PIPELINE,
                timeout_s=sum(self.stage_budget_s(d.project, s.agents, s.timeout_ms) for s in d.stages),
                retries=0,
                description=d.description,
                version=None if d.read_only else d.version,
                project=None if d.read_only else d.project,
            )
        else:
            # A project chooses among the LLMs the operator configured, never an endpoint: an
            # API the deployment has no settings for is refused rather than called keyless.
            configured = {
                "openai": bool(self.settings.openai_api_key or self.settings.openai_base_url),
                "anthropic": bool(self.settings.anthropic_api_key),
            }
            if not configured.get(d.backend, True):
                raise ValueError(
                    f"agent {d.id!r}: backend {d.backend!r} is not configured in this deployment"
                )
            cfg = AgentConfig(
                name=d.id,
                backend=d.backend,
                builtin=d.builtin,
                model=d.model,
                system_prompt=d.system_prompt,
                timeout_ms=d.timeout_ms,
                retries=d.retries,
                description=d.description,
                tools=list(d.tools),
                allowed_hosts=list(d.allowed_hosts),
                max_tool_calls=d.max_tool_calls,
                max_run_tokens=d.max_run_tokens,
                stream=d.stream,
            )
            agent = replace_agent(resolve_agent(self.settings, d.id, cfg), d)
        if len(self._resolved) > 10_000:
            self._resolved.clear()  # versions replaced long ago: start again
        self._resolved[key] = agent
        return agent

    def stage_budget_s(self, project: str, names: list[str], timeout_ms: int | None) -> float:
        """A stage's deadline: its own timeout, else its slowest agent's attempts plus a minute."""
        if timeout_ms:
            return timeout_ms / 1000
        budgets = [
            a.timeout_s * a.max_attempts
            for n in names
            if (a := self.lookup(project, n)) is not None and a.backend != PIPELINE
        ]
        return max(budgets, default=self.settings.aios_agent_timeout_ms / 1000) + 60

    def project_routes(self, project: str) -> dict[str, tuple[str, ...]]:
        if self.routes is None:
            return {}
        found = self.routes.values.get(project)
        return {} if found is None else {k: tuple(v) for k, v in found.routes.items()}


def replace_agent(agent: Agent, d: AgentDefinition) -> Agent:
    return dataclasses.replace(agent, version=d.version, project=d.project)
