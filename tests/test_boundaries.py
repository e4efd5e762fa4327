"""The project's import and encapsulation rules, checked on the source (part of `make test`):

- a service never imports another service;
- the library (conveyor.shared) imports no service, and neither do the CLI and the MCP package;
- outside the library, no code reaches into a private attribute of nats-py, aiohttp or
  OpenTelemetry (the names below are theirs): that belongs behind conveyor.shared.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir())
# Private names of nats-py, aiohttp and OpenTelemetry that code has reached for before.
FOREIGN_PRIVATE = {
    "_ackd",
    "_nc",
    "_sub",
    "_subs",
    "_prefix",
    "_client",
    "_pre",
    "_direct",
    "_stream",
    "_jsi",
    "_span_processors",
    "_process_msg",
    "_send_command",
    "_transport",
    "_server",
    "_max_payload",
    "_max_pending_size",
    "_pending_data_size",
    "_flush_queue",
    "_flusher",
}


def _sources(part: str) -> list[Path]:
    return sorted((ROOT / part).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "conveyor" and parts[1] in SERVICES else None


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _sources(f"services/{service}/src")
        for module in _imports(path)
        if _service_of(module) not in (None, service)
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("part", ["shared/src", "cli/src", "mcpserver/src"])
def test_the_library_cli_and_mcp_import_no_service(part: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _sources(part)
        for module in _imports(path)
        if _service_of(module) is not None
    ]
    assert not wrong, wrong


def test_no_private_attribute_of_a_dependency_outside_the_library() -> None:
    parts = [f"services/{s}/src" for s in SERVICES] + [
        "cli/src",
        "mcpserver/src",
        "services",
        "tests",
        "bench",
    ]
    wrong = set()
    for part in parts:
        for path in _sources(part):
            if path.resolve() == Path(__file__).resolve():
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in FOREIGN_PRIVATE
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                ):
                    wrong.add(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not wrong, sorted(wrong)


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The checks above cannot pass by reading nothing."""
    sample = tmp_path / "x.py"
    sample.write_text("import conveyor.executor.worker\nfrom conveyor.deliverer import x\nmsg._ackd = True\n")
    assert {_service_of(m) for m in _imports(sample)} == {"executor", "deliverer"}
    assert len(_sources("services/receiver/src")) > 10 and len(SERVICES) == 4
