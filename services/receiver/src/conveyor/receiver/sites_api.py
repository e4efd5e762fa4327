"""Sites and deployments API (POST /api/sites, publish, rollback, preview, deployment reads)."""

from __future__ import annotations

from typing import Any

from conveyor.shared.runner import Runtime


def add_routes(rt: Runtime[Any]) -> None:
    """Register the sites/deployments routes on ``rt.app``."""
