"""Secrets at rest: AES-256-GCM with keys named by id, so a key can be rotated.

``CONVEYOR_SECRET_KEYS`` holds ``<id>:<base64 of 32 bytes>`` pairs, comma-separated; the first
seals, every one opens. Rotation: put the new key first, keep the old one after it until every
sealed value has been written again (``conveyor projects reseal``), then drop it.

Each value is bound to where it is kept (its *context*: the record and field it belongs to)
as associated data, so a sealed value copied into another project's record does not open.
Nothing here logs or returns plaintext; what the API shows of a secret is its ``hint``.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conveyor.shared.runtime.config import Secret

_NONCE_BYTES = 12
_HINT_CHARS = 6


class SealedSecret(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as stored: the key id that sealed it, nonce + ciphertext (base64), and the
    first characters of the plaintext so a person can tell two secrets apart."""

    kid: str
    sealed: str
    hint: str
    id: str = ""  # how the API names it (to delete it after a rotation)


class SealingError(Exception):
    """A value cannot be sealed or opened: no key, an unknown key id, or a tampered value."""


class Sealer:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        for kid, key in keys:
            if len(key) != 32:
                raise ValueError(f"CONVEYOR_SECRET_KEYS: key {kid!r} must be 32 bytes (base64 of 32 bytes)")
        self._keys = {kid: AESGCM(key) for kid, key in keys}
        self._active = keys[0][0] if keys else None

    @classmethod
    def parse(cls, value: Secret | str | None) -> Sealer:
        """From the setting's text: ``kid:base64key[,kid:base64key...]``; empty means no key."""
        text = value.reveal() if isinstance(value, Secret) else (value or "")
        keys: list[tuple[str, bytes]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            kid, sep, b64 = part.partition(":")
            if not sep or not kid or not kid.isalnum():
                raise ValueError("CONVEYOR_SECRET_KEYS: each entry must be <alphanumeric id>:<base64 key>")
            try:
                key = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"CONVEYOR_SECRET_KEYS: key {kid!r} is not valid base64") from None
            keys.append((kid, key))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return self._active is not None

    @property
    def active_kid(self) -> str | None:
        return self._active

    def seal(self, plaintext: str, context: str) -> SealedSecret:
        if self._active is None:
            raise SealingError("no CONVEYOR_SECRET_KEYS is set: secrets cannot be stored")
        nonce = os.urandom(_NONCE_BYTES)
        box = self._keys[self._active].encrypt(nonce, plaintext.encode(), context.encode())
        return SealedSecret(
            kid=self._active,
            sealed=base64.b64encode(nonce + box).decode(),
            hint=plaintext[:_HINT_CHARS] + "…",
        )

    def open(self, value: SealedSecret, context: str) -> str:
        aead = self._keys.get(value.kid)
        if aead is None:
            raise SealingError(f"sealed with key {value.kid!r}, which CONVEYOR_SECRET_KEYS no longer holds")
        try:
            raw = base64.b64decode(value.sealed)
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SealingError("a sealed secret does not open (tampered, or moved from its record)") from None

    def reseal(self, value: SealedSecret, context: str) -> SealedSecret:
        """The same secret under the active key (a no-op when it already is)."""
        if value.kid == self._active:
            return value
        return self.seal(self.open(value, context), context)


def new_key_setting(kid: str = "k1") -> str:
    """A fresh ``CONVEYOR_SECRET_KEYS`` value (for `make run` and tests)."""
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"
