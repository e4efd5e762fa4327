"""dev: review a unified diff for size, risky patterns in added lines, and missing tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from conveyor.executor.builtin import secrets
from conveyor.executor.builtin.payload import Payload, cap, plural
from conveyor.executor.builtin.qa import is_test_path, lint_python
from conveyor.shared.contracts.events import ResultBody

CODE_EXT = re.compile(r"\.(py|js|jsx|ts|tsx|go|rs|java|kt|rb|php|cs|c|cc|cpp|h|hpp|swift|scala|vue|svelte)$")
_JS_TEST = re.compile(
    r"(?:^|/)(?:__tests__/|[^/]+\.(?:test|spec)\.[jt]sx?$|[^/]+_test\.go$|[^/]+Test\.(?:java|kt)$)"
)
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")

RISKY: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(eval|exec)\s*\("), "runs code built from a string"),
    (
        re.compile(r"shell\s*=\s*True|\bos\.system\s*\(|child_process\.exec\s*\(|\bpopen\s*\("),
        "runs a shell command: injection risk",
    ),
    (
        re.compile(r"\bpickle\.loads?\s*\(|\bmarshal\.loads?\s*\(|\byaml\.load\s*\((?!.*SafeLoader)"),
        "unsafe deserialisation of untrusted data",
    ),
    (
        re.compile(
            r"verify\s*=\s*False|rejectUnauthorized\s*:\s*false|InsecureSkipVerify\s*:\s*true|CERT_NONE"
        ),
        "disables TLS certificate verification",
    ),
    (
        re.compile(
            r"[\"'`]\s*(select|insert|update|delete)\b[^\"'`]*[\"'`]\s*(\+|%|\.format\()|\bf[\"'](select|insert|update|delete)\b.*\{",
            re.I,
        ),
        "SQL built by string formatting: use parameters",
    ),
    (
        re.compile(r"\.innerHTML\s*=|dangerouslySetInnerHTML|document\.write\s*\("),
        "writes raw HTML: XSS risk",
    ),
    (
        re.compile(r"\bconsole\.log\s*\(|\bdebugger\b|pdb\.set_trace\s*\(|\bbreakpoint\s*\(\s*\)"),
        "debugging leftover",
    ),
    (re.compile(r"^\s*except\s*:|catch\s*\([^)]*\)\s*\{\s*\}"), "swallows every error"),
    (re.compile(r"chmod\s+(-R\s+)?777|0o?777\b"), "world-writable permissions"),
    (
        re.compile(r"\bhashlib\.(md5|sha1)\s*\(|\bcreateHash\(\s*[\"'](md5|sha1)"),
        "weak hash (fine for checksums, not for security)",
    ),
    (re.compile(r"#\s*noqa\b|eslint-disable|@ts-ignore|type:\s*ignore"), "silences a linter or type checker"),
    (re.compile(r"(#|//)\s*(TODO|FIXME|HACK|XXX)\b"), "leaves a TODO in the change"),
)


@dataclass
class FileChange:
    path: str
    added: list[tuple[int, str]] = field(default_factory=list)
    removed: int = 0
    new: bool = False
    deleted: bool = False
    binary: bool = False


def _strip_prefix(path: str) -> str:
    path = path.split("\t")[0].strip()
    return path[2:] if path[:2] in ("a/", "b/") else path


def parse_diff(text: str) -> list[FileChange]:
    """Files of a unified (git or plain) diff, with added lines and their new line numbers."""
    files: list[FileChange] = []
    cur: FileChange | None = None
    new_line = 0
    old_path = ""
    for line in text.splitlines():
        if line.startswith("diff --git "):
            parts = line.split(" ")
            cur = FileChange(_strip_prefix(parts[-1]))
            files.append(cur)
        elif line.startswith("--- "):
            old_path = _strip_prefix(line[4:])
        elif line.startswith("+++ "):
            path = _strip_prefix(line[4:])
            if path == "/dev/null":
                path, deleted = old_path, True
            else:
                deleted = False
            if cur is None or (cur.path != path and cur.added):
                cur = FileChange(path)
                files.append(cur)
            cur.path = path
            cur.deleted = cur.deleted or deleted
            cur.new = cur.new or old_path == "/dev/null"
        elif line.startswith("new file mode") and cur:
            cur.new = True
        elif line.startswith("deleted file mode") and cur:
            cur.deleted = True
        elif line.startswith("Binary files") and cur:
            cur.binary = True
        elif m := _HUNK.match(line):
            new_line = int(m.group(1))
        elif cur is not None and line.startswith("+"):
            cur.added.append((new_line, line[1:]))
            new_line += 1
        elif cur is not None and line.startswith("-"):
            cur.removed += 1
        elif cur is not None and line.startswith(" "):
            new_line += 1
    return files


def is_test(path: str) -> bool:
    return is_test_path(path) or bool(_JS_TEST.search(path))


def review(changes: list[FileChange]) -> ResultBody:
    findings: list[str] = []
    for ch in changes:
        for n, text in ch.added:
            for pattern, why in RISKY:
                if pattern.search(text):
                    findings.append(f"{ch.path}:{n}: {why}: `{text.strip()[:100]}`")
        added_text = "\n".join(t for _, t in ch.added)
        for f in secrets.scan_text(ch.path, added_text):
            line = ch.added[f.line - 1][0] if 0 < f.line <= len(ch.added) else f.line
            findings.append(f"{ch.path}:{line}: possible {f.kind} added ({f.masked}); never commit it")
        if ch.new and ch.path.endswith(".py"):
            findings += [f for f in lint_python(ch.path, added_text + "\n") if "syntax error" in f]
    for p in secrets.sensitive_names([c.path for c in changes if not c.deleted]):
        findings.append(f"{p}: a sensitive file is added to the repository")

    added = sum(len(c.added) for c in changes)
    removed = sum(c.removed for c in changes)
    size = added + removed
    size_word = "small" if size < 100 else "medium" if size <= 400 else "large"
    code = [c.path for c in changes if CODE_EXT.search(c.path) and not is_test(c.path) and not c.deleted]
    tests = [c.path for c in changes if is_test(c.path)]
    suggestions = cap(findings)
    if size > 400:
        suggestions.append(f"{size} changed lines: split the change so each part can be reviewed on its own")
    if len(changes) > 20:
        suggestions.append(f"{len(changes)} files in one change: consider smaller, focused changes")
    if code and not tests:
        suggestions.append(
            f"no tests changed for {plural(len(code), 'changed source file')}: {', '.join(code[:5])}"
        )
    lock_only = {c.path.rsplit("/", 1)[-1] for c in changes}
    if "package-lock.json" in lock_only and "package.json" not in lock_only:
        suggestions.append(
            "package-lock.json changed without package.json: check the lock file change is intended"
        )
    binary = [c.path for c in changes if c.binary]
    if binary:
        suggestions.append(f"binary files in the change: {', '.join(binary[:5])}")
    summary = (
        f"dev (builtin): reviewed {plural(len(changes), 'file')}, +{added}/-{removed} lines "
        f"({size_word} change); "
        f"{plural(len(findings), 'risky pattern')} found; "
        + (f"tests changed: {', '.join(tests[:5])}." if tests else "no tests changed.")
    )
    return ResultBody(summary=summary, suggestions=suggestions)


def analyse(payload: Payload, agent: str) -> ResultBody:
    diff = payload.diff()
    if diff:
        changes = parse_diff(diff)
        if not changes:
            return ResultBody(summary=f"{agent} (builtin): the diff could not be read as a unified diff.")
        return review(changes)
    files = payload.files()
    if files:
        # No diff: review the files as if they were added in full.
        changes = [
            FileChange(path, added=list(enumerate(text.splitlines(), 1)), new=True)
            for path, text in files.items()
        ]
        body = review(changes)
        summary = body.summary.replace("reviewed", "reviewed (no diff given, whole files)", 1)
        return ResultBody(summary=summary, suggestions=body.suggestions)
    return ResultBody(
        summary=f"{agent} (builtin): no diff or files in the payload to review; send "
        '{"diff": "<unified diff>"} or {"files": {"path": "content"}}.'
    )
