"""Webhook sources and their schemes: who may send, how a request proves it, what it carries.

Each scheme turns (headers, raw body) into an :class:`Inbound` or raises :class:`HTTPError`
with the status the product fixes: 401 for missing, malformed or wrong signatures and for
stale or future timestamps; 400 for an empty body or invalid JSON; 422 for a well-formed body
of the wrong shape, an unknown event type or a prompt over MAX_PROMPT_CHARS.

Only what the signature covers steers a request: the delivery id that deduplicates it and
the project its rate limit is counted for come from the signed body (or, for Standard
Webhooks, the signed ``webhook-id``), never from a header a replayer could change.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from conveyor.receiver.config import (
    GITHUB_EVENT_TYPES,
    LOVABLE_EVENT_TYPES,
    Settings,
    WebhookSource,
    split_secrets,
)
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import NOT_JSON
from conveyor.shared.domain import signing
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.http import HTTPError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DELIVERY_ID = re.compile(r"^[\x21-\x7e]{1,200}\Z")


# The fields of an event the executor's router makes a job's prompt of (router.prompt_of): in
# ``data``, then at the top level. Each is held to MAX_PROMPT_CHARS, as POST /api/jobs's prompt is.
PROMPT_FIELDS = ("prompt", "task", "instructions")


class _Prompts(msgspec.Struct, frozen=True, kw_only=True):
    """A body's top-level prompt fields (only strings become prompts; anything else is left)."""

    prompt: Any = None
    task: Any = None
    instructions: Any = None


class LovableWebhook(_Prompts, frozen=True, kw_only=True):
    """The Lovable body: {id, type, project_id, data, created_at}."""

    id: str
    type: str
    project_id: str
    data: dict[str, Any]
    created_at: str


class StandardWebhook(_Prompts, frozen=True, kw_only=True):
    """A Standard Webhooks payload: {type, timestamp, data}; only ``type`` is required here."""

    type: str
    timestamp: str | None = None
    data: Any = None


class GithubWebhook(_Prompts, frozen=True, kw_only=True):
    """GitHub bodies vary by event; they are all JSON objects."""

    action: str | None = None
    data: Any = None  # GitHub sends none; a body that has one could carry a prompt in it


class _LovableProject(msgspec.Struct):
    project_id: str | None = None


class _GithubRepository(msgspec.Struct):
    full_name: str | None = None


class _GithubInstallation(msgspec.Struct):
    id: int | None = None


class _GithubProject(msgspec.Struct):
    repository: _GithubRepository | None = None
    installation: _GithubInstallation | None = None


_lovable_project = msgspec.json.Decoder(_LovableProject)
_github_project = msgspec.json.Decoder(_GithubProject)
_lovable_decoder = msgspec.json.Decoder(LovableWebhook)
_standard_decoder = msgspec.json.Decoder(StandardWebhook)
_github_decoder = msgspec.json.Decoder(GithubWebhook)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A verified webhook, ready to publish."""

    delivery_id: str  # what the sender calls this delivery (shown, not trusted)
    dedupe_key: str  # signed: what names the delivery for duplicates and its job id
    event_type: str
    project_id: str | None  # signed (lovable's body): the rate limit's key
    ignored: bool = False  # an event type the source accepts but does not route (github)


@dataclass(frozen=True)
class Source:
    name: str
    scheme: str
    secrets: tuple[str, ...]
    event_types: frozenset[str]  # empty: any well-formed type
    ignore_unknown: bool
    networks: tuple[Network, ...]
    tolerance_s: int
    callback_url: str | None
    max_prompt_chars: int = 5000

    def allows(self, address: str | None) -> bool:
        if not self.networks:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
        secrets: tuple[str, ...] | None = None,
    ) -> Inbound:
        """Authenticate then parse; signature problems come before body problems. ``secrets``:
        the project's, when the webhook names one that has its own (else the source's)."""
        now = time.time() if now is None else now
        keys = self.secrets if secrets is None else secrets
        if not keys:
            raise unauthorized("no secret is configured to verify this webhook")
        if self.scheme == "lovable":
            return self._lovable(headers, body, now, keys)
        if self.scheme == "github":
            return self._github(headers, body, keys)
        return self._standard(headers, body, now, keys)

    def external_ids(self, body: bytes) -> tuple[str, ...]:
        """What in the body names the sender's project, as project external ids, read before the
        signature is checked (it only picks the secrets to check it with: a body that verifies
        with a project's secret is that project's). Empty: the body names none."""
        try:
            if self.scheme == "lovable":
                lovable = _lovable_project.decode(body).project_id
                return (f"{self.name}:{lovable}",) if lovable else ()
            if self.scheme == "github":
                gh = _github_project.decode(body)
                found = []
                if gh.repository is not None and gh.repository.full_name:
                    found.append(f"{self.name}:{gh.repository.full_name}")
                if gh.installation is not None and gh.installation.id is not None:
                    found.append(f"{self.name}-installation:{gh.installation.id}")
                return tuple(found)
        except NOT_JSON:
            pass
        return ()

    # --- schemes ------------------------------------------------------------------------------

    def _lovable(self, headers: Mapping[str, str], body: bytes, now: float, keys: tuple[str, ...]) -> Inbound:
        try:
            signing.lovable_verify(
                keys,
                body,
                headers.get("X-Lovable-Timestamp"),
                headers.get("X-Lovable-Signature"),
                tolerance_s=self.tolerance_s,
                now=now,
            )
        except signing.SignatureError as exc:
            raise unauthorized(exc.reason) from None
        parsed = decode_json(_lovable_decoder, body)
        event_type = self._event_type(parsed.type)
        # The body's id, not X-Lovable-Delivery: a captured webhook re-sent inside its window
        # under a new header would otherwise be a new job each time.
        delivery = _delivery_id(parsed.id, "id")
        self._check_prompts(parsed, parsed.data)
        return Inbound(delivery, delivery, event_type, parsed.project_id)

    def _github(self, headers: Mapping[str, str], body: bytes, keys: tuple[str, ...]) -> Inbound:
        try:
            signing.github_verify(keys, body, headers.get("X-Hub-Signature-256"))
        except signing.SignatureError as exc:
            raise unauthorized(exc.reason) from None
        event = headers.get("X-GitHub-Event")
        if not event:
            raise HTTPError(400, "missing_header", "missing X-GitHub-Event header", field="X-GitHub-Event")
        delivery = _delivery_id(headers.get("X-GitHub-Delivery"), "X-GitHub-Delivery")
        parsed = decode_json(_github_decoder, body)
        # X-GitHub-Delivery is not signed and the body has no timestamp: the same signed body
        # under another delivery id is the same delivery.
        dedupe = hashlib.sha256(body).hexdigest()
        if (self.event_types and event not in self.event_types) or not subjects.is_token(event):
            if self.ignore_unknown:
                return Inbound(delivery, dedupe, event, None, ignored=True)
            raise _unknown_type(event)
        self._check_prompts(parsed, parsed.data)
        return Inbound(delivery, dedupe, event, None)

    def _standard(
        self, headers: Mapping[str, str], body: bytes, now: float, keys: tuple[str, ...]
    ) -> Inbound:
        try:
            msg_id = signing.standard_verify(keys, body, headers, tolerance_s=self.tolerance_s, now=now)
        except signing.SignatureError as exc:
            raise unauthorized(exc.reason) from None
        parsed = decode_json(_standard_decoder, body)
        event_type = self._event_type(parsed.type)
        delivery = _delivery_id(msg_id, "webhook-id")  # signed with the body
        self._check_prompts(parsed, parsed.data)
        return Inbound(delivery, delivery, event_type, None)

    def _check_prompts(self, top: _Prompts, data: Any) -> None:
        """422 naming the first field the executor would take as a prompt that is too long."""
        limit = self.max_prompt_chars
        inner = data if isinstance(data, dict) else {}
        for name in PROMPT_FIELDS:
            for field, value in ((f"data.{name}", inner.get(name)), (name, getattr(top, name))):
                if isinstance(value, str) and len(value) > limit:
                    raise HTTPError(
                        422, "invalid_field", f"{field}: longer than {limit} characters", field=field
                    )

    def _event_type(self, event_type: str) -> str:
        known = event_type in self.event_types if self.event_types else _well_formed(event_type)
        if not known:
            raise _unknown_type(event_type)
        return event_type


def _well_formed(event_type: str) -> bool:
    return all(subjects.is_token(part) for part in event_type.split(".")) and len(event_type) <= 200


def unauthorized(reason: str) -> HTTPError:
    return HTTPError(401, "invalid_signature", reason, headers={"WWW-Authenticate": "Signature"})


def _unknown_type(event_type: str) -> HTTPError:
    return HTTPError(422, "unknown_event_type", f"unknown event type {event_type[:100]!r}", field="type")


def _delivery_id(value: str | None, name: str) -> str:
    if not value:
        raise HTTPError(400, "missing_delivery_id", f"missing delivery id ({name})", field=name)
    if not _DELIVERY_ID.match(value):
        raise HTTPError(400, "invalid_delivery_id", f"{name} must be 1-200 printable characters", field=name)
    return value


def decode_json(
    decoder: msgspec.json.Decoder[Any],
    body: bytes,
    invalid: Callable[[msgspec.ValidationError], HTTPError] | None = None,
) -> Any:
    """``body`` decoded, or the 4xx that says what is wrong with it (``invalid`` names the
    field for a body of the wrong shape)."""
    if not body.isascii():
        # JSON is UTF-8; msgspec checks only the strings it keeps, and would let invalid bytes
        # in skipped fields through to the executor.
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise HTTPError(
                400, "invalid_json", f"body is not UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise (invalid or invalid_field)(exc) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "invalid_json", "body is nested too deeply") from None


_AT = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def invalid_field(exc: msgspec.ValidationError) -> HTTPError:
    """A 422 naming the field msgspec complained about (``$.input.x`` -> ``input.x``)."""
    text = str(exc)
    field = None
    if m := _MISSING.search(text):
        prefix = _AT.search(text)
        field = ".".join(p for p in ((prefix.group(1) if prefix else ""), m.group(1)) if p)
    elif m := _AT.search(text):
        field = m.group(1) or None
    if field is None and text.startswith("Expected `object`"):
        return HTTPError(422, "invalid_body", f"body must be a JSON object: {text}")
    return HTTPError(422, "invalid_field", f"{field or 'body'}: {text}", field=field or "body")


def build_sources(settings: Settings) -> dict[str, Source]:
    """Configured sources, plus lovable/github from their single-secret settings."""
    configs: dict[str, WebhookSource] = {s.name: s for s in settings.webhook_sources}
    shortcuts = (("lovable", settings.lovable_webhook_secret), ("github", settings.github_webhook_secret))
    for name, secret in shortcuts:
        # Always there: projects may bring secrets of their own where the deployment has none.
        if name not in configs:
            cfg = {"name": name, "scheme": name, "secrets": split_secrets(secret) if secret else []}
            configs[name] = msgspec.convert(cfg, WebhookSource, dec_hook=_secret)
    return {name: _source(cfg, settings.max_prompt_chars) for name, cfg in configs.items()}


def _secret(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def _source(cfg: WebhookSource, max_prompt_chars: int) -> Source:
    default_types = {"lovable": LOVABLE_EVENT_TYPES, "github": GITHUB_EVENT_TYPES, "standard": []}
    types = cfg.event_types or default_types[cfg.scheme]
    ignore = cfg.unknown_events == "ignore" if cfg.unknown_events else cfg.scheme == "github"
    return Source(
        name=cfg.name,
        scheme=cfg.scheme,
        secrets=tuple(s.reveal() for s in cfg.secrets),
        event_types=frozenset(types),
        ignore_unknown=ignore,
        networks=tuple(ipaddress.ip_network(n, strict=False) for n in cfg.allow_ips),
        tolerance_s=cfg.tolerance_s,
        callback_url=cfg.callback_url,
        max_prompt_chars=max_prompt_chars,
    )


def parse_networks(text: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip())


def peer_host(transport: asyncio.BaseTransport | None) -> str | None:
    """The connected peer's address (no port), as both HTTP paths read it."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, tuple) and peer else None
