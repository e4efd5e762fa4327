"""Query-string parameters of the list routes: each read one way, a bad value a 400 naming it."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from conveyor.shared.runtime.http import HTTPError


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (ASCII digits only: ``int`` would take '²'), or
    ``default`` when the parameter is absent."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not low <= int(raw) <= high:
        raise HTTPError(400, "invalid_query", f"{name}: an integer from {low} to {high}", field=name)
    return int(raw)


def query_time(request: web.Request, name: str) -> dt.datetime | None:
    """An ISO 8601 time (UTC when it names no zone), or None when absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPError(400, "invalid_query", f"{name}: an ISO 8601 time", field=name) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
