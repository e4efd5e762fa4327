"""Sites and deployments in JetStream KV: reads, compare-and-set updates, and deployment requests.

The receiver (sites API) and the deployer both go through this module, so the rules for a
request live in one place:

* publish and preview deploy the site's draft (a preview may bring its own config);
  rollback deploys an earlier successful deployment's config and reuses its artifact;
* the same config requested again, while the previous request for it is not failed,
  cancelled or superseded, answers the existing deployment (``duplicate``);
* the site record's ``latest_request`` is moved with compare-and-set, so of two concurrent
  publishes exactly one is the newest, and the deployer supersedes the other if it is
  still queued;
* the record is written before the site points at it and before the message is published,
  and the message's Nats-Msg-Id is the deployment id, so a retried request after a failed
  publish republishes safely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.deploys import (
    LIVE_KINDS,
    DeploymentKind,
    DeploymentRecord,
    DeployRequest,
    SiteConfig,
    SiteRecord,
    config_hash,
    deployment_decoder,
    new_deployment_id,
    site_decoder,
)
from conveyor.shared.contracts.events import DEFAULT_PROJECT, encoder, utcnow

log = logging.getLogger(__name__)

MAX_LISTED: Final = 100  # deployment ids kept on a site record, newest first
_CAS_TRIES: Final = 20


class DeployStoreError(Exception):
    """A request that cannot be served; ``status`` and ``code`` map onto an HTTP answer."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class Requested:
    deployment: DeploymentRecord
    duplicate: bool


def deploy_msg_id(deployment_id: str) -> str:
    return f"deploy-{deployment_id}"


class DeployStore:
    """Typed access to KV ``sites`` and ``deployments`` plus the DEPLOYS stream."""

    def __init__(self, js: bus.Bus, sites: bus.Kv, deployments: bus.Kv) -> None:
        self.js = js
        self.sites = sites
        self.deployments = deployments

    # --- reads ------------------------------------------------------------------------------

    async def site(self, site_id: str) -> tuple[SiteRecord, int] | None:
        return await _read(self.sites, site_decoder, site_id)

    async def all_sites(self) -> list[SiteRecord]:
        """Every site (a list is read whole: sites are few, one per published app)."""
        try:
            keys = await self.sites.keys()
        except bus.NotFound:
            return []
        found = await asyncio.gather(*(self.site(k) for k in keys))
        return [rec for rec, _ in (f for f in found if f is not None)]

    async def deployment(self, deployment_id: str) -> tuple[DeploymentRecord, int] | None:
        return await _read(self.deployments, deployment_decoder, deployment_id)

    async def site_deployments(self, site: SiteRecord, limit: int = MAX_LISTED) -> list[DeploymentRecord]:
        """The site's deployments, newest first (ids whose record is gone are skipped)."""
        found = await asyncio.gather(*(self.deployment(d) for d in site.deployments[:limit]))
        return [rec for rec, _ in (f for f in found if f is not None)]

    # --- compare-and-set updates ---------------------------------------------------------------

    async def update_site(
        self, site_id: str, change: Callable[[SiteRecord], SiteRecord | None]
    ) -> SiteRecord | None:
        """Apply ``change`` to the current record until the write wins; None from ``change``
        means nothing to write. Returns the record as written (or as it was; None: no record)."""
        return await _update(self.sites, site_decoder, site_id, change, f"site {site_id}")

    async def update_deployment(
        self, deployment_id: str, change: Callable[[DeploymentRecord], DeploymentRecord | None]
    ) -> DeploymentRecord | None:
        """Compare-and-set loop on a deployment record (see :meth:`update_site`); every write
        is stamped with ``updated_at``."""

        def stamped(current: DeploymentRecord) -> DeploymentRecord | None:
            new = change(current)
            return None if new is None else msgspec.structs.replace(new, updated_at=utcnow())

        return await _update(
            self.deployments, deployment_decoder, deployment_id, stamped, f"deployment {deployment_id}"
        )

    # --- drafts -------------------------------------------------------------------------------

    async def save_draft(
        self,
        config: SiteConfig,
        *,
        callback_url: str | None = None,
        project_id: str | None = None,
        source: str = "api",
        owner: str | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> tuple[SiteRecord, bool]:
        """Create the site (id = slug) or replace its draft. Returns (record, created). A site
        stays in the project that made it: saving over another project's slug is refused."""
        site_id = config.slug
        now = utcnow()
        for _ in range(_CAS_TRIES):
            found = await self.site(site_id)
            if found is None:
                record = SiteRecord(
                    site_id=site_id,
                    name=config.name,
                    created_at=now,
                    updated_at=now,
                    draft=config,
                    draft_hash=config_hash(config),
                    callback_url=callback_url,
                    project_id=project_id,
                    source=source,
                    owner=owner,
                    project=project,
                )
                try:
                    await self.sites.create(site_id, encoder.encode(record))
                    return record, True
                except bus.Conflict:
                    continue
            current, rev = found
            if current.project != project:
                # Slugs are public host names, so saying it is taken tells nothing new.
                raise DeployStoreError(409, "slug_taken", f"the slug {site_id!r} is taken; choose another")
            record = msgspec.structs.replace(
                current,
                name=config.name,
                updated_at=now,
                draft=config,
                draft_hash=config_hash(config),
                callback_url=callback_url if callback_url is not None else current.callback_url,
                project_id=project_id if project_id is not None else current.project_id,
                owner=current.owner or owner,
            )
            try:
                await self.sites.update(site_id, encoder.encode(record), last=rev)
                return record, False
            except bus.Conflict:
                continue
        raise DeployStoreError(409, "conflict", f"site {site_id} is being changed concurrently; retry")

    # --- deployment requests -------------------------------------------------------------------

    async def request(
        self,
        site_id: str,
        kind: DeploymentKind,
        *,
        config: SiteConfig | None = None,
        rollback_of: str | None = None,
        correlation_id: str | None = None,
    ) -> Requested:
        """Record and publish a deployment request (see the module docstring for the rules)."""
        for _ in range(_CAS_TRIES):
            found = await self.site(site_id)
            if found is None:
                raise DeployStoreError(404, "not_found", f"no site {site_id}")
            site, rev = found
            target_config = await self._config_for(site, kind, config, rollback_of)
            digest = config_hash(target_config)

            previous_id = site.latest_request if kind in LIVE_KINDS else site.latest_preview
            if previous_id and (prev := await self.deployment(previous_id)) is not None:
                rec = prev[0]
                same = rec.kind == kind and rec.config_hash == digest and rec.rollback_of == rollback_of
                if same and rec.status not in ("failed", "cancelled", "superseded"):
                    if rec.status == "pending":
                        await self._publish(rec)  # deduplicated by the server if it went out before
                    return Requested(rec, duplicate=True)

            now = utcnow()
            deployment_id = new_deployment_id()
            record = DeploymentRecord(
                deployment_id=deployment_id,
                site_id=site_id,
                kind=kind,
                status="pending",
                config=target_config,
                config_hash=digest,
                created_at=now,
                updated_at=now,
                rollback_of=rollback_of,
                callback_url=site.callback_url,
                project_id=site.project_id,
                source=site.source,
                correlation_id=correlation_id,
                project=site.project,
            )
            pointers = (
                {"latest_request": deployment_id} if kind in LIVE_KINDS else {"latest_preview": deployment_id}
            )
            new_site = msgspec.structs.replace(
                site,
                updated_at=now,
                deployments=[deployment_id, *site.deployments][:MAX_LISTED],
                **pointers,
            )
            # The record first: whoever reads the site's pointer can always read what it names.
            await self.deployments.create(deployment_id, encoder.encode(record))
            try:
                await self.sites.update(site_id, encoder.encode(new_site), last=rev)
            except bus.Conflict:
                # Another request won; drop ours and look again (it may be ours to deduplicate).
                await self.deployments.purge(deployment_id)
                continue
            await self._publish(record)
            return Requested(record, duplicate=False)
        raise DeployStoreError(409, "conflict", f"site {site_id} is being changed concurrently; retry")

    async def _config_for(
        self,
        site: SiteRecord,
        kind: DeploymentKind,
        config: SiteConfig | None,
        rollback_of: str | None,
    ) -> SiteConfig:
        if kind == "rollback":
            if not rollback_of:
                raise DeployStoreError(400, "bad_request", "deployment_id is required", field="deployment_id")
            found = await self.deployment(rollback_of)
            if found is None or found[0].site_id != site.site_id:
                raise DeployStoreError(
                    404,
                    "not_found",
                    f"no deployment {rollback_of} of site {site.site_id}",
                    field="deployment_id",
                )
            target = found[0]
            if target.kind not in LIVE_KINDS or target.status != "success":
                raise DeployStoreError(
                    409,
                    "conflict",
                    f"deployment {rollback_of} is a {target.kind} with status {target.status}; "
                    "only a successful publish or rollback can be rolled back to",
                    field="deployment_id",
                )
            return target.config
        if config is not None:
            if config.slug != site.site_id:
                raise DeployStoreError(
                    422, "invalid_config", f"config slug {config.slug!r} is not this site's", field="slug"
                )
            return config
        if site.draft is None:
            raise DeployStoreError(400, "no_draft", f"site {site.site_id} has no draft to {kind}")
        return site.draft

    async def _publish(self, record: DeploymentRecord) -> None:
        request = DeployRequest(
            deployment_id=record.deployment_id,
            site_id=record.site_id,
            kind=record.kind,
            requested_at=record.created_at,
            correlation_id=record.correlation_id,
        )
        await self.js.publish(
            subjects.deploy_requested(record.site_id),
            encoder.encode(request),
            stream=subjects.DEPLOYS,
            msg_id=deploy_msg_id(record.deployment_id),
        )

    async def cancel(self, deployment_id: str) -> DeploymentRecord:
        """Ask the deployer to stop a deployment; it stops at the next step boundary."""

        def change(rec: DeploymentRecord) -> DeploymentRecord | None:
            if rec.terminal:
                raise DeployStoreError(409, "conflict", f"deployment {deployment_id} is already {rec.status}")
            return None if rec.cancel_requested else msgspec.structs.replace(rec, cancel_requested=True)

        rec = await self.update_deployment(deployment_id, change)
        if rec is None:
            raise DeployStoreError(404, "not_found", f"no deployment {deployment_id}")
        return rec


R = TypeVar("R")


async def _read(kv: bus.Kv, decoder: msgspec.json.Decoder[R], key: str) -> tuple[R, int] | None:
    """The record under ``key`` and its revision; None when there is none (or a delete marker)."""
    try:
        entry = await kv.get(key)
    except bus.NotFound:
        return None
    if entry.value is None:
        return None
    return decoder.decode(entry.value), entry.revision or 0


async def _update(
    kv: bus.Kv,
    decoder: msgspec.json.Decoder[R],
    key: str,
    change: Callable[[R], R | None],
    what: str,
) -> R | None:
    """Read, change, write against the revision read; again when someone wrote in between."""
    for _ in range(_CAS_TRIES):
        found = await _read(kv, decoder, key)
        if found is None:
            return None
        current, rev = found
        new = change(current)
        if new is None:
            return current
        try:
            await kv.update(key, encoder.encode(new), last=rev)
            return new
        except bus.Conflict:
            continue
    raise DeployStoreError(409, "conflict", f"{what} is being changed concurrently; retry")
