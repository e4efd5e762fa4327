"""The bus's fast paths, installed on purpose when it connects, for the nats-py they were written for.

Three parts of nats-py are replaced or bypassed for speed (see each module's docstring):
the parser and header reader (reader.py), the publish path (wire.py), and KV gets and
writes sent as plain requests (kvbucket.py). They use nats-py internals, so they are made
for one minor version of nats-py (``SUPPORTED``, pinned in shared/pyproject.toml). With
another version installed, or ``CONVEYOR_FAST_PATHS=0`` in the environment, the bus uses
stock nats-py everywhere: the same messages on the wire, slower. An unexpected version is
one warning line in the log.

Nothing happens on import: :func:`install` runs when the bus connects (``bus.connect``),
before the client is made, and its answer stays for the life of the process.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

from conveyor.shared.bus import reader

log = logging.getLogger(__name__)

SUPPORTED = "2.16"  # the nats-py minor version the fast paths are written against
ENV = "CONVEYOR_FAST_PATHS"

_on = False
_decided = False
_warned = False  # the unexpected version is said once per process


def wanted() -> bool:
    """Whether the environment asks for the fast paths (anything but 0/false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def version_supported(version: str) -> bool:
    parts = version.split(".")
    return ".".join(parts[:2]) == SUPPORTED


def install(enabled: bool | None = None) -> bool:
    """Install the fast paths if wanted (``enabled``, else the environment) and the installed
    nats-py is the supported minor version; otherwise use stock nats-py. Returns whether they
    are on. Idempotent; a later call with another answer switches (tests do)."""
    global _on, _decided, _warned
    want = wanted() if enabled is None else enabled
    if not want and (not _decided or _on):
        log.info("bus fast paths off (%s=0): stock nats-py", ENV)
    if want:
        version = importlib.metadata.version("nats-py")
        if not version_supported(version):
            if not _warned:
                log.warning(
                    "nats-py %s is not %s.x, which the bus's fast paths are written for: using stock nats-py",
                    version,
                    SUPPORTED,
                )
                _warned = True
            want = False
    if want:
        reader.install()
    else:
        reader.uninstall()
    _on, _decided = want, True
    return want


def on() -> bool:
    """Whether the fast paths are in use (False until :func:`install` turned them on)."""
    return _on
