"""Tokens for a job's tools: ``AgentJob.credentials(provider)`` answered from the project's
integration (KV ``connections``, written by the receiver; conveyor.shared.domain.connections).

A token or Slack bot token is opened and handed over as it is. A GitHub App installation
holds the App's private key: a short-lived RS256 JWT signed with it is exchanged at
``POST {GITHUB_API_URL}/app/installations/{id}/access_tokens`` for an installation token,
which is kept (in memory only) until shortly before its ``expires_at``. Nothing here logs a
token or a key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import jwt

from conveyor.executor.backends.base import AgentError, TransientError
from conveyor.shared import bus
from conveyor.shared.domain.connections import PROVIDERS, Connection, connection_decoder, key_of, open_secret
from conveyor.shared.domain.sealing import Sealer, SealingError

log = logging.getLogger(__name__)

Credentials = Callable[[str], Awaitable[str | None]]

_JWT_LIFETIME_S = 540  # GitHub accepts at most 10 minutes
_CLOCK_SKEW_S = 60  # iat in the past, as GitHub advises, for clocks a little ahead
_REFRESH_BEFORE_S = 300  # an installation token is replaced this long before it expires


async def _none(provider: str) -> str | None:
    return None


def no_credentials(project: str) -> Credentials:
    """For a worker without integrations: every provider is "not connected"."""
    return _none


class CredentialsProvider:
    def __init__(self, kv: bus.Kv, sealer: Sealer, http: httpx.AsyncClient, github_api_url: str) -> None:
        self.kv = kv
        self.sealer = sealer
        self.http = http
        self.github_api_url = github_api_url.rstrip("/")
        # (project, app, installation, record revision) -> (token, monotonic time to replace it)
        self._tokens: dict[tuple[str, int, int, int], tuple[str, float]] = {}
        self._minting: dict[tuple[str, int, int, int], asyncio.Lock] = {}

    def of(self, project: str) -> Credentials:
        """``AgentJob.credentials`` for a job of ``project``."""

        async def credentials(provider: str) -> str | None:
            return await self.get(project, provider)

        return credentials

    async def get(self, project: str, provider: str) -> str | None:
        """The token for ``provider`` in ``project``; None when the project has not connected it."""
        if provider not in PROVIDERS:
            return None
        try:
            entry = await self.kv.get(key_of(project, provider))
        except bus.NotFound:
            return None
        except (bus.BusError, TimeoutError) as exc:
            raise TransientError(
                f"the {provider} integration cannot be read ({type(exc).__name__})"
            ) from None
        conn = connection_decoder.decode(entry.value or b"")
        try:
            secret = open_secret(self.sealer, conn)
        except SealingError as exc:
            # An operator's mistake (a key dropped before reseal): say so, not "not connected".
            raise AgentError(f"the project's {provider} integration cannot be opened: {exc}") from None
        if conn.kind != "app":
            return secret
        return await self._installation_token(conn, secret, entry.revision or 0)

    async def _installation_token(self, conn: Connection, private_key: str, revision: int) -> str:
        assert conn.app_id is not None and conn.installation_id is not None
        key = (conn.project_id, conn.app_id, conn.installation_id, revision)
        lock = self._minting.setdefault(key, asyncio.Lock())
        async with lock:  # one exchange at a time per installation: the others use its token
            hit = self._tokens.get(key)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0]
            token, expires_at = await self._mint(conn.app_id, conn.installation_id, private_key)
            keep_s = (expires_at - dt.datetime.now(dt.UTC)).total_seconds() - _REFRESH_BEFORE_S
            # Older revisions' tokens (the integration was set again) are dropped with them.
            for old in [k for k in self._tokens if k[:3] == key[:3] and k != key]:
                self._tokens.pop(old, None)
                self._minting.pop(old, None)
            if keep_s > 0:
                self._tokens[key] = (token, time.monotonic() + keep_s)
            return token

    def app_jwt(self, app_id: int, private_key: str) -> str:
        """The App's JWT: RS256, iss its id, valid for less than GitHub's 10-minute limit."""
        now = int(time.time())
        claims = {"iat": now - _CLOCK_SKEW_S, "exp": now + _JWT_LIFETIME_S, "iss": str(app_id)}
        return jwt.encode(claims, private_key, algorithm="RS256")

    async def _mint(self, app_id: int, installation_id: int, private_key: str) -> tuple[str, dt.datetime]:
        url = f"{self.github_api_url}/app/installations/{installation_id}/access_tokens"
        headers = {
            "Authorization": f"Bearer {self.app_jwt(app_id, private_key)}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            resp = await self.http.post(url, headers=headers, timeout=15)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"GitHub did not answer for an installation token ({type(exc).__name__})"
            ) from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientError(
                f"GitHub answered {resp.status_code} for an installation token", status_code=resp.status_code
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 201 or not isinstance(body, dict) or not isinstance(body.get("token"), str):
            message = body.get("message", "") if isinstance(body, dict) else ""
            raise AgentError(
                f"GitHub refused an installation token for installation {installation_id} "
                f"({resp.status_code} {str(message)[:120]})".rstrip()
            )
        try:
            expires_at = dt.datetime.fromisoformat(str(body.get("expires_at", "")).replace("Z", "+00:00"))
        except ValueError:
            expires_at = dt.datetime.now(dt.UTC)  # unknown: used for this call, not kept
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        log.info("installation token minted for installation %s (expires %s)", installation_id, expires_at)
        return str(body["token"]), expires_at
