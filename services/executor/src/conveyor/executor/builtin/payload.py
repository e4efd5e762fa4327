"""A tolerant view of a job's input: files, a diff, the request text, wherever the sender put them.

Senders wrap their content differently (Lovable puts it under ``data``; API jobs send it at
the top of ``input``), so every accessor looks in both, top level first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_FILE_PATH_KEYS = ("path", "name", "filename", "file")
_FILE_BODY_KEYS = ("content", "contents", "source", "text", "code")
_DIFF_KEYS = ("diff", "patch", "code_diff", "unified_diff")
_TEXT_KEYS = (
    "title",
    "name",
    "description",
    "requirements",
    "request",
    "task",
    "message",
    "text",
    "features",
    "user_stories",
)


@dataclass
class Payload:
    prompt: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, value: Any, prompt: str | None = None) -> Payload:
        data: dict[str, Any] = {}
        if isinstance(value, dict):
            inner = value.get("data")
            if isinstance(inner, dict):
                data.update(inner)
            data.update({k: v for k, v in value.items() if k != "data"})
        if prompt is None:
            p = data.get("prompt")
            prompt = p if isinstance(p, str) else None
        return cls(prompt=prompt, data=data)

    def files(self) -> dict[str, str]:
        """path -> text content, from ``files`` given as a mapping or as a list of objects."""
        out: dict[str, str] = {}
        raw = self.data.get("files")
        if isinstance(raw, dict):
            for path, body in raw.items():
                if isinstance(body, str):
                    out[str(path)] = body
                elif isinstance(body, dict):
                    text = _first_str(body, _FILE_BODY_KEYS)
                    if text is not None:
                        out[str(path)] = text
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict):
                    path = _first_str(item, _FILE_PATH_KEYS)
                    text = _first_str(item, _FILE_BODY_KEYS)
                    if path is not None and text is not None:
                        out[path] = text
        single = self.data.get("file")
        if isinstance(single, dict):
            path, text = _first_str(single, _FILE_PATH_KEYS), _first_str(single, _FILE_BODY_KEYS)
            if path is not None and text is not None:
                out[path] = text
        return out

    def file_names(self) -> list[str]:
        """Every path the payload names: files with content, plus bare lists (paths, tree)."""
        names = list(self.files())
        raw = self.data.get("files")
        if isinstance(raw, list):
            names += [x for x in raw if isinstance(x, str)]
        for key in ("paths", "tree", "file_list"):
            v = self.data.get(key)
            if isinstance(v, list):
                names += [x for x in v if isinstance(x, str)]
            elif isinstance(v, str):
                names += [line.strip() for line in v.splitlines() if line.strip()]
        seen: dict[str, None] = {}
        for n in names:
            seen.setdefault(n.lstrip("./") if n.startswith("./") else n, None)
        return list(seen)

    def diff(self) -> str | None:
        for key in _DIFF_KEYS:
            v = self.data.get(key)
            if isinstance(v, str) and v.strip():
                return v
        return None

    def text(self) -> str:
        """The request in words: the prompt and the descriptive fields, in a stable order."""
        parts: list[str] = []
        if self.prompt:
            parts.append(self.prompt)
        for key in _TEXT_KEYS:
            v = self.data.get(key)
            if isinstance(v, str) and v.strip() and v not in parts:
                parts.append(v)
            elif isinstance(v, list):
                parts += [f"- {x}" for x in v if isinstance(x, str) and x.strip()]
        return "\n".join(parts)


def _first_str(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = obj.get(k)
        if isinstance(v, str):
            return v
    return None


def cap(items: list[str], limit: int = 40) -> list[str]:
    """Keep a result readable: at most ``limit`` items, then one line saying how many more."""
    if len(items) <= limit:
        return list(items)
    return [*items[:limit], f"... and {len(items) - limit} more"]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"
