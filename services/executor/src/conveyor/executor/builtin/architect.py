"""architect: summarise a project's structure: folders, languages, entry points, manifests,
internal Python imports (and cycles), the largest files, and what is missing."""

from __future__ import annotations

import ast
import json
from collections import Counter

from conveyor.executor.builtin.payload import Payload, cap, plural
from conveyor.executor.builtin.qa import is_test_path
from conveyor.shared.contracts.events import ResultBody

LANGUAGES = {
    ".py": "Python", ".js": "JavaScript", ".jsx": "JavaScript", ".mjs": "JavaScript", ".ts": "TypeScript",
    ".tsx": "TypeScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".kt": "Kotlin", ".rb": "Ruby",
    ".php": "PHP", ".cs": "C#", ".c": "C", ".cpp": "C++", ".h": "C", ".swift": "Swift", ".vue": "Vue",
    ".svelte": "Svelte", ".html": "HTML", ".css": "CSS", ".scss": "CSS", ".sql": "SQL", ".sh": "Shell",
    ".md": "Markdown", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML",
}  # fmt: skip
ENTRY_NAMES = {
    "main.py", "__main__.py", "app.py", "manage.py", "wsgi.py", "asgi.py", "server.py", "index.js",
    "index.ts", "index.tsx", "main.js", "main.ts", "main.tsx", "App.tsx", "App.jsx", "server.js",
    "server.ts", "main.go", "main.rs", "index.html",
}  # fmt: skip
MANIFESTS = {
    "package.json", "pyproject.toml", "requirements.txt", "setup.py", "go.mod", "Cargo.toml", "Gemfile",
    "pom.xml", "build.gradle", "composer.json", "Dockerfile", "docker-compose.yml", "compose.yml",
    "vite.config.ts", "vite.config.js", "next.config.js", "tsconfig.json", "Makefile",
}  # fmt: skip


def _ext(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


def _module_of(path: str) -> str:
    mod = path[:-3].replace("/", ".")
    mod = mod.removesuffix(".__init__")
    return mod.removeprefix("src.")


def python_imports(files: dict[str, str]) -> dict[str, set[str]]:
    """Internal import graph between the submitted Python modules."""
    modules = {_module_of(p): p for p in files if p.endswith(".py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        try:
            tree = ast.parse(files[path])
        except SyntaxError:
            continue
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            for t in targets:
                # Match the target or its closest internal ancestor.
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def analyse(payload: Payload, agent: str) -> ResultBody:
    files = payload.files()
    names = payload.file_names()
    meta = [
        str(payload.data[k])
        for k in ("name", "framework", "template", "stack")
        if isinstance(payload.data.get(k), str)
    ]
    if not names:
        text = payload.text()
        return ResultBody(
            summary=f"{agent} (builtin): no files in the payload, so no structure to summarise"
            + (f"; project: {', '.join(meta)}" if meta else "")
            + '. Send {"files": {"path": "content"}} or {"paths": [...]} for a structural summary.',
            suggestions=[f"request: {text[:300]}"] if text else [],
        )
    tops = Counter(n.split("/", 1)[0] + "/" if "/" in n else "(root)" for n in names)
    langs = Counter(LANGUAGES[e] for n in names if (e := _ext(n)) in LANGUAGES)
    entries = [n for n in names if n.rsplit("/", 1)[-1] in ENTRY_NAMES]
    manifests = [n for n in names if n.rsplit("/", 1)[-1] in MANIFESTS]
    tests = [n for n in names if is_test_path(n) or ".test." in n or ".spec." in n]
    sizes = sorted(((t.count("\n") + 1, p) for p, t in files.items()), reverse=True)

    parts = [
        f"{agent} (builtin): {plural(len(names), 'file')} in "
        + ", ".join(f"{d} ({c})" for d, c in tops.most_common(8)),
        "languages: " + (", ".join(f"{lang} {c}" for lang, c in langs.most_common(6)) or "unknown"),
        "entry points: " + (", ".join(entries[:6]) or "none found"),
    ]
    if manifests:
        parts.append("manifests: " + ", ".join(manifests[:6]))
    suggestions: list[str] = []
    graph = python_imports(files)
    edges = sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs)
    if graph:
        parts.append(f"internal Python imports: {len(edges)}")
        suggestions += [f"import: {e}" for e in edges[:15]]
        if cycle := find_cycle(graph):
            suggestions.insert(
                0, "import cycle: " + " -> ".join(cycle) + "; move the shared part into its own module"
            )
    for p, t in files.items():
        if p.endswith("package.json"):
            try:
                pkg = json.loads(t)
                deps = sorted({*pkg.get("dependencies", {}), *pkg.get("devDependencies", {})})
                scripts = sorted(pkg.get("scripts", {}))
                parts.append(
                    f"{p}: {plural(len(deps), 'dependency', 'dependencies')}, "
                    f"scripts {', '.join(scripts[:6]) or 'none'}"
                )
            except (ValueError, AttributeError, TypeError):
                suggestions.append(f"{p} is not valid JSON")
    for lines, p in sizes[:3]:
        if lines > 400:
            suggestions.append(f"{p} has {lines} lines: split it by responsibility")
    code = [
        n
        for n in names
        if _ext(n) in LANGUAGES and LANGUAGES[_ext(n)] not in ("Markdown", "JSON", "YAML", "TOML")
    ]
    if code and not tests:
        suggestions.append("no tests in the project: add a test folder next to the code")
    if not any(n.rsplit("/", 1)[-1].lower().startswith("readme") for n in names):
        suggestions.append("no README: say what the project is and how to run it")
    if not any(n.startswith((".github/workflows/", ".gitlab-ci", ".ci/")) for n in names):
        suggestions.append("no CI configuration found")
    if meta:
        parts.insert(1, "project: " + ", ".join(meta))
    if sizes:
        parts.append("largest: " + ", ".join(f"{p} ({n} lines)" for n, p in sizes[:3]))
    return ResultBody(summary="; ".join(parts) + ".", suggestions=cap(suggestions))
