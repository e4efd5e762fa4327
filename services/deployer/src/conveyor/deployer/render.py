"""Render a site configuration to a static site: index.html, styles.css and the config itself.

Jinja2 with autoescaping on, so every text from the configuration is escaped; links were
already restricted to http(s), mailto, tel, paths and anchors by the schema. Colours that
carry text are chosen for contrast (WCAG AA, 4.5:1) against their background.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

import jinja2
import msgspec

from conveyor.shared.contracts.deploys import SiteConfig

TEMPLATES: Final = Path(__file__).parent / "templates"

# Background, text, muted text, card surface, alternate band, borders per preset.
PRESETS: Final[dict[str, dict[str, str]]] = {
    "light": {
        "bg": "#ffffff",
        "fg": "#111827",
        "muted": "#4b5563",
        "surface": "#ffffff",
        "alt": "#f3f4f6",
        "border": "#e5e7eb",
    },
    "dark": {
        "bg": "#0b1120",
        "fg": "#f1f5f9",
        "muted": "#cbd5e1",
        "surface": "#111a2e",
        "alt": "#0f172a",
        "border": "#1e293b",
    },
    "ocean": {
        "bg": "#f0f9ff",
        "fg": "#0c4a6e",
        "muted": "#155e75",
        "surface": "#ffffff",
        "alt": "#e0f2fe",
        "border": "#bae6fd",
    },
    "sunset": {
        "bg": "#fff7ed",
        "fg": "#431407",
        "muted": "#7c2d12",
        "surface": "#ffffff",
        "alt": "#ffedd5",
        "border": "#fed7aa",
    },
    "forest": {
        "bg": "#f0fdf4",
        "fg": "#052e16",
        "muted": "#166534",
        "surface": "#ffffff",
        "alt": "#dcfce7",
        "border": "#bbf7d0",
    },
}
SECTIONS_IN_NAV: Final = ("features", "about", "testimonials", "pricing", "contact")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
    lstrip_blocks=False,
)


def _luminance(hex_color: str) -> float:
    channels = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours (1 to 21)."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def render_site(config: SiteConfig, build_id: str) -> dict[str, bytes]:
    """The files of the site, by path relative to its root."""
    s = config.sections
    palette = PRESETS[config.theme.preset]
    primary = config.theme.primary_color
    on_primary = "#ffffff" if contrast(primary, "#ffffff") >= contrast(primary, "#111111") else "#111111"
    link = primary if contrast(primary, palette["bg"]) >= 4.5 else palette["fg"]
    nav = [(key, getattr(s, key).title) for key in SECTIONS_IN_NAV if getattr(s, key) is not None]
    ctx = {
        "c": config,
        "s": s,
        "t": palette,
        "on_primary": on_primary,
        "link": link,
        "nav": nav,
        "build_id": build_id,
        "year": dt.datetime.now(dt.UTC).year,
        "paragraphs": _paragraphs,
    }
    html = _env.get_template("base.html").render(ctx)
    css = _env.get_template("styles.css").render(ctx)
    return {
        "index.html": html.encode(),
        "styles.css": css.encode(),
        "site-config.json": msgspec.json.format(msgspec.json.encode(config), indent=2) + b"\n",
        "robots.txt": b"User-agent: *\nAllow: /\n",
    }
