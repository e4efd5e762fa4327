"""Headless Chromium for tests (Debian's package; scripts/system-deps.sh installs it).

The flags keep it from reaching out: this machine's network is closed, and without them
Chromium's background connections are refused many at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_command(profile: Path, *args: str) -> list[str]:
    """The command line: the binary, the flags, a fresh profile directory, then ``args``."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is missing: scripts/system-deps.sh installs Debian's chromium package"
    return [binary, *FLAGS, f"--user-data-dir={profile}", *args]
