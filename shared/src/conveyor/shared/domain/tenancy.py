"""Who owns what: organisations, projects, and the scope an API key acts in.

Organisations own projects; every job, schedule, site, deployment, dead letter and log
belongs to one project (its ``project`` field; ``DEFAULT_PROJECT`` for anything made before
projects existed). A key's scope is admin (everything), one organisation (its projects) or
one project, each either full or read-only. Another project's object is answered exactly as
a missing one (404): a caller learns nothing about what it may not see.

The records live in KV ``orgs`` and ``projects``; every service that needs them keeps the
whole of ``projects`` in memory through a watch (``Directory``), so resolving a webhook to
its project or checking a scope costs no round trip. The default project is not stored: each
service builds it from its own settings (the variables that configured Conveyor before
projects), so existing deployments keep working unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

import msgspec

from conveyor.shared.contracts.events import DEFAULT_PROJECT, Message
from conveyor.shared.domain.sealing import SealedSecret, Sealer

DEFAULT_ORG = "default"

ScopeKind = Literal["admin", "org", "project"]


class Organisation(Message, frozen=True, kw_only=True):
    """KV ``orgs`` under its id."""

    org_id: str
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


class Project(Message, frozen=True, kw_only=True):
    """KV ``projects`` under its id. Secrets are sealed (conveyor.shared.domain.sealing), each bound to
    this project and field, and never leave the services in clear."""

    project_id: str
    org_id: str
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime
    enabled: bool = True
    """The rollout switch: a disabled project's webhooks are answered and not run."""
    external_ids: list[str] = []
    """What maps a signed webhook to this project: ``lovable:<project_id>``,
    ``github:<owner>/<repo>``, ``github-installation:<id>``, ``<source>:<id>``."""
    webhook_secrets: dict[str, list[SealedSecret]] = {}
    """Per webhook source, its active secrets (any one verifies: rotation)."""
    callback_url: str | None = None
    """Where this project's results go (a job's own callback_url wins)."""
    callback_urls: dict[str, str] = {}
    """Per webhook source, a callback URL that overrides ``callback_url``."""
    callback_secrets: list[SealedSecret] = []
    """Standard Webhooks signing secrets (``whsec_...``); every one signs, the first is newest."""
    outbound_credential: SealedSecret | None = None
    """Sent with each callback as ``Authorization: Bearer <credential>`` (Lovable's API key)."""
    agents: list[str] = []
    """Agents this project may run; empty: every agent the deployment has."""
    per_minute: int = 0
    """Requests per minute for the whole project across its keys and webhooks; 0: no limit."""
    per_day: int = 0
    max_running: int = 0
    """Jobs of this project running at once across all executors; 0: no limit."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API and open SSE streams (exact ``scheme://host[:port]``)."""
    budget_day_usd: float = 0.0
    """What LLM runs may cost per UTC day (conveyor.shared.domain.usage); 0: no budget."""
    budget_month_usd: float = 0.0
    """Likewise per UTC calendar month."""
    progress_callbacks: bool = False
    """Progress (with streamed text) goes to the callback URL while a job runs, besides its result."""

    @classmethod
    def default(cls, **fields: object) -> Project:
        """The default project, from a service's settings (``fields``): not stored in KV."""
        epoch = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        base: dict[str, object] = {
            "project_id": DEFAULT_PROJECT,
            "org_id": DEFAULT_ORG,
            "name": "default",
            "created_at": epoch,
            "updated_at": epoch,
        }
        return cls(**{**base, **fields})  # type: ignore[arg-type]

    def callback_for(self, source: str) -> str | None:
        return self.callback_urls.get(source) or self.callback_url

    def may_run(self, agent: str) -> bool:
        return not self.agents or agent in self.agents


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """What a key may reach. ``org_id`` is set for org and project scopes."""

    kind: ScopeKind
    org_id: str | None = None
    project_id: str | None = None
    read_only: bool = False

    def sees(self, project_id: str, org_of: str | None) -> bool:
        """Whether an object of ``project_id`` (in organisation ``org_of``) is visible at all."""
        if self.kind == "admin":
            return True
        if self.kind == "org":
            return org_of is not None and org_of == self.org_id
        return project_id == self.project_id

    def describe(self) -> str:
        what = {"admin": "admin", "org": f"org {self.org_id}", "project": f"project {self.project_id}"}
        return what[self.kind] + (" (read-only)" if self.read_only else "")


ADMIN = Scope(kind="admin")
DEFAULT_SCOPE = Scope(kind="project", org_id=DEFAULT_ORG, project_id=DEFAULT_PROJECT)


def external_id(kind: str, value: str) -> str:
    return f"{kind}:{value}"


organisation_decoder = msgspec.json.Decoder(Organisation)
project_decoder = msgspec.json.Decoder(Project)


class Directory:
    """Every project in memory: by id, by external id, by organisation. The default project
    (built from settings by each service) is always there and cannot be shadowed by KV."""

    def __init__(self, default: Project) -> None:
        self.default = default
        self._by_id: dict[str, Project] = {default.project_id: default}
        self._by_external: dict[str, str] = {x: default.project_id for x in default.external_ids}

    def get(self, project_id: str | None) -> Project | None:
        return self._by_id.get(project_id or DEFAULT_PROJECT)

    def org_of(self, project_id: str | None) -> str | None:
        project = self.get(project_id)
        return project.org_id if project is not None else None

    def resolve(self, external: str) -> Project | None:
        """The project an external id (``lovable:<id>``, ``github:<repo>``...) maps to."""
        found = self._by_external.get(external)
        return self._by_id.get(found) if found is not None else None

    def projects(self) -> list[Project]:
        return list(self._by_id.values())

    def visible(self, scope: Scope) -> list[Project]:
        return [p for p in self._by_id.values() if scope.sees(p.project_id, p.org_id)]

    def sees(self, scope: Scope, project_id: str | None) -> bool:
        pid = project_id or DEFAULT_PROJECT
        return scope.sees(pid, self.org_of(pid))

    def update(self, key: str, project: Project | None) -> None:
        """KvMirror's on_change: keep the indexes in step with KV ``projects``."""
        if key == self.default.project_id:
            return  # defined by settings
        old = self._by_id.pop(key, None)
        if old is not None:
            for x in old.external_ids:
                if self._by_external.get(x) == key:
                    del self._by_external[x]
        if project is not None:
            self._by_id[key] = project
            for x in project.external_ids:
                # The first project to claim an external id keeps it (the API refuses a second).
                self._by_external.setdefault(x, key)


def secret_context(project_id: str, field: str) -> str:
    """What a project's sealed value is bound to (its associated data): its project and field,
    so a value copied into another record or field does not open."""
    return f"project/{project_id}/{field}"


class ProjectSecrets:
    """Projects' sealed secrets, opened once per version of each project's record and kept in
    memory only (a service opens one on every webhook or callback otherwise)."""

    _MAX = 10_000

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer
        self._opened: dict[tuple[str, str], tuple[dt.datetime, tuple[str, ...]]] = {}

    def open(self, project: Project, field: str, values: Sequence[SealedSecret]) -> tuple[str, ...]:
        """``values`` (``project``'s ``field``) in clear; SealingError when one does not open."""
        key = (project.project_id, field)
        hit = self._opened.get(key)
        if hit is not None and hit[0] == project.updated_at:
            return hit[1]
        context = secret_context(project.project_id, field)
        opened = tuple(self.sealer.open(v, context) for v in values)
        if len(self._opened) >= self._MAX:
            self._opened.clear()
        self._opened[key] = (project.updated_at, opened)
        return opened
