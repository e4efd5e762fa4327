"""Serve published sites from this process's HTTP port, chosen by the Host header.

``{slug}.{domain}`` serves the site's live release; ``{deployment}--{slug}.{domain}`` serves
that deployment's own release (previews, and any kept build). Other hosts fall through to
the service's own routes (health, metrics).
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from conveyor.deployer.providers.local import live_link, release_dir
from conveyor.shared.contracts.deploys import DEPLOYMENT_ID_RE, SLUG_RE

_SLUG = re.compile(SLUG_RE)
_DEPLOYMENT = re.compile(DEPLOYMENT_ID_RE)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src * data:; script-src 'none'; frame-ancestors 'none'"
    ),
}


def parse_host(host: str, domain: str) -> tuple[str, str | None] | None:
    """(slug, deployment or None for live) when ``host`` names a site under ``domain``."""
    name = host.rsplit(":", 1)[0].lower().rstrip(".") if not host.startswith("[") else ""
    suffix = "." + domain.lower()
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    deployment: str | None = None
    if "--" in label:
        deployment, label = label.split("--", 1)
        if not _DEPLOYMENT.match(deployment):
            return None
    if not _SLUG.match(label):
        return None
    return label, deployment


def _not_found(text: str) -> web.Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found</title></head>'
        f"<body><main><h1>Not found</h1><p>{text}</p></main></body></html>"
    )
    return web.Response(status=404, text=html, content_type="text/html", headers=SECURITY_HEADERS)


def site_middleware(root: Path, domain: str):  # type: ignore[no-untyped-def]
    @web.middleware
    async def serve_sites(request: web.Request, handler: Handler) -> web.StreamResponse:
        target = parse_host(request.host or "", domain)
        if target is None:
            return await handler(request)
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        slug, deployment = target
        base = release_dir(root, slug, deployment) if deployment else live_link(root, slug)
        try:
            base = base.resolve(strict=True)
        except OSError:
            return _not_found("No site is published here (yet).")
        rel = request.path.lstrip("/")
        if rel == "" or rel.endswith("/"):
            rel += "index.html"
        path = (base / rel).resolve()
        if not path.is_relative_to(base) or path.name.startswith(".") or not path.is_file():
            return _not_found("This page does not exist.")
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "X-Conveyor-Release": base.name}
        return web.FileResponse(path, headers=headers)

    return serve_sites
