"""Settings from environment variables and an optional TOML file, decoded into frozen Structs.

A service declares one ``Settings`` Struct (subclass of :class:`BaseSettings`). Field
``nats_url`` is read from env ``NATS_URL`` (``rename="upper"``). Precedence, lowest first:
field defaults, the TOML file named by ``CONVEYOR_CONFIG`` (top-level keys, then the
``[<service>]`` table), environment variables. Only declared names are read. Scalars are
coerced ("3100" -> 3100); structured fields (lists of agents, sources) take JSON from env.
A missing or malformed value raises :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from conveyor.shared.contracts.errors import ConfigError

CONFIG_ENV = "CONVEYOR_CONFIG"


class Secret:
    """A string that never shows up in repr(), logs or tracebacks; ``reveal()`` at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class BaseSettings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """Settings every service has."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS_URL: one or more comma-separated server URLs."""
    host: str = "127.0.0.1"
    """HOST: address the HTTP server binds (0.0.0.0 in containers)."""
    port: int = 8080
    """PORT: HTTP port for the API (receiver) or health and metrics (others)."""
    log_level: str = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    log_format: str = "json"
    """LOG_FORMAT: json (one object a line) or text."""
    shutdown_grace_s: float = 20.0
    """SHUTDOWN_GRACE_S: how long in-flight work may finish after SIGTERM before the rest is NAKed."""
    nats_replicas: int = 1
    """NATS_REPLICAS: replicas for streams and buckets this service creates (3 in a cluster)."""
    events_retention_h: float = 24.0
    """EVENTS_RETENTION_H: hours raw webhook payloads are kept in EVENTS (same on every service)."""
    results_retention_d: float = 7.0
    """RESULTS_RETENTION_D: days results are kept in RESULTS (same on every service)."""
    job_logs_retention_d: float = 30.0
    """JOB_LOGS_RETENTION_D: days per-run logs are kept in KV job_logs (same on every service)."""
    service_instance: str = ""
    """SERVICE_INSTANCE: a name for this replica in logs and metrics (defaults to host:pid)."""
    conveyor_secret_keys: Secret | None = None
    """CONVEYOR_SECRET_KEYS: keys that seal project secrets at rest, ``<id>:<base64 of 32 bytes>``,
    comma-separated; the first seals, all open (rotation). Without it, projects cannot be given
    secrets (the default project's come from the settings)."""


S = TypeVar("S", bound=BaseSettings)

_PATH = re.compile(r"`\$\.([A-Za-z0-9_]+)")
_MISSING = re.compile(r"missing required field `([A-Za-z0-9_]+)`")


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError(f"cannot build {type_!r}")


def _is_scalar(annotation: Any) -> bool:
    text = repr(annotation)
    return not any(t in text for t in ("list", "dict", "Struct", "tuple")) or "Secret" in text


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{CONFIG_ENV}: cannot read {path}: {exc.strerror}", setting=CONFIG_ENV) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_ENV}: {path} is not valid TOML: {exc}", setting=CONFIG_ENV) from exc


def load_settings(
    cls: type[S],
    environ: Mapping[str, str] | None = None,
    *,
    section: str | None = None,
) -> S:
    """Build ``cls`` from defaults, the TOML file, then the environment; fail fast and clearly."""
    env = os.environ if environ is None else environ
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    raw: dict[str, Any] = {}

    path = env.get(CONFIG_ENV)
    if path:
        data = load_toml(path)
        tables = [data] + ([data[section]] if section and isinstance(data.get(section), dict) else [])
        for table in tables:
            for key, value in table.items():
                name = key.upper()
                if name in fields and not (isinstance(value, dict) and table is data and key == section):
                    raw[name] = value

    for name, field in fields.items():
        if name not in env:
            continue
        value = env[name]
        if _is_scalar(field.type):
            raw[name] = value
        else:
            try:
                raw[name] = msgspec.json.decode(value)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"invalid setting {name}: not valid JSON ({exc})", setting=name) from exc

    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _PATH.search(text) or _MISSING.search(text)
        name = m.group(1) if m else None
        where = f" {name}" if name else ""
        raise ConfigError(f"invalid setting{where}: {text}", setting=name) from exc
