"""Sites and deployments API (POST /api/sites, publish, rollback, preview, deployment reads).

The receiver keeps drafts in KV ``sites`` and turns publish, preview and rollback into
deployment records (KV ``deployments``) and ``deploys.requested.<site>`` messages through
:class:`conveyor.shared.domain.deploy_store.DeployStore`; the deployer does the rest. Reads come
from KV, so any replica answers for any site. Every route takes the same API key as the jobs
API; a site belongs to the key that created it (admin keys see every site).

Routes:
  POST /api/sites                          create the site or replace its draft
  GET  /api/sites/{site_id}                the site: draft, live deployment, latest requests
  POST /api/sites/{site_id}/publish        202 {deployment_id}; 400 without a draft
  POST /api/sites/{site_id}/preview        202 {deployment_id}: own URL, live untouched
  POST /api/sites/{site_id}/rollback       {deployment_id}: 202, reuses that build
  GET  /api/sites/{site_id}/deployments    newest first
  GET  /api/deployments/{deployment_id}    the record: status, steps, external ids, URL
  GET  /api/deployments/{deployment_id}/stream   Server-Sent Events until a final status
  POST /api/deployments/{deployment_id}/cancel   stop at the next step boundary
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.openapi import SSE, Operation, Param
from conveyor.receiver.schemas import ProjectRef
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import CORRELATION_ID, STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.deploys import (
    DEPLOYMENT_ID_RE,
    HTTP_URL_RE,
    SLUG_RE,
    DeploymentRecord,
    SiteConfig,
    SiteRecord,
    deployment_decoder,
    field_error,
)
from conveyor.shared.contracts.events import encoder
from conveyor.shared.domain.deploy_store import DeployStore, DeployStoreError
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.runner import Runtime

log = logging.getLogger(__name__)

_SLUG = re.compile(SLUG_RE)
_DEPLOYMENT = re.compile(DEPLOYMENT_ID_RE)


# --- bodies ---------------------------------------------------------------------------------------


class SiteSave(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/sites: the configuration an agent produced, and where to report deployments."""

    config: SiteConfig
    callback_url: Annotated[str, Meta(pattern=HTTP_URL_RE, max_length=2000)] | None = None
    project_id: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    project: ProjectRef | None = None
    """The Conveyor project the site belongs to (admin and organisation keys; a project key's
    own by default). Fixed when the site is made."""


class PreviewCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /api/sites/{id}/preview: preview the draft, or this config without saving it."""

    config: SiteConfig | None = None


class RollbackCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deployment_id: Annotated[str, Meta(pattern=DEPLOYMENT_ID_RE)]


class SiteView(msgspec.Struct, frozen=True, kw_only=True):
    site: SiteRecord
    deployments_url: str
    publish_url: str


class DeploymentAccepted(msgspec.Struct, frozen=True, kw_only=True):
    deployment_id: str
    site_id: str
    kind: str
    status: str
    duplicate: bool
    status_url: str
    stream_url: str


class SiteList(msgspec.Struct, frozen=True, kw_only=True):
    sites: list[SiteRecord]


class DeploymentList(msgspec.Struct, frozen=True, kw_only=True):
    site_id: str
    deployments: list[DeploymentRecord]


# --- helpers --------------------------------------------------------------------------------------


def _state(request: web.Request) -> Receiver:
    return request.app[STATE]


def _store(st: Receiver) -> DeployStore:
    js = st.require_nats()
    return DeployStore(js, st.bucket(subjects.KV_SITES), st.bucket(subjects.KV_DEPLOYMENTS))


async def _caller(request: web.Request) -> tuple[Receiver, Principal]:
    st = _state(request)
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    return st, principal


def _json(body: msgspec.Struct, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


@contextlib.contextmanager
def _answers(st: Receiver) -> Any:
    """Store errors become their 4xx; "JetStream did not answer" becomes 503 + Retry-After."""
    with st.nats_errors():
        try:
            yield
        except DeployStoreError as exc:
            raise HTTPError(exc.status, exc.code, exc.message, **exc.extra) from None


def _decode(body: bytes, kind: type[Any]) -> Any:
    return decode_json(_decoder(kind), body, _invalid_config)


@functools.cache
def _decoder(kind: type[Any]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


def _invalid_config(exc: msgspec.ValidationError) -> HTTPError:
    err = field_error(exc)
    return HTTPError(422, "invalid_config", err.message, field=err.field)


def _site_id(request: web.Request) -> str:
    site_id = request.match_info["site_id"]
    if not _SLUG.match(site_id):
        raise HTTPError(404, "not_found", f"no site {site_id}")
    return site_id


def _deployment_id(request: web.Request) -> str:
    deployment_id = request.match_info["deployment_id"]
    if not _DEPLOYMENT.match(deployment_id):
        raise HTTPError(404, "not_found", f"no deployment {deployment_id}")
    return deployment_id


async def _own_site(
    st: Receiver,
    principal: Principal,
    site_id: str,
    *,
    write: bool = False,
) -> SiteRecord:
    """The site when the caller's scope sees its project; another project's site answers as a
    missing one. ``write``: a read-only key gets 403."""
    with _answers(st):
        found = await _store(st).site(site_id)
    if found is None or not st.sees(principal, found[0].project):
        raise HTTPError(404, "not_found", f"no site {site_id}; POST /api/sites first")
    if write:
        st.writable(principal, found[0].project)
    return found[0]


async def _own_deployment(
    st: Receiver, principal: Principal, deployment_id: str, *, write: bool = False
) -> DeploymentRecord:
    with _answers(st):
        found = await _store(st).deployment(deployment_id)
    if found is None or not st.sees(principal, found[0].project):
        raise HTTPError(404, "not_found", f"no deployment {deployment_id}")
    if write:
        st.writable(principal, found[0].project)
    return found[0]


def _urls(st: Receiver, deployment_id: str) -> tuple[str, str]:
    base = f"{st.settings.public_url.rstrip('/')}/api/deployments/{deployment_id}"
    return base, f"{base}/stream"


def _accepted(st: Receiver, record: DeploymentRecord, duplicate: bool) -> web.Response:
    status_url, stream_url = _urls(st, record.deployment_id)
    body = DeploymentAccepted(
        deployment_id=record.deployment_id,
        site_id=record.site_id,
        kind=record.kind,
        status=record.status,
        duplicate=duplicate,
        status_url=status_url,
        stream_url=stream_url,
    )
    return _json(body, 202, {"Location": f"/api/deployments/{record.deployment_id}"})


async def _optional_body(st: Receiver, request: web.Request) -> bytes | None:
    if not request.can_read_body:
        return None
    try:
        return await st.read_body(request)
    except HTTPError as exc:
        if exc.error == "empty_body":
            return None
        raise


# --- handlers -------------------------------------------------------------------------------------


async def save_site(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    save: SiteSave = _decode(await st.read_body(request), SiteSave)
    project = st.writable(principal, save.project)
    with _answers(st):
        site, created = await _store(st).save_draft(
            save.config,
            callback_url=save.callback_url,
            project_id=save.project_id,
            owner=principal.key_id,
            project=project.project_id,
        )
    view = SiteView(
        site=site,
        deployments_url=f"/api/sites/{site.site_id}/deployments",
        publish_url=f"/api/sites/{site.site_id}/publish",
    )
    return _json(view, 201 if created else 200, {"Location": f"/api/sites/{site.site_id}"})


async def list_sites(request: web.Request) -> web.Response:
    """The sites of the projects the caller's key sees, by name."""
    st, principal = await _caller(request)
    with _answers(st):
        sites = await _store(st).all_sites()
    visible = sorted((s for s in sites if st.sees(principal, s.project)), key=lambda s: s.site_id)
    return _json(SiteList(sites=visible))


async def get_site(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    site = await _own_site(st, principal, _site_id(request))
    view = SiteView(
        site=site,
        deployments_url=f"/api/sites/{site.site_id}/deployments",
        publish_url=f"/api/sites/{site.site_id}/publish",
    )
    return _json(view)


async def publish(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    site_id = _site_id(request)
    await _own_site(st, principal, site_id, write=True)
    with _answers(st):
        req = await _store(st).request(site_id, "publish", correlation_id=request.get(CORRELATION_ID))
    return _accepted(st, req.deployment, req.duplicate)


async def preview(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    site_id = _site_id(request)
    await _own_site(st, principal, site_id, write=True)
    raw = await _optional_body(st, request)
    body: PreviewCreate = _decode(raw, PreviewCreate) if raw else PreviewCreate()
    with _answers(st):
        req = await _store(st).request(
            site_id, "preview", config=body.config, correlation_id=request.get(CORRELATION_ID)
        )
    return _accepted(st, req.deployment, req.duplicate)


async def rollback(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    site_id = _site_id(request)
    await _own_site(st, principal, site_id, write=True)
    body: RollbackCreate = _decode(await st.read_body(request), RollbackCreate)
    with _answers(st):
        req = await _store(st).request(
            site_id, "rollback", rollback_of=body.deployment_id, correlation_id=request.get(CORRELATION_ID)
        )
    return _accepted(st, req.deployment, req.duplicate)


async def list_deployments(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    site = await _own_site(st, principal, _site_id(request))
    with _answers(st):
        records = await _store(st).site_deployments(site)
    return _json(DeploymentList(site_id=site.site_id, deployments=records))


async def get_deployment(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    return _json(await _own_deployment(st, principal, _deployment_id(request)))


async def cancel_deployment(request: web.Request) -> web.Response:
    st, principal = await _caller(request)
    deployment_id = _deployment_id(request)
    await _own_deployment(st, principal, deployment_id, write=True)
    with _answers(st):
        record = await _store(st).cancel(deployment_id)
    return _json(record, 202)


async def stream_deployment(request: web.Request) -> web.StreamResponse:
    """SSE from a KV watch: ``id:`` is the KV revision (Last-Event-ID resumes), ``event: status``
    when the status changes and ``event: progress`` for other updates of the record, a heartbeat
    comment every SSE_HEARTBEAT_S, closed after a final status."""
    st, principal = await _caller(request)
    deployment_id = _deployment_id(request)
    await _own_deployment(st, principal, deployment_id)
    raw_last = request.headers.get("Last-Event-ID", "").strip()
    last_id = int(raw_last) if raw_last.isascii() and raw_last.isdigit() else None
    with st.nats_errors():
        watcher = await st.bucket(subjects.KV_DEPLOYMENTS).watch(deployment_id)
    resp = web.StreamResponse(status=200, headers=st.stream_headers(request))
    loop = asyncio.get_running_loop()
    beat_s = st.settings.sse_heartbeat_s
    deadline = loop.time() + st.settings.sse_max_s
    next_beat = loop.time() + beat_s
    previous: str | None = None
    try:
        await resp.prepare(request)
        while not st.rt.stopping.is_set() and loop.time() < deadline:
            if not st.rt.connected:
                await resp.write(
                    b'event: error\ndata: {"error":"unavailable","message":"NATS is unreachable"}\n\n'
                )
                break
            now = loop.time()
            if now >= next_beat:
                await resp.write(b": heartbeat\n\n")
                next_beat = now + beat_s
            try:
                entry = await watcher.next(timeout=max(0.05, min(1.0, next_beat - now, deadline - now)))
            except bus.Timeout:
                continue
            if entry is None or not entry.value:
                continue
            record = deployment_decoder.decode(entry.value)
            if last_id is None or (entry.revision or 0) > last_id:
                # "status" when the state moved on, "progress" for a step's ids and timings.
                kind = b"status" if record.status != previous else b"progress"
                data = encoder.encode(record)
                await resp.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (entry.revision or 0, kind, data))
            previous = record.status
            if record.terminal:
                break
    except ConnectionError:
        log.debug("sse client for %s went away", deployment_id)
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return resp


# --- wiring ---------------------------------------------------------------------------------------

_E = None
_KEYED = {401: _E, 403: _E, 429: _E, 503: _E}
_KEY_QUERY = (Param("api_key", "query", "The API key, when an Authorization header cannot be sent."),)
_SITE = "/api/sites/{site_id}"
_DEP = "/api/deployments/{deployment_id}"


def operations() -> list[Operation]:
    """The routes with their types, for the receiver's OpenAPI document."""

    def op(
        method: str, path: str, handler: Any, summary: str, responses: dict[int, Any], **kw: Any
    ) -> Operation:
        return Operation(
            method,
            path,
            handler,
            summary,
            "sites",
            {**responses, **_KEYED},
            auth="api_key",
            params=_KEY_QUERY,
            **kw,
        )

    return [
        op(
            "POST",
            "/api/sites",
            save_site,
            "Create a site or replace its draft",
            {200: SiteView, 201: SiteView, 400: _E, 404: _E, 409: _E, 413: _E, 422: _E},
            body=SiteSave,
        ),
        op("GET", "/api/sites", list_sites, "The sites the key's scope sees", {200: SiteList}),
        op(
            "GET",
            _SITE,
            get_site,
            "A site: draft, live deployment, latest requests",
            {200: SiteView, 404: _E},
        ),
        op(
            "POST",
            f"{_SITE}/publish",
            publish,
            "Publish the draft",
            {202: DeploymentAccepted, 400: _E, 404: _E, 409: _E},
        ),
        op(
            "POST",
            f"{_SITE}/preview",
            preview,
            "Preview the draft (or a given config) at its own URL",
            {202: DeploymentAccepted, 400: _E, 404: _E, 409: _E, 422: _E},
            body=PreviewCreate,
            body_required=False,  # no body: the stored draft
        ),
        op(
            "POST",
            f"{_SITE}/rollback",
            rollback,
            "Roll back to an earlier successful deployment",
            {202: DeploymentAccepted, 400: _E, 404: _E, 409: _E, 422: _E},
            body=RollbackCreate,
        ),
        op(
            "GET",
            f"{_SITE}/deployments",
            list_deployments,
            "The site's deployments, newest first",
            {200: DeploymentList, 404: _E},
        ),
        op(
            "GET",
            _DEP,
            get_deployment,
            "A deployment: status, steps, external ids, URL",
            {200: DeploymentRecord, 404: _E},
        ),
        op(
            "GET",
            f"{_DEP}/stream",
            stream_deployment,
            "A deployment's transitions as Server-Sent Events",
            {200: SSE, 404: _E},
        ),
        op(
            "POST",
            f"{_DEP}/cancel",
            cancel_deployment,
            "Cancel a deployment at its next step",
            {202: DeploymentRecord, 404: _E, 409: _E},
        ),
    ]


def add_routes(rt: Runtime[Any]) -> None:
    """Register the sites/deployments routes on ``rt.app`` (the receiver's STATE must be set)."""
    for operation in operations():
        rt.app.router.add_route(operation.method, operation.path, operation.handler)
