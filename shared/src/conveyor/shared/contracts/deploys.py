"""Sites and deployments: the site-configuration schema, deploy messages and records.

A user describes a website, an agent produces a :class:`SiteConfig` (JSON), the receiver keeps
it as the site's draft in KV ``sites`` and, on publish, writes a :class:`DeploymentRecord`
(KV ``deployments``) and a :class:`DeployRequest` on ``deploys.requested.<site>``. The deployer
runs the pipeline, writes every transition to the record and announces it as a
:class:`DeploymentStatusEvent` on ``deploys.status.<site>``.

The site id is the slug: DNS-safe, unique, and usable as a subject token, a KV key and a host
label. Slugs never contain ``--`` because previews are served at ``{deployment}--{slug}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from conveyor.shared.contracts.events import DEFAULT_PROJECT, NOT_JSON, Message

# --- Field types --------------------------------------------------------------------------------

# Each pattern ends "$(?!\n)": Python's "$" also matches before a trailing newline, and "\Z"
# would not read the same in the OpenAPI document (ECMA-262 patterns).
SLUG_RE: Final = r"^(?!.*--)[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$(?!\n)"
# Links end up in href attributes: only web, mail, phone and same-page targets, never script.
URL_RE: Final = (
    r"^(?:https?://[^\s\"'<>]+|mailto:[^\s\"'<>]+|tel:\+?[0-9 ()-]+|/[^\s\"'<>]*|#[A-Za-z0-9_-]*)$(?!\n)"
)
HTTP_URL_RE: Final = r"^https?://[^\s\"'<>]+$(?!\n)"
EMAIL_RE: Final = r"^[^@\s\"'<>]+@[^@\s\"'<>]+\.[^@\s\"'<>]+$(?!\n)"
COLOR_RE: Final = r"^#[0-9a-fA-F]{6}$(?!\n)"
DEPLOYMENT_ID_RE: Final = r"^d[0-9a-f]{16}$(?!\n)"

Slug = Annotated[str, Meta(pattern=SLUG_RE, min_length=1, max_length=40, description="DNS-safe, no '--'")]
Url = Annotated[str, Meta(pattern=URL_RE, max_length=2000)]
HttpUrl = Annotated[str, Meta(pattern=HTTP_URL_RE, max_length=2000)]
Email = Annotated[str, Meta(pattern=EMAIL_RE, max_length=254)]
Color = Annotated[str, Meta(pattern=COLOR_RE)]


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the site-config parts: a typo in a field name is an error that names it."""


# --- The site configuration -----------------------------------------------------------------------

ThemePreset = Literal["light", "dark", "ocean", "sunset", "forest"]
FontStack = Literal["sans", "serif", "mono"]


class Theme(Config, frozen=True, kw_only=True):
    preset: ThemePreset = "light"
    primary_color: Color = "#2563eb"
    font: FontStack = "sans"


class Hero(Config, frozen=True, kw_only=True):
    headline: Annotated[str, Meta(min_length=1, max_length=120)]
    subheadline: Annotated[str, Meta(max_length=300)] = ""
    cta_text: Annotated[str, Meta(max_length=40)] = ""
    cta_url: Url | None = None
    image_url: Url | None = None
    image_alt: Annotated[str, Meta(max_length=200)] = ""

    def __post_init__(self) -> None:
        if self.image_url and not self.image_alt.strip():
            raise ValueError("image_alt is required when image_url is set (screen readers read it)")
        if self.cta_text and not self.cta_url:
            raise ValueError("cta_url is required when cta_text is set")


class Feature(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)]
    description: Annotated[str, Meta(max_length=400)] = ""
    icon: Annotated[str, Meta(max_length=8)] = ""


class Features(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)] = "Features"
    subtitle: Annotated[str, Meta(max_length=300)] = ""
    items: Annotated[list[Feature], Meta(min_length=1, max_length=12)]


class About(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)] = "About"
    body: Annotated[str, Meta(min_length=1, max_length=5000)]
    image_url: Url | None = None
    image_alt: Annotated[str, Meta(max_length=200)] = ""

    def __post_init__(self) -> None:
        if self.image_url and not self.image_alt.strip():
            raise ValueError("image_alt is required when image_url is set (screen readers read it)")


class Testimonial(Config, frozen=True, kw_only=True):
    quote: Annotated[str, Meta(min_length=1, max_length=600)]
    author: Annotated[str, Meta(min_length=1, max_length=80)]
    role: Annotated[str, Meta(max_length=80)] = ""


class Testimonials(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)] = "What people say"
    items: Annotated[list[Testimonial], Meta(min_length=1, max_length=12)]


class Plan(Config, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=60)]
    price: Annotated[str, Meta(min_length=1, max_length=30)]
    period: Annotated[str, Meta(max_length=20)] = ""
    features: Annotated[list[Annotated[str, Meta(min_length=1, max_length=120)]], Meta(max_length=20)] = []
    cta_text: Annotated[str, Meta(max_length=40)] = ""
    cta_url: Url | None = None
    highlighted: bool = False


class Pricing(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)] = "Pricing"
    subtitle: Annotated[str, Meta(max_length=300)] = ""
    plans: Annotated[list[Plan], Meta(min_length=1, max_length=6)]


class Contact(Config, frozen=True, kw_only=True):
    title: Annotated[str, Meta(min_length=1, max_length=80)] = "Contact"
    text: Annotated[str, Meta(max_length=600)] = ""
    email: Email | None = None
    phone: Annotated[str, Meta(pattern=r"^\+?[0-9 ()-]{3,40}$(?!\n)")] | None = None
    address: Annotated[str, Meta(max_length=300)] = ""

    def __post_init__(self) -> None:
        if not (self.email or self.phone or self.address.strip()):
            raise ValueError("contact needs at least one of email, phone or address")


class Link(Config, frozen=True, kw_only=True):
    label: Annotated[str, Meta(min_length=1, max_length=60)]
    url: Url


class Footer(Config, frozen=True, kw_only=True):
    text: Annotated[str, Meta(max_length=300)] = ""
    links: Annotated[list[Link], Meta(max_length=12)] = []


class Sections(Config, frozen=True, kw_only=True):
    """The seven sections, rendered in this order; only the hero is required."""

    hero: Hero
    features: Features | None = None
    about: About | None = None
    testimonials: Testimonials | None = None
    pricing: Pricing | None = None
    contact: Contact | None = None
    footer: Footer | None = None


class SiteConfig(Config, frozen=True, kw_only=True):
    """What an agent produces and a user publishes (site-config.json)."""

    # No control characters: the name titles pages and the git commits that publish them (git
    # refuses a NUL in a commit message, which once failed the deployment after a 202).
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$(?!\n)")]
    slug: Slug
    description: Annotated[str, Meta(max_length=300)] = ""
    language: Annotated[str, Meta(pattern=r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$(?!\n)")] = "en"
    theme: Theme = Theme()
    sections: Sections


class ConfigInvalid(ValueError):
    """A site configuration failed validation; ``field`` is a dotted path such as
    ``sections.hero.headline`` or ``sections.features.items[1].title`` (empty for the root)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field or 'config'}: {message}")
        self.field = field
        self.message = message


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def _field_of(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    m = _AT.match(str(exc))
    assert m is not None
    msg, path = m.group("msg"), (m.group("path") or "").lstrip(".")
    # A missing or unknown field is reported at its parent: name the field itself.
    for rx in (_MISSING, _UNKNOWN):
        if fm := rx.search(msg):
            path = f"{path}.{fm.group(1)}" if path else fm.group(1)
    full = ".".join(p for p in (prefix, path) if p)
    return full, msg


_PATTERN_TEXT: Final = {
    SLUG_RE: "must be 1-40 lowercase letters, digits or single hyphens, not starting or ending with '-'",
    URL_RE: "must be an http(s), mailto: or tel: link, or a path or #anchor on the site",
    HTTP_URL_RE: "must be an http:// or https:// URL",
    EMAIL_RE: "must be an email address",
    COLOR_RE: "must be a colour like #1a2b3c",
}


def field_error(exc: msgspec.ValidationError, prefix: str = "") -> ConfigInvalid:
    """Turn msgspec's "... - at `$.a.b[0]`" into a :class:`ConfigInvalid` naming ``a.b[0]``."""
    field, msg = _field_of(exc, prefix)
    for pattern, text in _PATTERN_TEXT.items():
        if f"matching regex {pattern!r}" in msg:
            msg = text
    return ConfigInvalid(field, msg)


def parse_site_config(data: bytes | str) -> SiteConfig:
    """Decode and validate JSON; raises :class:`ConfigInvalid` naming the bad field."""
    try:
        return msgspec.json.decode(data, type=SiteConfig)
    except msgspec.ValidationError as exc:
        raise field_error(exc) from None
    except NOT_JSON as exc:
        raise ConfigInvalid("", f"not valid JSON: {exc}") from None


def config_hash(config: SiteConfig) -> str:
    """A stable hash of a configuration: the same config always gives the same hash."""
    return hashlib.sha256(msgspec.json.encode(config, order="sorted")).hexdigest()


# --- Deployments ----------------------------------------------------------------------------------

DeploymentKind = Literal["publish", "preview", "rollback"]
DeploymentStatus = Literal[
    "pending",
    "creating_repo",
    "committing_config",
    "creating_service",
    "building",
    "deploying",
    "success",
    "failed",
    "cancelled",
    "superseded",
]
StepName = Literal["creating_repo", "committing_config", "creating_service", "building", "deploying"]
STEPS: Final[tuple[StepName, ...]] = (
    "creating_repo",
    "committing_config",
    "creating_service",
    "building",
    "deploying",
)
TERMINAL_DEPLOYMENT_STATUSES: Final = frozenset({"success", "failed", "cancelled", "superseded"})
LIVE_KINDS: Final = frozenset({"publish", "rollback"})  # kinds that change what is live


def new_deployment_id() -> str:
    """``d`` + 16 hex digits: a subject token, a KV key and a DNS label part at once."""
    return "d" + uuid.uuid4().hex[:16]


def is_deployment_id(value: str) -> bool:
    return re.match(DEPLOYMENT_ID_RE, value) is not None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One pipeline step of one deployment: when it ran and the external ids it produced."""

    name: StepName
    status: Literal["running", "done", "skipped", "failed"]
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    attempts: int = 1
    outputs: dict[str, str] = {}
    error: str | None = None


class DeploymentRecord(Message, frozen=True, kw_only=True):
    """KV ``deployments`` under the deployment id. The receiver creates it ("pending"); the
    deployer alone moves it on (compare-and-set), except ``cancel_requested``."""

    deployment_id: str
    site_id: str
    kind: DeploymentKind
    status: DeploymentStatus
    config: SiteConfig
    config_hash: str
    created_at: dt.datetime
    updated_at: dt.datetime
    rollback_of: str | None = None  # the deployment whose artifact a rollback reuses
    steps: list[StepRecord] = []
    # External ids by name: repo, commit_sha, run_id, image, service_version, release, artifact...
    external: dict[str, str] = {}
    url: str | None = None
    error: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    superseded_by: str | None = None
    callback_url: str | None = None
    project_id: str | None = None
    source: str = "api"
    correlation_id: str | None = None
    project: str = DEFAULT_PROJECT  # the site's project: a deployment never moves

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_DEPLOYMENT_STATUSES

    def step(self, name: str) -> StepRecord | None:
        for s in self.steps:
            if s.name == name:
                return s
        return None


class SiteRecord(Message, frozen=True, kw_only=True):
    """KV ``sites`` under the site id (= slug). The receiver owns the draft and the request
    pointers; the deployer sets what is live."""

    site_id: str
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime
    draft: SiteConfig | None = None
    draft_hash: str | None = None
    callback_url: str | None = None
    project_id: str | None = None
    source: str = "api"
    owner: str | None = None
    project: str = DEFAULT_PROJECT  # set when the site is made; saving over it never moves it
    latest_request: str | None = None  # newest publish or rollback: it supersedes queued older ones
    latest_preview: str | None = None
    live_deployment_id: str | None = None
    live_url: str | None = None
    deployments: list[str] = []  # newest first, bounded


class DeployRequest(Message, frozen=True, kw_only=True):
    """On ``deploys.requested.<site>``; Nats-Msg-Id = ``deploy-<deployment id>``. The details
    live in the deployment record, which is written before this is published."""

    deployment_id: str
    site_id: str
    kind: DeploymentKind
    requested_at: dt.datetime
    correlation_id: str | None = None


class DeploymentStatusEvent(Message, frozen=True, kw_only=True):
    """On ``deploys.status.<site>`` at every transition of a deployment."""

    deployment_id: str
    site_id: str
    kind: DeploymentKind
    status: DeploymentStatus
    at: dt.datetime
    step: str | None = None
    url: str | None = None
    error: str | None = None


class DeployLease(Message, frozen=True, kw_only=True):
    """KV ``deploy_leases`` under the site id: which deployment may run for the site now.
    One active deployment per site, across every deployer replica."""

    site_id: str
    deployment_id: str
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime


site_config_decoder = msgspec.json.Decoder(SiteConfig)
deployment_decoder = msgspec.json.Decoder(DeploymentRecord)
site_decoder = msgspec.json.Decoder(SiteRecord)
deploy_request_decoder = msgspec.json.Decoder(DeployRequest)
deployment_status_decoder = msgspec.json.Decoder(DeploymentStatusEvent)
deploy_lease_decoder = msgspec.json.Decoder(DeployLease)
