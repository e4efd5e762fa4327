"""A project's connections to GitHub and Slack: the credentials its agents' tools act with.

One record per project and provider in KV ``connections`` under ``<project>.<provider>``
(not ``integration``, which is the per-project webhook and callback health status). The
credential itself (a token, or a GitHub App's private key) is sealed with the rotating
``CONVEYOR_SECRET_KEYS`` (conveyor.shared.domain.sealing) and bound to its project and provider,
so a value copied into another record does not open. The receiver writes the records (its
API and the OAuth callbacks); the executor reads them when a tool asks for a token.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from conveyor.shared.contracts.events import Message
from conveyor.shared.domain.sealing import SealedSecret, Sealer
from conveyor.shared.domain.tenancy import secret_context

Provider = Literal["github", "slack"]
PROVIDERS: tuple[str, ...] = ("github", "slack")

Kind = Literal["token", "app", "bot"]
"""token: a GitHub token (personal, or a user's from the OAuth web flow); app: a GitHub App
installation (the secret is the App's private key; tokens are minted per use); bot: a Slack
bot token."""


class Connection(Message, frozen=True, kw_only=True):
    """KV ``connections`` under :func:`key_of`."""

    project_id: str
    provider: Provider
    kind: Kind
    secret: SealedSecret
    set_at: dt.datetime
    via: Literal["api", "oauth", "install"] = "api"
    set_by: str = ""
    """The API key id that set it, or the key that started the OAuth flow."""
    account: str | None = None
    """GitHub: the user or organisation the token or installation acts as."""
    app_id: int | None = None
    installation_id: int | None = None
    team_id: str | None = None
    team_name: str | None = None
    bot_user_id: str | None = None
    scopes: list[str] = []


connection_decoder = msgspec.json.Decoder(Connection)


def key_of(project_id: str, provider: str) -> str:
    return f"{project_id}.{provider}"


def context_of(project_id: str, provider: str) -> str:
    """What a connection's secret is sealed to (its associated data)."""
    return secret_context(project_id, f"connections/{provider}")


def open_secret(sealer: Sealer, conn: Connection) -> str:
    """The credential in clear; SealingError when it does not open (key dropped, tampered, moved)."""
    return sealer.open(conn.secret, context_of(conn.project_id, conn.provider))


def resealed(sealer: Sealer, conn: Connection) -> Connection:
    """``conn`` with its secret under the active key (the same record when it already is)."""
    again = sealer.reseal(conn.secret, context_of(conn.project_id, conn.provider))
    if again is conn.secret:
        return conn
    return msgspec.structs.replace(conn, secret=msgspec.structs.replace(again, id=conn.secret.id))


def rsa_key_problem(pem: str) -> str | None:
    """What is wrong with a GitHub App private key (GitHub hands out PEM RSA keys), or None."""
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        return "not a PEM private key without a passphrase (-----BEGIN RSA PRIVATE KEY-----)"
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        return "must be an RSA key of at least 2048 bits, as GitHub makes"
    return None
