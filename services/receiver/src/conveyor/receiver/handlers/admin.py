"""/api/admin/keys: list, create (the key is shown once) and revoke API keys. ADMIN_API_KEY
(or a key created with admin=true) is required: 401 without a key, 403 with a non-admin one."""

from __future__ import annotations

import msgspec
from aiohttp import web

from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.schemas import KeyCreate, KeyCreated, KeyList, KeyView
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import STATE
from conveyor.shared.events import ApiKeyRecord
from conveyor.shared.http import HTTPError

_create_decoder = msgspec.json.Decoder(KeyCreate)


def _view(r: ApiKeyRecord) -> KeyView:
    return KeyView(
        key_id=r.key_id,
        name=r.name,
        prefix=r.prefix,
        admin=r.admin,
        per_minute=r.per_minute,
        per_day=r.per_day,
        revoked=r.revoked,
        created_at=r.created_at,
    )


async def list_keys(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.authenticate(request, admin=True)
    st.require_nats()
    with st.nats_errors():
        records = await st.keys.list()
    return respond(200, KeyList(keys=[_view(r) for r in records]))


async def create_key(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.authenticate(request, admin=True)
    st.require_nats()
    body: KeyCreate = decode_json(_create_decoder, await st.read_body(request))
    per_minute = st.settings.api_key_per_minute if body.per_minute is None else body.per_minute
    per_day = st.settings.api_key_per_day if body.per_day is None else body.per_day
    with st.nats_errors():
        key, r = await st.keys.create(body.name, per_minute=per_minute, per_day=per_day, admin=body.admin)
    created = KeyCreated(
        key=key,
        key_id=r.key_id,
        name=r.name,
        prefix=r.prefix,
        admin=r.admin,
        per_minute=r.per_minute,
        per_day=r.per_day,
        created_at=r.created_at,
    )
    return respond(201, created, {"Cache-Control": "no-store"})


async def revoke_key(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.authenticate(request, admin=True)
    st.require_nats()
    key_id = request.match_info["key_id"]
    with st.nats_errors():
        record = await st.keys.revoke(key_id)
    if record is None:
        raise HTTPError(404, "key_not_found", f"no API key {key_id[:64]!r}")
    return respond(200, _view(record))
