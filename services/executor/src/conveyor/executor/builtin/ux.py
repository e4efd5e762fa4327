"""ux-design-expert: accessibility and usability checks on submitted HTML/JSX/Vue/CSS: missing
alternative text, labels, names and language, heading order, keyboard access, small text,
colour contrast below WCAG AA, removed focus outlines."""

from __future__ import annotations

import itertools
import re

from conveyor.executor.builtin.payload import Payload, cap, plural
from conveyor.shared.contracts.events import ResultBody

MARKUP = (".html", ".htm", ".jsx", ".tsx", ".vue", ".svelte")
STYLES = (".css", ".scss")

_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)\b((?:[^>\"'{}]|\"[^\"]*\"|'[^']*'|\{[^}]*\})*)(/?)>", re.S)
_ATTR = re.compile(r"([:@a-zA-Z_][-a-zA-Z0-9_:.]*)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|\{[^}]*\}|[^\s>]+))?")
_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")
_HEX = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})\b")
_RGB = re.compile(r"rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)")
NAMED = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "lightgray": (211, 211, 211),
    "lightgrey": (211, 211, 211),
}


def _attrs(raw: str) -> dict[str, str]:
    return {m.group(1).lower(): (m.group(2) or "").strip("\"'{}") for m in _ATTR.finditer(raw)}


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_color(value: str) -> tuple[int, int, int] | None:
    if m := _HEX.search(value):
        h = m.group(1)
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if m := _RGB.search(value):
        r, g, b = (min(255, int(x)) for x in m.groups())
        return r, g, b
    return NAMED.get(value.strip().lower())


def luminance(rgb: tuple[int, int, int]) -> float:
    def ch(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def check_markup(path: str, text: str) -> list[str]:
    out: list[str] = []
    headings: list[tuple[int, int]] = []
    labels = (_attrs(m.group(2)) for m in _TAG.finditer(text) if m.group(1).lower() == "label")
    labels_for = {a.get("for") or a.get("htmlfor") for a in labels}
    for m in _TAG.finditer(text):
        tag, attrs, line = m.group(1), _attrs(m.group(2)), _line(text, m.start())
        t = tag.lower()
        named = any(k in attrs for k in ("aria-label", "aria-labelledby", "title"))
        if t == "img" and "alt" not in attrs:
            out.append(f'{path}:{line}: <img> without alt text (use alt="" if decorative)')
        elif t == "html" and "lang" not in attrs:
            out.append(f"{path}:{line}: <html> without lang: screen readers guess the language")
        elif t in ("input", "select", "textarea"):
            kind = attrs.get("type", "text").lower()
            if (
                kind not in ("hidden", "submit", "button", "reset", "image")
                and not named
                and attrs.get("id") not in labels_for
            ):
                out.append(f"{path}:{line}: <{tag}> has no label (label for=, aria-label or aria-labelledby)")
        elif t == "button" and not named:
            close = text.find("</button>", m.end())
            inner = re.sub(r"<[^>]+>", "", text[m.end() : close if close >= 0 else m.end()]).strip()
            if not inner:
                out.append(f"{path}:{line}: <button> without text or aria-label has no accessible name")
        elif t == "a":
            close = text.find("</a>", m.end())
            inner = re.sub(r"<[^>]+>", "", text[m.end() : close if close >= 0 else m.end()]).strip().lower()
            if inner in ("click here", "here", "more", "read more", "link"):
                out.append(f"{path}:{line}: link text '{inner}' says nothing out of context")
            if attrs.get("href") in (None, "", "#"):
                out.append(f"{path}:{line}: <a> without a real href: use a <button> for actions")
        elif t in ("div", "span") and any(
            k in attrs for k in ("onclick", "@click", "v-on:click", "on:click")
        ):
            if "role" not in attrs or "tabindex" not in attrs:
                out.append(f"{path}:{line}: clickable <{tag}> is not reachable by keyboard; use a <button>")
        elif re.fullmatch(r"h[1-6]", t):
            headings.append((int(t[1]), line))
        elif t in ("video", "audio") and "autoplay" in attrs:
            out.append(f"{path}:{line}: <{tag}> autoplays; let users start media themselves")
        tabindex = attrs.get("tabindex", "")
        if tabindex.lstrip("-").isdigit() and int(tabindex) > 0:
            out.append(f"{path}:{line}: tabindex={tabindex} breaks the natural tab order")
    if path.endswith((".html", ".htm")) and "<head" in text.lower() and 'name="viewport"' not in text:
        out.append(f'{path}: no <meta name="viewport">: the page will not scale on phones')
    if sum(1 for level, _ in headings if level == 1) > 1:
        out.append(f"{path}: more than one <h1>")
    for (a, _), (b, line) in itertools.pairwise(headings):
        if b > a + 1:
            out.append(f"{path}:{line}: heading jumps from h{a} to h{b}")
    for style in re.finditer(r"<style[^>]*>(.*?)</style>", text, re.S | re.I):
        offset = _line(text, style.start(1)) - 1
        out += [_shift(f, path, offset) for f in check_css(path, style.group(1))]
    return out


def _shift(finding: str, path: str, offset: int) -> str:
    """Line numbers of a <style> block's findings, counted in the whole file."""
    m = re.match(re.escape(path) + r":(\d+):", finding)
    return f"{path}:{int(m.group(1)) + offset}:{finding[m.end() :]}" if m else finding


def check_css(path: str, text: str) -> list[str]:
    out: list[str] = []
    for m in _RULE.finditer(text):
        selector, body, line = (
            m.group(1).strip().splitlines()[-1].strip(),
            m.group(2),
            _line(text, m.start(2)),
        )
        props = {k.strip().lower(): v.strip() for k, _, v in (d.partition(":") for d in body.split(";")) if v}
        fg = parse_color(props.get("color", ""))
        bg = parse_color(props.get("background-color", props.get("background", "")))
        if fg and bg and (ratio := contrast(fg, bg)) < 4.5:
            out.append(f"{path}:{line}: '{selector}' text contrast {ratio:.2f}:1 is below WCAG AA 4.5:1")
        size = re.match(r"(\d+(?:\.\d+)?)px", props.get("font-size", ""))
        if size and float(size.group(1)) < 12:
            out.append(
                f"{path}:{line}: '{selector}' font-size {size.group(0)} is hard to read; use 12px or more"
            )
        if props.get("outline") in ("none", "0") and ":focus" in selector and "focus-visible" not in text:
            out.append(f"{path}:{line}: '{selector}' removes the focus outline without a replacement")
    return out


def analyse(payload: Payload, agent: str) -> ResultBody:
    files = payload.files()
    ui = {p: t for p, t in files.items() if p.endswith(MARKUP + STYLES)}
    if not ui:
        html = payload.data.get("html")
        if isinstance(html, str):
            ui = {"index.html": html}
    if not ui:
        return ResultBody(
            summary=f"{agent} (builtin): no HTML, JSX, Vue, Svelte or CSS in the payload to review; "
            "the offline review checks alternative text, labels, names, language, heading order, keyboard "
            "access, text size, colour contrast (WCAG AA) and focus outlines.",
        )
    findings: list[str] = []
    for path, text in ui.items():
        findings += check_css(path, text) if path.endswith(STYLES) else check_markup(path, text)
    summary = (
        f"{agent} (builtin): reviewed {plural(len(ui), 'interface file')} for accessibility and usability: "
        + (
            f"{plural(len(findings), 'problem')} found."
            if findings
            else "no problems found by the offline checks."
        )
    )
    return ResultBody(summary=summary, suggestions=cap(findings))
