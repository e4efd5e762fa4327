"""Webhook signatures: Lovable-style HMAC, GitHub, and Standard Webhooks (sign and verify).

Every comparison is constant-time. Verification raises :class:`SignatureError` with a
reason a caller can show (never the expected signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

DEFAULT_TOLERANCE_S = 300
# The least key material a secret may have: an HMAC key any shorter can be searched for, and
# an empty one (an empty or undecodable secret) lets anyone sign.
MIN_SECRET_BYTES = 16


class SignatureError(Exception):
    """The request is not authentic. ``reason`` is safe to return to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _hmac_hex(secret: bytes, data: bytes) -> str:
    # The one-shot form: OpenSSL's HMAC in one call, without hmac.HMAC's Python-level objects.
    return hmac.digest(secret, data, "sha256").hex()


def _hex_signature(value: str) -> bool:
    # ASCII too: compare_digest refuses to compare a str with other characters (a TypeError).
    return value.startswith("sha256=") and len(value) == 7 + 64 and value.isascii()


def check_timestamp(raw: str | None, *, tolerance_s: int, now: float | None = None) -> int:
    """Parse a unix-seconds timestamp and require it within ``tolerance_s`` of now, both ways."""
    if raw is None or raw == "":
        raise SignatureError("missing timestamp header")
    try:
        ts = int(raw.strip())
    except ValueError:
        raise SignatureError("timestamp is not unix seconds") from None
    now = time.time() if now is None else now
    if ts < now - tolerance_s:
        raise SignatureError(f"timestamp too old (more than {tolerance_s}s)")
    if ts > now + tolerance_s:
        raise SignatureError(f"timestamp in the future (more than {tolerance_s}s)")
    return ts


# --- Lovable: X-Lovable-Signature: sha256=hex(HMAC(secret, "{timestamp}.{body}")) -------------


def lovable_sign(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + _hmac_hex(secret.encode(), str(timestamp).encode() + b"." + body)


def lovable_verify(
    secrets: Iterable[str],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    if not signature:
        raise SignatureError("missing X-Lovable-Signature header")
    if not _hex_signature(signature):
        raise SignatureError("malformed X-Lovable-Signature (want sha256=<64 hex>)")
    ts = check_timestamp(timestamp, tolerance_s=tolerance_s, now=now)
    given = signature[7:].lower()
    signed = str(ts).encode() + b"." + body
    if not any(hmac.compare_digest(_hmac_hex(s.encode(), signed), given) for s in secrets):
        raise SignatureError("signature does not match")


# --- GitHub: X-Hub-Signature-256: sha256=hex(HMAC(secret, body)) -----------------------------


def github_sign(secret: str, body: bytes) -> str:
    return "sha256=" + _hmac_hex(secret.encode(), body)


def github_verify(secrets: Iterable[str], body: bytes, signature: str | None) -> None:
    if not signature:
        raise SignatureError("missing X-Hub-Signature-256 header")
    if not _hex_signature(signature):
        raise SignatureError("malformed X-Hub-Signature-256 (want sha256=<64 hex>)")
    given = signature[7:].lower()
    if not any(hmac.compare_digest(_hmac_hex(s.encode(), body), given) for s in secrets):
        raise SignatureError("signature does not match")


# --- Standard Webhooks: v1,base64(HMAC(key, "{id}.{timestamp}.{body}")) ----------------------


def standard_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (a bare secret is used as raw bytes).
    ValueError when the base64 does not decode: a lenient decode drops what it cannot read,
    and "whsec_!!!!" would be the empty key."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("not whsec_<base64>: the base64 does not decode") from None
    return secret.encode()


def secret_problem(secret: str, *, standard: bool) -> str | None:
    """What makes ``secret`` unfit to sign or verify with, or None. ``standard``: it is read as
    a Standard Webhooks secret (``whsec_<base64>``, else raw bytes); otherwise (lovable,
    github) its UTF-8 bytes are the key. Never says anything of the secret's value."""
    if not secret.strip():
        return "is empty"
    try:
        key = standard_key(secret) if standard else secret.encode()
    except ValueError as exc:
        return f"is {exc}"
    if len(key) < MIN_SECRET_BYTES:
        return f"has {len(key)} bytes of key material; at least {MIN_SECRET_BYTES} are needed"
    return None


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(
    secrets: Iterable[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Headers for an outgoing webhook; several secrets (a rotation) give several signatures."""
    ts = int(time.time()) if timestamp is None else timestamp
    sigs = " ".join(standard_signature(s, msg_id, ts, body) for s in secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sigs}


def standard_verify(
    secrets: Iterable[str],
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Verify and return the webhook-id."""
    msg_id = headers.get("webhook-id")
    sig_header = headers.get("webhook-signature")
    if not msg_id:
        raise SignatureError("missing webhook-id header")
    if not sig_header:
        raise SignatureError("missing webhook-signature header")
    ts = check_timestamp(headers.get("webhook-timestamp"), tolerance_s=tolerance_s, now=now)
    given = []
    for part in sig_header.split():
        version, _, sig = part.partition(",")
        if version == "v1" and sig and sig.isascii():
            given.append(sig)
    if not given:
        raise SignatureError("malformed webhook-signature (want 'v1,<base64>' entries)")
    for secret in secrets:
        try:
            expected = standard_signature(secret, msg_id, ts, body)[3:]
        except (ValueError, TypeError):
            continue
        if any(hmac.compare_digest(expected, g) for g in given):
            return msg_id
    raise SignatureError("signature does not match")
