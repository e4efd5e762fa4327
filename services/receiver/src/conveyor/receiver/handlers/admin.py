"""/api/admin/keys: list, create (the key is shown once) and revoke API keys.

Admin keys manage every key; a full organisation key manages the keys of its organisation and
its projects (never an admin key). A project key manages none. Another organisation's key
answers 404, as a missing one."""

from __future__ import annotations

import msgspec
from aiohttp import web

from conveyor.receiver.apikeys import Principal, scope_of
from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.projects_api import org_exists
from conveyor.receiver.schemas import KeyCreate, KeyCreated, KeyList, KeyView
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared.contracts.events import ApiKeyRecord
from conveyor.shared.domain.tenancy import ADMIN, DEFAULT_PROJECT, Scope
from conveyor.shared.runtime.http import HTTPError

_create_decoder = msgspec.json.Decoder(KeyCreate)


def _view(r: ApiKeyRecord) -> KeyView:
    scope = scope_of(r)
    return KeyView(
        key_id=r.key_id,
        name=r.name,
        prefix=r.prefix,
        admin=scope.kind == "admin",
        per_minute=r.per_minute,
        per_day=r.per_day,
        revoked=r.revoked,
        created_at=r.created_at,
        scope=scope.kind,
        org_id=scope.org_id,
        project_id=scope.project_id,
        read_only=scope.read_only,
    )


async def _manager(request: web.Request) -> tuple[Receiver, Principal]:
    st = request.app[STATE]
    principal = await st.authenticate(request)
    scope = principal.scope
    if scope.kind == "project" or scope.read_only:
        raise HTTPError(403, "forbidden", f"a key of {scope.describe()} cannot manage API keys")
    await st.limit_key(request, principal)
    st.require_nats()
    return st, principal


def _manages(manager: Scope, key: Scope) -> bool:
    return manager.kind == "admin" or (key.kind != "admin" and key.org_id == manager.org_id)


async def _requested_scope(st: Receiver, body: KeyCreate) -> Scope:
    """The scope the body asks for, checked against the projects that exist."""
    kind = (
        "admin" if body.admin else body.scope or ("org" if body.org_id and not body.project_id else "project")
    )
    if kind == "admin":
        return ADMIN
    if kind == "org":
        if not body.org_id:
            raise HTTPError(422, "invalid_field", "org_id: required for an org key", field="org_id")
        if not await org_exists(st, body.org_id):
            raise HTTPError(404, "org_not_found", f"no organisation {body.org_id[:64]!r}", field="org_id")
        return Scope(kind="org", org_id=body.org_id, read_only=body.read_only)
    project = st.directory.get(body.project_id or DEFAULT_PROJECT)
    if project is None:
        raise HTTPError(404, "project_not_found", f"no project {body.project_id!r}", field="project_id")
    return Scope(
        kind="project", org_id=project.org_id, project_id=project.project_id, read_only=body.read_only
    )


async def list_keys(request: web.Request) -> web.Response:
    st, principal = await _manager(request)
    with st.nats_errors():
        records = await st.keys.list()
    views = [_view(r) for r in records if _manages(principal.scope, scope_of(r))]
    return respond(200, KeyList(keys=views))


async def create_key(request: web.Request) -> web.Response:
    st, principal = await _manager(request)
    body: KeyCreate = decode_json(_create_decoder, await st.read_body(request))
    scope = await _requested_scope(st, body)
    if not _manages(principal.scope, scope):
        if scope.kind == "admin":
            raise HTTPError(403, "forbidden", "only an admin key can create admin keys")
        raise HTTPError(404, "project_not_found", "no such organisation or project", field="project_id")
    per_minute = st.settings.api_key_per_minute if body.per_minute is None else body.per_minute
    per_day = st.settings.api_key_per_day if body.per_day is None else body.per_day
    with st.nats_errors():
        key, r = await st.keys.create(body.name, per_minute=per_minute, per_day=per_day, scope=scope)
    created = KeyCreated(**msgspec.structs.asdict(_view(r)), key=key)
    return respond(201, created, {"Cache-Control": "no-store"})


async def revoke_key(request: web.Request) -> web.Response:
    st, principal = await _manager(request)
    key_id = request.match_info["key_id"]
    with st.nats_errors():
        records = await st.keys.list()
    target = next((r for r in records if r.key_id == key_id), None)
    if target is None or not _manages(principal.scope, scope_of(target)):
        raise HTTPError(404, "key_not_found", f"no API key {key_id[:64]!r}")
    with st.nats_errors():
        record = await st.keys.revoke(key_id)
    if record is None:
        raise HTTPError(404, "key_not_found", f"no API key {key_id[:64]!r}")
    return respond(200, _view(record))
