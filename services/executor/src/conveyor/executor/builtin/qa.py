"""qa: lint the submitted Python files (compile + AST checks), check JSON files parse, and scan
every file for committed secrets. Offers whitespace fixes as a unified diff."""

from __future__ import annotations

import ast
import builtins
import difflib
import json
import re

from conveyor.executor.builtin import secrets
from conveyor.executor.builtin.payload import Payload, cap, plural
from conveyor.shared.contracts.events import ResultBody

MAX_LINE = 120
_TEST_FILE = re.compile(r"(?:^|/)(?:tests?/|test_[^/]*\.py$|[^/]*_test\.py$|conftest\.py$)")
_BUILTIN_NAMES = frozenset(dir(builtins)) - {"_", "__doc__", "__name__"}


def is_test_path(path: str) -> bool:
    return bool(_TEST_FILE.search(path))


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[tuple[int, str]] = []
        self.imported: dict[str, int] = {}
        self.used: set[str] = set()

    def add(self, node: ast.AST, text: str) -> None:
        self.issues.append((getattr(node, "lineno", 0), text))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = (alias.asname or alias.name).split(".")[0]
            self.imported.setdefault(name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.add(node, f"'from {node.module} import *' hides where names come from")
            elif node.module != "__future__":
                self.imported.setdefault(alias.asname or alias.name, node.lineno)

    def visit_Name(self, node: ast.Name) -> None:
        self.used.add(node.id)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.add(node, "bare 'except:' also catches KeyboardInterrupt and SystemExit; name the exception")
        if len(node.body) == 1 and isinstance(node.body[0], ast.Pass):
            self.add(node, "exception swallowed with 'pass'; log it or handle it")
        self.generic_visit(node)

    def _check_args(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        for d in defaults:
            if isinstance(d, ast.List | ast.Dict | ast.Set):
                self.add(d, f"mutable default argument in {node.name}(); use None and create it inside")
        for arg in [*node.args.args, *node.args.kwonlyargs]:
            if arg.arg in _BUILTIN_NAMES:
                self.add(arg, f"argument '{arg.arg}' of {node.name}() shadows a builtin")
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > 80:
            self.add(node, f"{node.name}() is {length} lines long; split it")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_args(node)
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._check_args(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("eval", "exec") and isinstance(func, ast.Name):
            self.add(node, f"{name}() runs arbitrary code; parse the input instead")
        for kw in node.keywords:
            if kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                self.add(node, "subprocess with shell=True: pass an argument list instead")
        if name == "print" and isinstance(func, ast.Name) and not is_test_path(self.path):
            self.add(node, "print() in library code; use logging")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op, right in zip(node.ops, node.comparators, strict=False):
            if isinstance(op, ast.Eq | ast.NotEq) and isinstance(right, ast.Constant) and right.value is None:
                self.add(node, "comparison to None with ==/!=; use 'is' / 'is not'")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if not any(isinstance(v, ast.FormattedValue) for v in node.values):
            self.add(node, "f-string without placeholders")
        self.generic_visit(node)


def lint_python(path: str, text: str) -> list[str]:
    """Findings for one Python file as 'path:line: message' strings."""
    try:
        tree = ast.parse(text, filename=path)
        compile(tree, path, "exec")
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno or 0}: syntax error: {exc.msg}"]
    checker = _Checker(path)
    checker.visit(tree)
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            if isinstance(node.value, ast.List | ast.Tuple):
                exported |= {
                    e.value
                    for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                }
    attr_roots = {
        n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    if not path.endswith("__init__.py"):
        for name, line in checker.imported.items():
            if name not in checker.used and name not in attr_roots and name not in exported:
                checker.issues.append((line, f"'{name}' imported but unused"))
    issues = checker.issues
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            issues.append((n, f"line is {len(line)} characters (limit {MAX_LINE})"))
        if "\t" in line[: len(line) - len(line.lstrip())]:
            issues.append((n, "indented with tabs"))
        if re.search(r"#\s*(TODO|FIXME|XXX)\b", line):
            issues.append((n, "unresolved " + re.search(r"TODO|FIXME|XXX", line).group(0)))  # type: ignore[union-attr]
    return [f"{path}:{n}: {msg}" for n, msg in sorted(issues)]


def whitespace_fix(path: str, text: str) -> str | None:
    """A unified diff removing trailing whitespace and adding the final newline, if needed."""
    fixed = "\n".join(line.rstrip() for line in text.splitlines())
    if text and not fixed.endswith("\n"):
        fixed += "\n"
    if fixed == text:
        return None
    diff = difflib.unified_diff(
        text.splitlines(keepends=True), fixed.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(d if d.endswith("\n") else d + "\n\\ No newline at end of file\n" for d in diff)


def analyse(payload: Payload, agent: str) -> ResultBody:
    files = payload.files()
    names = payload.file_names()
    if not files and not names:
        return ResultBody(
            summary=f"{agent} (builtin): the payload has no files to check; send them as "
            '{"files": {"path": "content"}} to have them linted and scanned for secrets.',
        )
    py = {p: t for p, t in files.items() if p.endswith(".py")}
    lint: list[str] = []
    broken: set[str] = set()
    for path, text in py.items():
        found = lint_python(path, text)
        if any("syntax error" in f for f in found):
            broken.add(path)
        lint += found
    for path, text in files.items():
        if path.endswith(".json"):
            try:
                json.loads(text)
            except ValueError as exc:
                lint.append(f"{path}: invalid JSON: {exc}")
    leaks = [str(f) for f in secrets.scan_files(files)]
    leaks += [
        f"{p}: a sensitive file is committed; remove it from the repository"
        for p in secrets.sensitive_names(names)
    ]

    fixes = {p: d for p, t in py.items() if p not in broken and (d := whitespace_fix(p, t))}
    source = [p for p in py if not is_test_path(p)]
    tests = [p for p in names if is_test_path(p)]
    suggestions = cap([*leaks, *lint])
    if source and not tests:
        suggestions.append(
            f"no test files among {plural(len(names), 'file')}; add tests for {', '.join(source[:5])}"
        )
    verdict = (
        "no problems found"
        if not (lint or leaks)
        else (
            f"{plural(len(lint), 'lint finding')}"
            + (f" ({plural(len(broken), 'file')} with syntax errors)" if broken else "")
            + f", {plural(len(leaks), 'possible secret')}"
        )
    )
    summary = (
        f"{agent} (builtin): linted {plural(len(py), 'Python file')} and scanned "
        f"{plural(len(files), 'file')} for secrets: {verdict}."
    )
    if fixes:
        summary += f" Whitespace fixes offered for {plural(len(fixes), 'file')}."
        return ResultBody(
            summary=summary,
            suggestions=suggestions,
            files_changed=sorted(fixes),
            code_diff="".join(fixes[p] for p in sorted(fixes)),
        )
    return ResultBody(summary=summary, suggestions=suggestions)
