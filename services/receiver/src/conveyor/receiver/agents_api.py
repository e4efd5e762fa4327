"""Agents as data: a project's agent definitions, their runs and delegations, and its routes.

Routes (an API key; reads need a key that sees the project, writes a full one):
  GET    /api/agents                    the built-ins (read-only) and the project's definitions
  POST   /api/agents                    201 a new definition, version 1
  GET    /api/agents/{id}               one definition (a built-in: read-only, version 0)
  PUT    /api/agents/{id}               replace it: version + 1 (compare-and-set; If-Match: version)
  DELETE /api/agents/{id}               remove it (409 while a pipeline or route of the project names it)
  POST   /api/agents/{id}/run           202 a job of it, as POST /api/jobs
  POST   /api/agents/delegate           202 one job: several agents on one task in parallel
  GET    /api/routes                    the project's routes (event type -> agents)
  PUT    /api/routes                    replace them: version + 1

Definitions live in KV ``agents`` under ``<project>.<id>`` (shared/agentdefs.py) and are
mirrored here like the projects bucket; a read by id goes to the bucket, so a definition just
written on another replica is found. Another project's definition answers 404, exactly as a
missing one. A delegation is an event (``events.api.agents.delegate``) that the executor's
router fans out, so it runs through the one fan-out there is.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta
from msgspec.structs import replace

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers import jobs
from conveyor.receiver.handlers.webhooks import accepted, respond
from conveyor.receiver.openapi import Operation, Param
from conveyor.receiver.schemas import Accepted, JobCreate, ProjectRef
from conveyor.receiver.sources import decode_json, invalid_field
from conveyor.receiver.state import CORRELATION_ID, STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import lifecycle, subjects
from conveyor.shared.contracts.events import WebhookEvent, encoder, utcnow
from conveyor.shared.domain.agentdefs import (
    BUILTIN_ANALYSES,
    DELEGATE_EVENT,
    MAX_DELEGATES,
    AgentCreate,
    AgentDefinition,
    AgentFields,
    DefinitionError,
    ProjectRoutes,
    RoutesBody,
    check,
    check_routes,
    definition_decoder,
    definition_key,
    routes_decoder,
)
from conveyor.shared.domain.tenancy import DEFAULT_PROJECT, Project
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.urls import callback_url_problem

_WRITE_TRIES = 5
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_OPERATOR = ("command", "base_url", "api_key", "env", "env_allowlist", "concurrency", "instant", "max_tokens")

Prompt = Annotated[str, Meta(min_length=1, max_length=5000)]


class AgentRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/agents/{id}/run: the job, as POST /api/jobs without ``agent``."""

    prompt: Prompt
    input: dict[str, Any] = {}
    callback_url: Annotated[str, Meta(max_length=2048)] | None = None
    project_id: Annotated[str, Meta(max_length=200)] | None = None
    timeout_ms: Annotated[int, Meta(ge=1000, le=86_400_000)] | None = None
    project: ProjectRef | None = None


class Delegation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/agents/delegate: one task, several agents in parallel, one aggregated result."""

    agents: Annotated[list[str], Meta(min_length=1, max_length=MAX_DELEGATES)]
    prompt: Prompt
    input: dict[str, Any] = {}
    callback_url: Annotated[str, Meta(max_length=2048)] | None = None
    project_id: Annotated[str, Meta(max_length=200)] | None = None
    project: ProjectRef | None = None


class AgentCatalog(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/agents: what ``project`` may run. ``agents`` lists the names (POST /api/jobs
    refuses the others); ``definitions`` shows each, the built-ins read-only."""

    project: str
    agents: list[str]
    definitions: list[AgentDefinition]


class AgentDeleted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    deleted: bool = True


_create_decoder = msgspec.json.Decoder(AgentCreate)
_fields_decoder = msgspec.json.Decoder(AgentFields)
_run_decoder = msgspec.json.Decoder(AgentRun)
_delegation_decoder = msgspec.json.Decoder(Delegation)
_routes_decoder = msgspec.json.Decoder(RoutesBody)


def _invalid_body(exc: msgspec.ValidationError) -> HTTPError:
    """As the other routes, and a field no definition has is named: the operator's fields say
    they are the operator's."""
    if m := _UNKNOWN.search(str(exc)):
        name = m.group(1)
        why = "is operator configuration, not part of a definition" if name in _OPERATOR else "is not a field"
        return HTTPError(422, "invalid_field", f"{name}: {why}", field=name)
    return invalid_field(exc)


def _definition_error(exc: DefinitionError) -> HTTPError:
    return HTTPError(422, "invalid_field", str(exc), field=exc.field)


def _not_found(agent_id: str) -> HTTPError:
    return HTTPError(404, "agent_not_found", f"no agent {agent_id[:64]!r}")


def _read_only(agent_id: str) -> HTTPError:
    return HTTPError(
        409, "read_only_agent", f"{agent_id[:64]!r} is a built-in agent: it cannot be changed or deleted"
    )


# --- access --------------------------------------------------------------------------------------


async def _caller(request: web.Request) -> tuple[Receiver, Principal]:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    return st, principal


def _readable(st: Receiver, principal: Principal, requested: str | None) -> Project:
    """The project a read is about: ``?project=`` (admin and org keys), else the key's own."""
    project_id = requested or principal.scope.project_id or DEFAULT_PROJECT
    project = st.directory.get(project_id) if subjects.is_token(project_id) else None
    if project is None or not st.sees(principal, project.project_id):
        raise HTTPError(404, "project_not_found", f"no project {project_id[:64]!r}", field="project")
    return project


def _kv(st: Receiver, name: str) -> bus.Kv:
    return st.bucket(name)


async def _load(st: Receiver, project: str, agent_id: str) -> tuple[AgentDefinition, int] | None:
    if not subjects.is_token(agent_id):
        return None
    with st.nats_errors():
        try:
            entry = await _kv(st, subjects.KV_AGENTS).get(definition_key(project, agent_id))
        except bus.NotFound:
            return None
    if not entry.value:
        return None
    return definition_decoder.decode(entry.value), entry.revision or 0


def _builtin(st: Receiver, project: Project, agent_id: str) -> AgentDefinition | None:
    """A built-in the project may run, as a read-only definition."""
    allowed, found = st.may_run(project, agent_id)
    if not allowed:
        return None
    if found is None:
        return AgentDefinition(id=agent_id, project=project.project_id, version=0, read_only=True)
    if found.read_only:
        return replace(found, project=project.project_id, version=0)
    return None


def _is_builtin(st: Receiver, agent_id: str) -> bool:
    """A configured agent, a built-in pipeline, or an executor's offline analysis (noop and
    sleep are agents of the executor's own): ids a definition may not take, since the executor
    resolves those first."""
    return agent_id in st.agents or agent_id in BUILTIN_ANALYSES or st.definition("", agent_id) is not None


def _runnable(
    st: Receiver, project: Project, *, without: str | None = None
) -> tuple[frozenset[str], frozenset[str]]:
    """(names the project may run, which of them are pipelines), less ``without``."""
    runnable = {n: d for n, d in st.runnable(project).items() if n != without}
    pipelines = frozenset(n for n, d in runnable.items() if d is not None and d.kind == "pipeline")
    return frozenset(runnable), pipelines


def _mirror(st: Receiver, project: str, agent_id: str, value: AgentDefinition | None) -> None:
    """What this replica just wrote, seen here at once (others see it through the watch)."""
    if st.definitions is not None:
        st.definitions.put_local(definition_key(project, agent_id), value)


# --- definitions ---------------------------------------------------------------------------------


async def list_agents(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    project = _readable(st, principal, request.query.get("project"))
    runnable = st.runnable(project)
    shown: list[AgentDefinition] = []
    for name, found in runnable.items():
        if found is None or found.read_only:
            builtin = _builtin(st, project, name)
            assert builtin is not None
            shown.append(builtin)
        else:
            shown.append(found)
    return respond(200, AgentCatalog(project=project.project_id, agents=list(runnable), definitions=shown))


async def create(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    body: AgentCreate = decode_json(_create_decoder, await st.read_body(request), _invalid_body)
    project = st.writable(principal, body.project)
    if _is_builtin(st, body.id):
        raise HTTPError(409, "agent_exists", f"id: {body.id!r} is a built-in agent", field="id")
    fields = msgspec.structs.asdict(body)
    fields.pop("id")
    fields.pop("project")
    spec = AgentFields(**fields)
    try:
        check(spec, body.id, *_runnable(st, project, without=body.id))
    except DefinitionError as exc:
        raise _definition_error(exc) from None
    now = utcnow()
    record = AgentDefinition(**fields, id=body.id, project=project.project_id, version=1,
                             created_at=now, updated_at=now)  # fmt: skip
    with st.nats_errors():
        try:
            await _kv(st, subjects.KV_AGENTS).create(
                definition_key(project.project_id, body.id), encoder.encode(record)
            )
        except bus.Conflict:
            raise HTTPError(
                409, "agent_exists", f"id: the project has an agent {body.id!r}", field="id"
            ) from None
    _mirror(st, project.project_id, body.id, record)
    return respond(201, record, {"Location": _url(st, body.id)})


async def get(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    project = _readable(st, principal, request.query.get("project"))
    agent_id = request.match_info["agent_id"]
    if (builtin := _builtin(st, project, agent_id)) is not None:
        return respond(200, builtin)
    found = await _load(st, project.project_id, agent_id)
    if found is None:
        raise _not_found(agent_id)
    return respond(200, found[0])


async def update(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    agent_id = request.match_info["agent_id"]
    project = st.writable(principal, request.query.get("project"))
    if _is_builtin(st, agent_id):
        raise _read_only(agent_id)
    if await _load(st, project.project_id, agent_id) is None:
        raise _not_found(agent_id)  # before the body is looked at
    spec: AgentFields = decode_json(_fields_decoder, await st.read_body(request), _invalid_body)
    try:
        check(spec, agent_id, *_runnable(st, project, without=agent_id))
    except DefinitionError as exc:
        raise _definition_error(exc) from None
    if spec.kind == "pipeline":
        # A stage runs agents: an agent a pipeline runs may not become a pipeline (no nesting,
        # hence no cycle of pipelines running each other).
        for d in st.own_definitions(project.project_id):
            if d.id != agent_id and any(agent_id in stage.agents for stage in d.stages):
                raise HTTPError(
                    422,
                    "invalid_field",
                    f"kind: pipeline {d.id!r} runs {agent_id!r} in a stage",
                    field="kind",
                )
    expected = request.headers.get("If-Match")
    for _ in range(_WRITE_TRIES):
        found = await _load(st, project.project_id, agent_id)
        if found is None:
            raise _not_found(agent_id)
        old, revision = found
        if expected is not None and expected.strip('"') != str(old.version):
            raise HTTPError(
                412, "version_mismatch", f"the definition is at version {old.version}", version=old.version
            )
        now = utcnow()
        new = AgentDefinition(**msgspec.structs.asdict(spec), id=agent_id, project=project.project_id,
                              version=old.version + 1, created_at=old.created_at, updated_at=now)  # fmt: skip
        with st.nats_errors():
            try:
                await _kv(st, subjects.KV_AGENTS).update(
                    definition_key(project.project_id, agent_id), encoder.encode(new), last=revision
                )
            except bus.Conflict:
                continue  # changed meanwhile: the next version is one more than that
        _mirror(st, project.project_id, agent_id, new)
        return respond(200, new)
    raise st.unavailable("the definition kept changing; retry")


async def delete(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    agent_id = request.match_info["agent_id"]
    project = st.writable(principal, request.query.get("project"))
    if _is_builtin(st, agent_id):
        raise _read_only(agent_id)
    for d in st.own_definitions(project.project_id):
        if d.id != agent_id and any(agent_id in s.agents for s in d.stages):
            raise HTTPError(409, "agent_in_use", f"pipeline {d.id!r} runs {agent_id!r}; change it first")
    routes = await _routes(st, project.project_id)
    for key, names in routes[0].routes.items() if routes else ():
        if agent_id in names:
            raise HTTPError(409, "agent_in_use", f"the route {key!r} names {agent_id!r}; change it first")
    for _ in range(_WRITE_TRIES):
        found = await _load(st, project.project_id, agent_id)
        if found is None:
            raise _not_found(agent_id)
        with st.nats_errors():
            try:
                await _kv(st, subjects.KV_AGENTS).delete(
                    definition_key(project.project_id, agent_id), last=found[1]
                )
            except bus.Conflict:
                continue
        _mirror(st, project.project_id, agent_id, None)
        return respond(200, AgentDeleted(id=agent_id, version=found[0].version))
    raise st.unavailable("the definition kept changing; retry")


def _url(st: Receiver, agent_id: str) -> str:
    return f"{st.settings.public_url.rstrip('/')}/api/agents/{agent_id}"


# --- runs ----------------------------------------------------------------------------------------


async def run(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    agent_id = request.match_info["agent_id"]
    body: AgentRun = decode_json(_run_decoder, await st.read_body(request), _invalid_body)
    project = st.writable(principal, body.project)
    version: int | None = None
    if _builtin(st, project, agent_id) is None:
        found = await _load(st, project.project_id, agent_id)  # the bucket: a definition just saved
        if found is None:
            raise _not_found(agent_id)
        version = found[0].version
    job = JobCreate(agent=agent_id, **msgspec.structs.asdict(body))
    return await jobs.submit(st, request, principal, project, job, version)


async def delegate(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    body: Delegation = decode_json(_delegation_decoder, await st.read_body(request), _invalid_body)
    project = st.writable(principal, body.project)
    runnable = st.runnable(project)
    if len(set(body.agents)) != len(body.agents):
        raise HTTPError(422, "invalid_field", "agents: an agent is named twice", field="agents")
    for i, name in enumerate(body.agents):
        if name not in runnable:
            raise HTTPError(
                422, "unknown_agent", f"agents[{i}]: unknown agent {name[:64]!r}", field=f"agents[{i}]"
            )
    if len(body.prompt) > st.settings.max_prompt_chars:
        raise HTTPError(
            422,
            "invalid_field",
            f"prompt: longer than {st.settings.max_prompt_chars} characters",
            field="prompt",
        )
    if body.callback_url is not None and (problem := callback_url_problem(body.callback_url)):
        raise HTTPError(422, "invalid_field", f"callback_url: {problem}", field="callback_url")
    claimed = st.directory.resolve(f"lovable:{body.project_id}") if body.project_id else None
    if claimed is not None and claimed.project_id != project.project_id:
        raise HTTPError(422, "invalid_field", "project_id: belongs to another project", field="project_id")
    await st.limit_work(project)
    job_id = jobs.job_id_for(st, request, principal)
    now = utcnow()
    correlation = request[CORRELATION_ID]
    payload = {"agents": body.agents, "prompt": body.prompt, "input": body.input}
    event = WebhookEvent(
        event_id=job_id,
        job_id=job_id,
        source="api",
        type=DELEGATE_EVENT,
        received_at=now,
        payload=msgspec.Raw(encoder.encode(payload)),
        project_id=body.project_id,
        callback_url=body.callback_url,
        correlation_id=correlation,
        project=project.project_id,
    )
    record = lifecycle.new(
        job_id,
        created_at=now,
        agent="+".join(body.agents),
        source="api",
        event_type=DELEGATE_EVENT,
        project_id=body.project_id,
        callback_url=body.callback_url,
        project=project.project_id,
    )
    duplicate = await st.accept(
        subject=st.event_subject("api", DELEGATE_EVENT),
        stream=subjects.EVENTS,
        data=encoder.encode(event),
        msg_id=f"api:{job_id}",
        record=record,
        correlation_id=correlation,
    )
    return accepted(st, job_id, duplicate)


# --- routes --------------------------------------------------------------------------------------


async def _routes(st: Receiver, project: str) -> tuple[ProjectRoutes, int] | None:
    with st.nats_errors():
        try:
            entry = await _kv(st, subjects.KV_AGENT_ROUTES).get(project)
        except bus.NotFound:
            return None
    if not entry.value:
        return None
    return routes_decoder.decode(entry.value), entry.revision or 0


async def get_routes(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    project = _readable(st, principal, request.query.get("project"))
    found = await _routes(st, project.project_id)
    return respond(200, found[0] if found else ProjectRoutes(project=project.project_id))


async def put_routes(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    st.require_nats()
    body: RoutesBody = decode_json(_routes_decoder, await st.read_body(request), _invalid_body)
    project = st.writable(principal, body.project)
    try:
        check_routes(body.routes, frozenset(st.runnable(project)))
    except DefinitionError as exc:
        raise _definition_error(exc) from None
    kv = _kv(st, subjects.KV_AGENT_ROUTES)
    for _ in range(_WRITE_TRIES):
        found = await _routes(st, project.project_id)
        new = ProjectRoutes(project=project.project_id, routes=body.routes,
                            version=(found[0].version if found else 0) + 1, updated_at=utcnow())  # fmt: skip
        with st.nats_errors():
            try:
                if found is None:
                    await kv.create(project.project_id, encoder.encode(new))
                else:
                    await kv.update(project.project_id, encoder.encode(new), last=found[1])
            except bus.Conflict:
                continue
        return respond(200, new)
    raise st.unavailable("the routes kept changing; retry")


# --- wiring --------------------------------------------------------------------------------------

_E = None
_KEYED = {401: _E, 429: _E, 503: _E}
_PROJECT = (Param("project", "query", "Admin and organisation keys: which project."),)
_ONE = "/api/agents/{agent_id}"


def operations() -> list[Operation]:
    def op(
        method: str, path: str, handler: Any, summary: str, responses: dict[int, Any], **kw: Any
    ) -> Operation:
        return Operation(
            method, path, handler, summary, "agents", {**responses, **_KEYED}, auth="api_key", **kw
        )

    written = {400: _E, 403: _E, 404: _E, 413: _E, 422: _E}
    return [
        op("GET", "/api/agents", list_agents, "The agents the key's project may run: built-ins "
           "(read-only) and its own definitions", {200: AgentCatalog, 404: _E}, params=_PROJECT),
        op("POST", "/api/agents", create, "Define an agent or a pipeline in the project (version 1)",
           {201: AgentDefinition, 409: _E, **written}, body=AgentCreate,
           description="422 names the field that is wrong; command, base_url and api_key are the "
           "operator's and refused. 409 agent_exists for an id the project or the built-ins have."),
        op("POST", "/api/agents/delegate", delegate, "Several agents on one task in parallel, one "
           "aggregated result", {202: Accepted, **written}, body=Delegation,
           params=(Param("Idempotency-Key", "header", "A repeat answers the first job."),),
           description="One job whose children are the agents named (a fan-out); its result lists "
           "each agent's outcome and findings."),
        op("GET", _ONE, get, "One definition (built-ins: read-only, version 0)",
           {200: AgentDefinition, 404: _E}, params=_PROJECT),
        op("PUT", _ONE, update, "Replace a definition: its version goes up by one",
           {200: AgentDefinition, 409: _E, 412: _E, **written}, body=AgentFields,
           params=(*_PROJECT, Param("If-Match", "header", "Only if the definition is at this version.")),
           description="409 read_only_agent for a built-in."),
        op("DELETE", _ONE, delete, "Remove a definition", {200: AgentDeleted, 403: _E, 404: _E, 409: _E},
           params=_PROJECT, description="409 read_only_agent for a built-in; 409 agent_in_use while "
           "a pipeline or a route of the project names it."),
        op("POST", f"{_ONE}/run", run, "Run an agent or pipeline: a job, as POST /api/jobs",
           {202: Accepted, **written}, body=AgentRun,
           params=(Param("Idempotency-Key", "header", "A repeat answers the first job."),),
           description="The job's record says which version of the definition it ran (agent_version)."),
        op("GET", "/api/routes", get_routes, "The project's routes: event type -> agents",
           {200: ProjectRoutes, 404: _E}, params=_PROJECT),
        op("PUT", "/api/routes", put_routes, "Replace the project's routes (tried before the "
           "deployment's)", {200: ProjectRoutes, **written}, body=RoutesBody),
    ]  # fmt: skip
