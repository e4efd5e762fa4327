"""Committed-secret scanner: well-known token formats, private keys, and high-entropy assignments."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (
        "private key",
        re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY( BLOCK)?-----"),
    ),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("Slack token", re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}\b")),
    ("Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}\b")),
    ("OpenAI API key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b")),
    ("Stripe live key", re.compile(r"\b[rs]k_live_[A-Za-z0-9]{16,}\b")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b")),
    ("password in URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]{4,}@[^/\s]+")),
)

_ASSIGN = re.compile(
    r"""(?ix)
    \b([a-z0-9_.-]*(?:password|passwd|pwd|secret|api[_-]?key|apikey|token|access[_-]?key|auth|credential)[a-z0-9_]*)
    \s*(?:=|:|:=|=>)\s*
    (["'])([^"'\s]{8,})\2
    """
)
_PLACEHOLDER = re.compile(
    r"(?i)(change[-_]?me|example|dummy|placeholder|your[-_]|xxx|<[^>]+>|\$\{|\{\{|test|fake|redacted)"
)

SENSITIVE_FILES = re.compile(
    r"(?:^|/)(?:\.env(?:\.[a-z]+)?|id_rsa|id_ed25519|[^/]+\.pem|[^/]+\.p12|[^/]+\.pfx|\.npmrc|\.pypirc|credentials)$"
)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    masked: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: possible {self.kind} committed ({self.masked}); "
            "revoke it and load it from the environment"
        )


def entropy(s: str) -> float:
    counts: dict[str, int] = {}
    for ch in s:
        counts[ch] = counts.get(ch, 0) + 1
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def mask(value: str) -> str:
    return value[:4] + "…" if len(value) > 4 else "…"


def scan_text(path: str, text: str) -> list[Finding]:
    found: list[Finding] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(line) > 4000:  # minified bundles: not where people paste keys by hand
            continue
        hit = False
        for kind, pattern in _PATTERNS:
            if m := pattern.search(line):
                found.append(Finding(path, lineno, kind, mask(m.group(0))))
                hit = True
                break
        if hit:
            continue
        for m in _ASSIGN.finditer(line):
            value = m.group(3)
            if _PLACEHOLDER.search(value) or entropy(value) < 3.0:
                continue
            found.append(Finding(path, lineno, f"secret in {m.group(1)}", mask(value)))
    return found


def scan_files(files: dict[str, str]) -> list[Finding]:
    out: list[Finding] = []
    for path, text in files.items():
        out += scan_text(path, text)
    return out


def sensitive_names(paths: list[str]) -> list[str]:
    return [p for p in paths if SENSITIVE_FILES.search(p) and not p.endswith((".example", ".sample"))]
