"""Site leases in KV ``deploy_leases``: one active deployment per site across all replicas.

A lease names the deployment allowed to run and the replica running it, and lapses unless
renewed. Every write is compare-and-set, so two replicas never both believe they hold it.
A lapsed lease (its holder died) may be taken by anyone; a redelivered deployment resumes
once its dead holder's lease lapses, never while the holder may still be running it.
"""

from __future__ import annotations

import datetime as dt

from conveyor.shared import bus
from conveyor.shared.contracts.deploys import DeployLease, deploy_lease_decoder
from conveyor.shared.contracts.events import encoder, utcnow


class Leases:
    def __init__(self, kv: bus.Kv, holder: str, lease_s: float) -> None:
        self.kv = kv
        self.holder = holder
        self.lease_s = lease_s

    def _lease(self, site_id: str, deployment_id: str, acquired_at: dt.datetime | None = None) -> bytes:
        now = utcnow()
        return encoder.encode(
            DeployLease(
                site_id=site_id,
                deployment_id=deployment_id,
                holder=self.holder,
                acquired_at=acquired_at or now,
                expires_at=now + dt.timedelta(seconds=self.lease_s),
            )
        )

    async def current(self, site_id: str) -> tuple[DeployLease | None, int]:
        try:
            entry = await self.kv.get(site_id)
        except bus.NotFound:
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return deploy_lease_decoder.decode(entry.value), entry.revision or 0

    async def acquire(self, site_id: str, deployment_id: str) -> bool:
        """Take the site's lease for ``deployment_id`` if it is free, lapsed, or already ours."""
        lease, rev = await self.current(site_id)
        try:
            if lease is None:
                if rev:
                    await self.kv.update(site_id, self._lease(site_id, deployment_id), last=rev)
                else:
                    await self.kv.create(site_id, self._lease(site_id, deployment_id))
                return True
            ours = lease.holder == self.holder and lease.deployment_id == deployment_id
            if ours or lease.expires_at <= utcnow():
                await self.kv.update(site_id, self._lease(site_id, deployment_id), last=rev)
                return True
        except bus.Conflict:
            return False
        return False

    async def renew(self, site_id: str, deployment_id: str) -> bool:
        """Extend our lease; False when it is no longer ours (it lapsed and was taken)."""
        lease, rev = await self.current(site_id)
        if lease is None or lease.holder != self.holder or lease.deployment_id != deployment_id:
            return False
        try:
            await self.kv.update(site_id, self._lease(site_id, deployment_id, lease.acquired_at), last=rev)
        except bus.Conflict:
            return False
        return True

    async def release(self, site_id: str, deployment_id: str) -> None:
        lease, rev = await self.current(site_id)
        if lease is None or lease.holder != self.holder or lease.deployment_id != deployment_id:
            return
        try:
            await self.kv.delete(site_id, last=rev)
        except bus.Conflict:
            pass
