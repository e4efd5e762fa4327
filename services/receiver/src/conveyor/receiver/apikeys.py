"""API keys: made here, shown once, stored only as sha256 hashes in KV ``apikeys``.

A replica keeps what it looked up for ``APIKEY_CACHE_S`` (unknown keys for one second), so
an authenticated request costs no KV read most of the time; a revocation takes effect at
once on the replica that made it and within the cache time on the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from msgspec.structs import replace

from conveyor.receiver.config import Settings
from conveyor.shared import bus
from conveyor.shared.contracts.events import ApiKeyRecord, api_key_decoder, encoder, utcnow
from conveyor.shared.domain.tenancy import ADMIN, DEFAULT_PROJECT, DEFAULT_SCOPE, Scope

KEY_PREFIX = "cvk_"
_NEGATIVE_CACHE_S = 1.0
_CACHE_MAX = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(digest: str) -> str:
    """The public name of a key: the start of its hash (the hash itself is the KV key)."""
    return digest[:16]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a key's id, name, admin flag, limits (0 = unlimited) and scope."""

    key_id: str
    name: str
    admin: bool
    per_minute: int
    per_day: int
    scope: Scope = DEFAULT_SCOPE

    @property
    def project(self) -> str:
        """The project new objects of this key belong to (admin and org keys name one per call)."""
        return self.scope.project_id or DEFAULT_PROJECT


def scope_of(record: ApiKeyRecord) -> Scope:
    """A stored key's scope; keys made before scopes are admin keys or default-project keys."""
    if record.scope == "admin" or (record.scope == "" and record.admin):
        return ADMIN
    if record.scope == "org":
        return Scope(kind="org", org_id=record.org_id, read_only=record.read_only)
    if record.scope == "project":
        return Scope(
            kind="project", org_id=record.org_id, project_id=record.project_id, read_only=record.read_only
        )
    return DEFAULT_SCOPE


class KeyRevoked(Exception):
    pass


class KeysUnavailable(Exception):
    """A key not in the cache cannot be looked up (NATS unreachable)."""


class ApiKeys:
    def __init__(self, settings: Settings, connected: Callable[[], bool] = lambda: True) -> None:
        self.kv: bus.Kv | None = None
        self._connected = connected
        self._cache_s = settings.apikey_cache_s
        self._cache: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._static: dict[str, Principal] = {}
        if settings.admin_api_key:
            # The operator's key: admin, and not rate limited.
            self._static[hash_key(settings.admin_api_key.reveal())] = Principal(
                "admin", "admin", True, 0, 0, ADMIN
            )
        if settings.lovable_api_key:
            self._static[hash_key(settings.lovable_api_key.reveal())] = Principal(
                "lovable", "lovable", False, settings.api_key_per_minute, settings.api_key_per_day
            )

    async def authenticate(self, key: str) -> Principal | None:
        """The principal for ``key``; None when unknown; KeyRevoked when revoked."""
        digest = hash_key(key)
        for known, principal in self._static.items():
            if hmac.compare_digest(known, digest):
                return principal
        record = await self._lookup(digest)
        if record is None:
            return None
        if record.revoked:
            raise KeyRevoked(record.key_id)
        scope = scope_of(record)
        return Principal(
            record.key_id, record.name, scope.kind == "admin", record.per_minute, record.per_day, scope
        )

    async def _lookup(self, digest: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self.kv is None or not self._connected():
            raise KeysUnavailable  # at once, rather than after the request timeout
        try:
            entry = await self.kv.get(digest)
            record: ApiKeyRecord | None = api_key_decoder.decode(entry.value or b"")
        except bus.NotFound:
            record = None
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        ttl = self._cache_s if record is not None else _NEGATIVE_CACHE_S
        self._cache[digest] = (now + ttl, record)
        return record

    async def create(
        self, name: str, *, per_minute: int, per_day: int, scope: Scope
    ) -> tuple[str, ApiKeyRecord]:
        """Make a key; the returned string is the only time it exists outside the caller."""
        assert self.kv is not None
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(key)
        record = ApiKeyRecord(
            key_id=key_id_of(digest),
            name=name,
            created_at=utcnow(),
            prefix=key[:8],
            admin=scope.kind == "admin",
            per_minute=per_minute,
            per_day=per_day,
            scope=scope.kind,
            org_id=scope.org_id,
            project_id=scope.project_id,
            read_only=scope.read_only,
        )
        await self.kv.create(digest, encoder.encode(record))
        return key, record

    async def list(self) -> list[ApiKeyRecord]:
        assert self.kv is not None
        try:
            keys = await self.kv.keys()
        except bus.NotFound:
            return []
        entries = await asyncio.gather(*(self.kv.get(k) for k in keys), return_exceptions=True)
        records = [
            api_key_decoder.decode(e.value or b"") for e in entries if not isinstance(e, BaseException)
        ]
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark the key revoked (the record stays, for the list); None when unknown."""
        assert self.kv is not None
        try:
            keys = await self.kv.keys()
        except bus.NotFound:
            return None
        for digest in keys:
            if key_id_of(digest) != key_id:
                continue
            entry = await self.kv.get(digest)
            record = api_key_decoder.decode(entry.value or b"")
            if not record.revoked:
                record = replace(record, revoked=True)
                await self.kv.update(digest, encoder.encode(record), last=entry.revision)
            self._cache[digest] = (time.monotonic() + self._cache_s, record)
            return record
        return None
