"""Organisations and projects: /api/admin/orgs, /api/admin/projects and their secrets.

Admin keys manage everything; a full organisation key manages its organisation's projects
(and may not create organisations or move a project to another one). Another organisation's
project answers 404, as a missing one. Secrets are sealed before they are written
(conveyor.shared.domain.sealing) and shown afterwards only by id and hint; a generated callback
signing secret is the one value returned, once, in the answer that made it.
"""

from __future__ import annotations

import base64
import secrets
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import replace

from conveyor.receiver import integrations_api
from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.openapi import Operation, Param
from conveyor.receiver.schemas import ProjectRef
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import encoder, utcnow
from conveyor.shared.domain.sealing import SealedSecret, SealingError
from conveyor.shared.domain.signing import secret_problem
from conveyor.shared.domain.tenancy import (
    DEFAULT_ORG,
    Organisation,
    Project,
    organisation_decoder,
    project_decoder,
    secret_context,
)
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.urls import callback_url_problem, redact_url

Id = ProjectRef  # organisations' ids take the same form
ExternalId = Annotated[str, Meta(pattern=r"^[a-z0-9_-]{1,32}:[\x21-\x7e]{1,200}$(?!\n)", max_length=240)]
Origin = Annotated[str, Meta(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$(?!\n)", max_length=300)]
SecretText = Annotated[str, Meta(min_length=1, max_length=1024)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
Limit = Annotated[int, Meta(ge=0, le=100_000_000)]
Usd = Annotated[float, Meta(ge=0, le=10_000_000)]  # a budget in US dollars; 0: none

E = None
_ID_PARAM = (Param("api_key", "query", "Not accepted here: send Authorization: Bearer."),)


class OrgCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    org_id: Id | None = None


class OrgView(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    name: str
    created_at: Any


class OrgList(msgspec.Struct, frozen=True, kw_only=True):
    orgs: list[OrgView]


class ProjectFields(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The settable fields of a project; on PATCH every one is optional."""

    name: Annotated[str, Meta(min_length=1, max_length=100)] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    external_ids: Annotated[list[ExternalId], Meta(max_length=100)] | UnsetType = UNSET
    callback_url: Url | UnsetType | None = UNSET
    callback_urls: dict[Annotated[str, Meta(max_length=128)], Url] | UnsetType = UNSET
    agents: Annotated[list[Annotated[str, Meta(max_length=128)]], Meta(max_length=100)] | UnsetType = UNSET
    per_minute: Limit | UnsetType = UNSET
    per_day: Limit | UnsetType = UNSET
    max_running: Annotated[int, Meta(ge=0, le=100_000)] | UnsetType = UNSET
    cors_origins: Annotated[list[Origin], Meta(max_length=50)] | UnsetType = UNSET
    budget_day_usd: Usd | UnsetType = UNSET
    budget_month_usd: Usd | UnsetType = UNSET
    progress_callbacks: bool | UnsetType = UNSET


class ProjectCreate(ProjectFields, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/admin/projects. Secrets given here are sealed at once; a callback signing
    secret is generated (and returned, once) when none is given."""

    org_id: Id
    project_id: Id | None = None
    webhook_secrets: dict[Annotated[str, Meta(max_length=128)], list[SecretText]] = {}
    callback_secret: SecretText | None = None
    outbound_credential: SecretText | None = None


class SecretView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored secret as the API shows it: never the value."""

    id: str
    kind: Literal["webhook", "callback", "outbound"]
    source: str | None = None
    hint: str


class ProjectView(msgspec.Struct, frozen=True, kw_only=True):
    project_id: str
    org_id: str
    name: str
    enabled: bool
    external_ids: list[str]
    callback_url: str | None
    callback_urls: dict[str, str]
    agents: list[str]
    per_minute: int
    per_day: int
    max_running: int
    cors_origins: list[str]
    budget_day_usd: float
    budget_month_usd: float
    progress_callbacks: bool
    secrets: list[SecretView]
    created_at: Any
    updated_at: Any
    defined_by_settings: bool = False


class ProjectCreated(ProjectView, frozen=True, kw_only=True):
    """The answer to a create: ``callback_secret`` only when Conveyor generated it."""

    callback_secret: str | None = None


class ProjectList(msgspec.Struct, frozen=True, kw_only=True):
    projects: list[ProjectView]


class SecretAdd(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/admin/projects/{id}/secrets: add a webhook or callback secret (rotation: add the
    new one, move senders over, delete the old), or set the outbound credential (replaces it).
    A callback secret without ``value`` is generated and returned once."""

    kind: Literal["webhook", "callback", "outbound"]
    source: Annotated[str, Meta(max_length=128)] | None = None
    value: SecretText | None = None


class SecretAdded(SecretView, frozen=True, kw_only=True):
    value: str | None = None  # only a generated callback secret


_org_create = msgspec.json.Decoder(OrgCreate)
_project_create = msgspec.json.Decoder(ProjectCreate)
_project_patch = msgspec.json.Decoder(ProjectFields)
_secret_add = msgspec.json.Decoder(SecretAdd)
_MAX_SECRETS = 10  # per kind (and source): enough for any rotation


def _invalid(field: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid_field", f"{field}: {message}", field=field)


def _not_found(what: str, name: str) -> HTTPError:
    return HTTPError(404, f"{what}_not_found", f"no {what} {name[:64]!r}")


# --- views -------------------------------------------------------------------------------------


def secret_views(p: Project) -> list[SecretView]:
    views = [
        SecretView(id=s.id, kind="webhook", source=source, hint=s.hint)
        for source, items in sorted(p.webhook_secrets.items())
        for s in items
    ]
    views += [SecretView(id=s.id, kind="callback", hint=s.hint) for s in p.callback_secrets]
    if p.outbound_credential is not None:
        views.append(
            SecretView(id=p.outbound_credential.id, kind="outbound", hint=p.outbound_credential.hint)
        )
    return views


def view(st: Receiver, p: Project) -> ProjectView:
    return ProjectView(**_view_fields(st, p))


def _view_fields(st: Receiver, p: Project) -> dict[str, Any]:
    return {
        "project_id": p.project_id,
        "org_id": p.org_id,
        "name": p.name,
        "enabled": p.enabled,
        "external_ids": p.external_ids,
        "callback_url": redact_url(p.callback_url) if p.callback_url else None,
        "callback_urls": {k: redact_url(v) for k, v in p.callback_urls.items()},
        "agents": p.agents,
        "per_minute": p.per_minute,
        "per_day": p.per_day,
        "max_running": p.max_running,
        "cors_origins": p.cors_origins,
        "budget_day_usd": p.budget_day_usd,
        "budget_month_usd": p.budget_month_usd,
        "progress_callbacks": p.progress_callbacks,
        "secrets": secret_views(p),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "defined_by_settings": p.project_id == st.directory.default.project_id,
    }


# --- access ------------------------------------------------------------------------------------


async def _caller(request: web.Request, *, write: bool) -> tuple[Receiver, Principal]:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    scope = principal.scope
    if scope.kind == "project" or (write and scope.read_only):
        raise HTTPError(403, "forbidden", f"a key of {scope.describe()} cannot manage projects")
    st.require_nats()
    return st, principal


def _project(st: Receiver, principal: Principal, project_id: str) -> Project:
    """The project when the caller's scope sees it; 404 as for a missing one otherwise."""
    project = st.directory.get(project_id)
    if project is None or not principal.scope.sees(project.project_id, project.org_id):
        raise _not_found("project", project_id)
    return project


async def _load(st: Receiver, project_id: str) -> tuple[Project, int]:
    kv = st.bucket(subjects.KV_PROJECTS)
    with st.nats_errors():
        try:
            entry = await kv.get(project_id)
        except bus.NotFound:
            raise _not_found("project", project_id) from None
    return project_decoder.decode(entry.value or b""), entry.revision or 0


def _stored_only(st: Receiver, project_id: str) -> None:
    if project_id == st.directory.default.project_id:
        raise HTTPError(
            409,
            "defined_by_settings",
            "the default project is defined by the deployment's settings "
            "(LOVABLE_WEBHOOK_SECRET, LOVABLE_CALLBACK_URL, CALLBACK_SIGNING_SECRETS, ...)",
        )


async def _write(st: Receiver, old_revision: int, project: Project) -> Project:
    kv = st.bucket(subjects.KV_PROJECTS)
    with st.nats_errors():
        try:
            if old_revision:
                await kv.update(project.project_id, encoder.encode(project), last=old_revision)
            else:
                await kv.create(project.project_id, encoder.encode(project))
        except bus.Conflict:
            raise HTTPError(409, "conflict", "the project changed meanwhile; read it and try again") from None
        except bus.BusError as exc:
            if old_revision == 0:
                raise HTTPError(409, "project_exists", f"project {project.project_id!r} exists") from None
            raise exc
    st.projects_mirror_put(project.project_id, project)
    return project


# --- validation --------------------------------------------------------------------------------


def _check_fields(st: Receiver, f: ProjectFields, project_id: str) -> None:
    if isinstance(f.external_ids, list):
        for x in f.external_ids:
            owner = st.directory.resolve(x)
            if owner is not None and owner.project_id != project_id:
                raise _invalid("external_ids", f"{x!r} already maps to another project")
    for field, url in [("callback_url", f.callback_url)] + [
        (f"callback_urls.{k}", v)
        for k, v in (f.callback_urls if isinstance(f.callback_urls, dict) else {}).items()
    ]:
        if isinstance(url, str):
            problem = callback_url_problem(url)
            if problem:
                raise _invalid(field, problem)
            if redact_url(url) != url:
                # The record is not sealed as a whole: a password here would sit in KV in clear.
                raise _invalid(field, "no credentials in the URL: set outbound_credential (sealed) instead")
    if isinstance(f.agents, list):
        unknown = [a for a in f.agents if a not in st.agents]
        if unknown:
            raise _invalid("agents", f"unknown agent {unknown[0][:64]!r}; known: {', '.join(st.agents)}")


def _seal(st: Receiver, project_id: str, field: str, value: str) -> SealedSecret:
    try:
        sealed = st.sealer.seal(value, secret_context(project_id, field))
    except SealingError as exc:
        raise HTTPError(409, "secrets_unavailable", str(exc)) from None
    return msgspec.structs.replace(sealed, id=ids.new_id("sec")[:20])


def _webhook_secret(st: Receiver, project_id: str, source: str, value: str) -> SealedSecret:
    if source not in st.sources:
        raise _invalid("source", f"no webhook source named {source[:64]!r}")
    problem = secret_problem(value, standard=st.sources[source].scheme == "standard")
    if problem:
        raise _invalid(f"webhook_secrets.{source}", problem)
    return _seal(st, project_id, f"webhook/{source}", value)


def _callback_secret(st: Receiver, project_id: str, value: str | None) -> tuple[SealedSecret, str | None]:
    generated = None
    if value is None:
        generated = value = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    problem = secret_problem(value, standard=True)
    if problem:
        raise _invalid("callback_secret", problem)
    return _seal(st, project_id, "callback", value), generated


def _apply(p: Project, f: ProjectFields) -> Project:
    changes = {k: v for k, v in msgspec.structs.asdict(f).items() if v is not UNSET and k in _SETTABLE}
    return replace(p, **changes, updated_at=utcnow())


_SETTABLE = set(ProjectFields.__struct_fields__)


# --- handlers ----------------------------------------------------------------------------------


async def create_org(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.authenticate(request, admin=True)
    st.require_nats()
    body: OrgCreate = decode_json(_org_create, await st.read_body(request))
    now = utcnow()
    org = Organisation(
        org_id=body.org_id or ids.new_id("org")[:20], name=body.name, created_at=now, updated_at=now
    )
    if org.org_id == DEFAULT_ORG:
        raise HTTPError(409, "org_exists", "organisation 'default' exists")
    kv = st.bucket(subjects.KV_ORGS)
    with st.nats_errors():
        try:
            await kv.create(org.org_id, encoder.encode(org))
        except bus.BusError:
            raise HTTPError(409, "org_exists", f"organisation {org.org_id!r} exists") from None
    return respond(201, OrgView(org_id=org.org_id, name=org.name, created_at=org.created_at))


async def list_orgs(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=False)
    orgs = [OrgView(org_id=DEFAULT_ORG, name="default", created_at=st.directory.default.created_at)]
    kv = st.bucket(subjects.KV_ORGS)
    with st.nats_errors():
        try:
            keys = await kv.keys()
        except bus.NotFound:
            keys = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except bus.NotFound:
                continue
            o = organisation_decoder.decode(entry.value or b"")
            orgs.append(OrgView(org_id=o.org_id, name=o.name, created_at=o.created_at))
    scope = principal.scope
    visible = [o for o in orgs if scope.kind == "admin" or o.org_id == scope.org_id]
    return respond(200, OrgList(orgs=visible))


async def org_exists(st: Receiver, org_id: str) -> bool:
    if org_id == DEFAULT_ORG:
        return True
    kv = st.bucket(subjects.KV_ORGS)
    with st.nats_errors():
        try:
            await kv.get(org_id)
        except bus.NotFound:
            return False
    return True


async def create_project(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=True)
    body: ProjectCreate = decode_json(_project_create, await st.read_body(request))
    scope = principal.scope
    if scope.kind == "org" and body.org_id != scope.org_id:
        raise _not_found("organisation", body.org_id)
    if not await org_exists(st, body.org_id):
        raise _not_found("organisation", body.org_id)
    project_id = body.project_id or ids.new_id("prj")[:20]
    if st.directory.get(project_id) is not None:
        raise HTTPError(409, "project_exists", f"project {project_id!r} exists")
    _check_fields(st, body, project_id)
    webhook: dict[str, list[SealedSecret]] = {}
    for source, values in body.webhook_secrets.items():
        if len(values) > _MAX_SECRETS:
            raise _invalid(f"webhook_secrets.{source}", f"at most {_MAX_SECRETS} secrets")
        webhook[source] = [_webhook_secret(st, project_id, source, v) for v in values]
    callback, generated = _callback_secret(st, project_id, body.callback_secret)
    outbound = (
        _seal(st, project_id, "outbound", body.outbound_credential) if body.outbound_credential else None
    )
    now = utcnow()
    base = Project(
        project_id=project_id,
        org_id=body.org_id,
        name=body.name if isinstance(body.name, str) else project_id,
        created_at=now,
        updated_at=now,
        webhook_secrets=webhook,
        callback_secrets=[callback],
        outbound_credential=outbound,
    )
    project = await _write(st, 0, _apply(base, body))
    created = ProjectCreated(**_view_fields(st, project), callback_secret=generated)
    return respond(201, created, {"Cache-Control": "no-store"})


async def list_projects(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=False)
    projects = sorted(st.directory.visible(principal.scope), key=lambda p: (p.org_id, p.project_id))
    return respond(200, ProjectList(projects=[view(st, p) for p in projects]))


async def get_project(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=False)
    return respond(200, view(st, _project(st, principal, request.match_info["project_id"])))


async def patch_project(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=True)
    project_id = request.match_info["project_id"]
    _project(st, principal, project_id)
    _stored_only(st, project_id)
    body: ProjectFields = decode_json(_project_patch, await st.read_body(request))
    _check_fields(st, body, project_id)
    current, revision = await _load(st, project_id)
    return respond(200, view(st, await _write(st, revision, _apply(current, body))))


async def delete_project(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=True)
    project_id = request.match_info["project_id"]
    _project(st, principal, project_id)
    _stored_only(st, project_id)
    # Its integrations' credentials first: a project made later under the same id starts without them.
    await integrations_api.forget_project(st, project_id)
    kv = st.bucket(subjects.KV_PROJECTS)
    with st.nats_errors():
        await kv.delete(project_id)
    st.projects_mirror_put(project_id, None)
    return web.Response(status=204)


async def add_secret(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=True)
    project_id = request.match_info["project_id"]
    _project(st, principal, project_id)
    _stored_only(st, project_id)
    body: SecretAdd = decode_json(_secret_add, await st.read_body(request))
    current, revision = await _load(st, project_id)
    value: str | None = None
    if body.kind == "webhook":
        if body.source is None or body.value is None:
            raise _invalid("source" if body.source is None else "value", "required for a webhook secret")
        sealed = _webhook_secret(st, project_id, body.source, body.value)
        items = current.webhook_secrets.get(body.source, [])
        if len(items) >= _MAX_SECRETS:
            raise _invalid("value", f"at most {_MAX_SECRETS} secrets per source; delete an old one first")
        updated = replace(current, webhook_secrets={**current.webhook_secrets, body.source: [sealed, *items]})
    elif body.kind == "callback":
        sealed, value = _callback_secret(st, project_id, body.value)
        if len(current.callback_secrets) >= _MAX_SECRETS:
            raise _invalid("value", f"at most {_MAX_SECRETS} callback secrets; delete an old one first")
        updated = replace(current, callback_secrets=[sealed, *current.callback_secrets])
    else:
        if body.value is None:
            raise _invalid("value", "required for the outbound credential")
        sealed = _seal(st, project_id, "outbound", body.value)
        updated = replace(current, outbound_credential=sealed)
    await _write(st, revision, replace(updated, updated_at=utcnow()))
    added = SecretAdded(id=sealed.id, kind=body.kind, source=body.source, hint=sealed.hint, value=value)
    return respond(201, added, {"Cache-Control": "no-store"})


async def delete_secret(request: web.Request) -> web.Response:
    st, principal = await _caller(request, write=True)
    project_id = request.match_info["project_id"]
    secret_id = request.match_info["secret_id"]
    _project(st, principal, project_id)
    _stored_only(st, project_id)
    current, revision = await _load(st, project_id)
    webhook = {s: [x for x in items if x.id != secret_id] for s, items in current.webhook_secrets.items()}
    callback = [x for x in current.callback_secrets if x.id != secret_id]
    outbound = current.outbound_credential
    if outbound is not None and outbound.id == secret_id:
        outbound = None
    updated = replace(
        current, webhook_secrets=webhook, callback_secrets=callback, outbound_credential=outbound
    )
    if updated == current:
        raise _not_found("secret", secret_id)
    if not callback:
        raise HTTPError(409, "last_callback_secret", "a project keeps at least one callback signing secret")
    await _write(st, revision, replace(updated, updated_at=utcnow()))
    return web.Response(status=204)


class Resealed(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    projects: list[str]
    """Projects whose secrets (their own, and their integrations' credentials) were sealed again
    under the active key (the rest already were)."""


def _resealed(st: Receiver, p: Project) -> Project:
    def again(value: SealedSecret, field: str) -> SealedSecret:
        resealed = st.sealer.reseal(value, secret_context(p.project_id, field))
        return msgspec.structs.replace(resealed, id=value.id)

    return replace(
        p,
        webhook_secrets={
            source: [again(s, f"webhook/{source}") for s in items]
            for source, items in p.webhook_secrets.items()
        },
        callback_secrets=[again(s, "callback") for s in p.callback_secrets],
        outbound_credential=again(p.outbound_credential, "outbound") if p.outbound_credential else None,
    )


async def reseal(request: web.Request) -> web.Response:
    """Every project's secrets under the first key of CONVEYOR_SECRET_KEYS, so an older key can
    be dropped from the setting (admin keys)."""
    st = request.app[STATE]
    await st.authenticate(request, admin=True)
    st.require_nats()
    if st.sealer.active_kid is None:
        raise HTTPError(409, "secrets_unavailable", "no CONVEYOR_SECRET_KEYS is set")
    changed = []
    for project in st.directory.projects():
        if project.project_id == st.directory.default.project_id:
            continue
        for _ in range(5):
            current, revision = await _load(st, project.project_id)
            try:
                updated = _resealed(st, current)
            except SealingError as exc:
                raise HTTPError(409, "secrets_unavailable", f"project {current.project_id}: {exc}") from None
            if updated == current:
                break
            try:
                await _write(st, revision, updated)
                changed.append(current.project_id)
                break
            except HTTPError as exc:
                if exc.error != "conflict":
                    raise
    # Integration credentials (KV connections) are project secrets too.
    changed += await integrations_api.reseal_all(st)
    return respond(200, Resealed(key_id=st.sealer.active_kid, projects=sorted(set(changed))))


def operations() -> list[Operation]:
    keyed = {401: E, 403: E, 429: E, 503: E}
    project = "/api/admin/projects/{project_id}"
    return [
        Operation(
            "GET",
            "/api/admin/orgs",
            list_orgs,
            "Organisations the key sees",
            "projects",
            {200: OrgList, **keyed},
            auth="api_key",
        ),
        Operation(
            "POST",
            "/api/admin/orgs",
            create_org,
            "Create an organisation (admin keys)",
            "projects",
            {201: OrgView, 400: E, 409: E, 413: E, 422: E, **keyed},
            body=OrgCreate,
            auth="admin",
        ),
        Operation(
            "GET",
            "/api/admin/projects",
            list_projects,
            "Projects the key sees",
            "projects",
            {200: ProjectList, **keyed},
            auth="api_key",
        ),
        Operation(
            "POST",
            "/api/admin/projects",
            create_project,
            "Create a project (admin or org keys)",
            "projects",
            {201: ProjectCreated, 400: E, 404: E, 409: E, 413: E, 422: E, **keyed},
            body=ProjectCreate,
            auth="api_key",
            description="Secrets are sealed at rest and never shown again; a callback signing "
            "secret is generated and returned once when none is given.",
        ),
        Operation(
            "GET",
            project,
            get_project,
            "One project",
            "projects",
            {200: ProjectView, 404: E, **keyed},
            auth="api_key",
        ),
        Operation(
            "PATCH",
            project,
            patch_project,
            "Change a project's settings",
            "projects",
            {200: ProjectView, 400: E, 404: E, 409: E, 413: E, 422: E, **keyed},
            body=ProjectFields,
            auth="api_key",
        ),
        Operation(
            "DELETE",
            project,
            delete_project,
            "Delete a project",
            "projects",
            {204: None, 404: E, 409: E, **keyed},
            auth="api_key",
        ),
        Operation(
            "POST",
            f"{project}/secrets",
            add_secret,
            "Add a webhook or callback secret, or set the outbound credential",
            "projects",
            {201: SecretAdded, 400: E, 404: E, 409: E, 413: E, 422: E, **keyed},
            body=SecretAdd,
            auth="api_key",
        ),
        Operation(
            "POST",
            "/api/admin/reseal",
            reseal,
            "Seal every project's secrets with the newest key",
            "projects",
            {200: Resealed, 409: E, **keyed},
            auth="admin",
        ),
        Operation(
            "DELETE",
            f"{project}/secrets/{{secret_id}}",
            delete_secret,
            "Remove a secret",
            "projects",
            {204: None, 404: E, 409: E, **keyed},
            auth="api_key",
        ),
    ]
