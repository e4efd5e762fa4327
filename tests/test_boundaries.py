"""The project's import and encapsulation rules, checked on the source (part of `make test`):

- a service never imports another service;
- the library (conveyor.shared) imports no service, and neither do the CLI and the MCP package;
- nats-py is imported by the bus (conveyor.shared.bus) alone: services, the CLI, the MCP
  package, the scripts and the rest of the library use the bus (its tests and
  conveyor.shared.testing may use nats-py directly);
- outside the bus, no code reaches into a private attribute of nats-py, aiohttp or
  OpenTelemetry (the names below are theirs), not even through getattr with a string.

Each rule is checked against a planted violation too (the tests at the end), so none can pass
by reading nothing.
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
    "_flush_pending",
    "_pending_queue",
    "_pending_size",
    "_ps",
    "_parse_header_lines",
    "_process_headers",
    "_active_span_processor",
}


BUS = ROOT / "shared" / "src" / "conveyor" / "shared" / "bus"
TESTING = ROOT / "shared" / "src" / "conveyor" / "shared" / "testing"
# Where nats-py may not be imported: everything that runs in production, outside the bus.
NO_NATS = [f"services/{s}/src" for s in SERVICES] + ["shared/src", "cli/src", "mcpserver/src", "scripts"]
# Where no private attribute of a dependency may be touched: everything outside the bus and
# the bus's own tests (shared/tests), which look at what the fast paths do to nats-py.
NO_PRIVATE = [f"services/{s}/src" for s in SERVICES] + [
    "shared/src",
    "cli/src",
    "mcpserver/src",
    "services",
    "tests",
    "bench",
    "scripts",
]


def _sources(part: str) -> list[Path]:
    return sorted((ROOT / part).rglob("*.py"))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


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


def _nats_imports(path: Path) -> list[str]:
    return sorted(m for m in _imports(path) if m == "nats" or m.startswith("nats."))


def _private_uses(path: Path) -> list[str]:
    """``x._name`` (not on self/cls) and ``getattr(x, "_name", ...)`` for the names above."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in FOREIGN_PRIVATE
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in FOREIGN_PRIVATE
        ):
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def _nats_outside_the_bus(parts: list[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {module}"
        for part in parts
        for path in _sources(part)
        if not _inside(path, BUS) and not _inside(path, TESTING)
        for module in _nats_imports(path)
    ]


def _private_outside_the_bus(parts: list[str]) -> list[str]:
    return sorted(
        {
            f"{path.relative_to(ROOT)}:{use}"
            for part in parts
            for path in _sources(part)
            if not _inside(path, BUS) and path.resolve() != Path(__file__).resolve()
            for use in _private_uses(path)
        }
    )


def test_only_the_bus_imports_nats_py() -> None:
    wrong = _nats_outside_the_bus(NO_NATS)
    assert not wrong, wrong


def _bus_internals(parts: list[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}: {module}"
        for part in parts
        for path in _sources(part)
        if not _inside(path, BUS) and not _inside(path, TESTING)
        for module in _imports(path)
        if module.startswith("conveyor.shared.bus.") and module != "conveyor.shared.bus.streams"
    ]


def test_code_outside_the_bus_uses_its_package_api() -> None:
    """``from conveyor.shared import bus`` / ``from conveyor.shared.bus import X``: its modules
    (wire, reader, jsrequests, kv, consumer, ...) are its own business (its tests excepted).
    Stream and bucket configurations (bus.streams) are read by operations code."""
    wrong = _bus_internals(NO_NATS)
    assert not wrong, wrong


def test_no_private_attribute_of_a_dependency_outside_the_bus() -> None:
    wrong = _private_outside_the_bus(NO_PRIVATE)
    assert not wrong, wrong


def test_the_bus_is_where_nats_py_is_imported() -> None:
    """The rule above is about something real: the bus does import nats-py."""
    assert any(_nats_imports(path) for path in BUS.rglob("*.py"))


LIBRARY = ROOT / "shared" / "src" / "conveyor" / "shared"
# What each layer of the library may import of the others (docs/architecture.md): contracts
# nothing; the bus the contracts and the runtime's telemetry (trace headers on publish); the
# domain rules the contracts, the bus and the runtime's settings; the runtime all of them.
LAYERS = {
    "contracts": {"contracts"},
    "bus": {"contracts", "bus", "runtime.telemetry"},
    "domain": {"contracts", "bus", "domain", "runtime.config"},
    "runtime": {"contracts", "bus", "domain", "runtime"},
}


def _layer_breaches(library: Path) -> list[str]:
    wrong = []
    for layer, may in LAYERS.items():
        for path in sorted((library / layer).rglob("*.py")):
            for module in _imports(path):
                if not module.startswith("conveyor.shared."):
                    continue
                target = module.removeprefix("conveyor.shared.")
                if target.startswith("testing") or not any(
                    target == m or target.startswith(m + ".") for m in may
                ):
                    wrong.append(f"{path.relative_to(library)}: {module}")
    return wrong


def test_each_layer_of_the_library_imports_only_those_below_it() -> None:
    assert {p.name for p in LIBRARY.iterdir() if p.is_dir() and not p.name.startswith("_")} == {
        *LAYERS,
        "testing",
    }
    wrong = _layer_breaches(LIBRARY)
    assert not wrong, wrong


def test_the_layer_check_fails_on_a_planted_violation(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "contracts" / "events.py").write_text("from conveyor.shared.bus import Bus\n")
    (tmp_path / "bus" / "client.py").write_text("from conveyor.shared.runtime.runner import serve\n")
    (tmp_path / "domain" / "ok.py").write_text("from conveyor.shared.contracts import subjects\n")
    assert _layer_breaches(tmp_path) == [
        "contracts/events.py: conveyor.shared.bus",
        "bus/client.py: conveyor.shared.runtime.runner",
    ]


def test_the_checks_fail_on_planted_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service importing nats-py, one reaching into ``msg._ackd`` or reading OpenTelemetry's
    ``_span_processors`` through getattr, and a library module importing a service, each planted
    in a copy of the tree's layout: every one is found."""
    root = tmp_path / "tree"
    service = root / "services" / "executor" / "src" / "conveyor" / "executor"
    library = root / "shared" / "src" / "conveyor" / "shared"
    bus = library / "bus"
    for folder in (service, library, bus):
        folder.mkdir(parents=True)
    (service / "worker.py").write_text("import nats.errors\nfrom nats.aio.msg import Msg\n")
    (service / "fanout.py").write_text("async def f(msg):\n    msg._ackd = True\n")
    (library / "runtime").mkdir()
    otel = "def f(p):\n    return getattr(p, '_span_processors', 1)\n"
    (library / "runtime" / "telemetry.py").write_text(otel)
    (library / "domain.py").write_text("from conveyor.receiver import state\n")
    (bus / "client.py").write_text("import nats\n\ndef f(js):\n    return js._nc\n")  # allowed here
    monkeypatch.setitem(globals(), "ROOT", root)
    monkeypatch.setitem(globals(), "BUS", bus)
    monkeypatch.setitem(globals(), "TESTING", library / "testing")
    parts = ["services/executor/src", "shared/src"]
    (service / "router.py").write_text("from conveyor.shared.bus.jsrequests import JsRequests\n")
    assert _bus_internals(parts) == [
        "services/executor/src/conveyor/executor/router.py: conveyor.shared.bus.jsrequests"
    ]
    assert _nats_outside_the_bus(parts) == [
        "services/executor/src/conveyor/executor/worker.py: nats.aio.msg",
        "services/executor/src/conveyor/executor/worker.py: nats.errors",
    ]
    assert _private_outside_the_bus(parts) == [
        "services/executor/src/conveyor/executor/fanout.py:2: ._ackd",
        "shared/src/conveyor/shared/runtime/telemetry.py:2: getattr(..., '_span_processors')",
    ]
    wrong_library = [
        module
        for path in _sources("shared/src")
        for module in _imports(path)
        if _service_of(module) is not None
    ]
    assert wrong_library == ["conveyor.receiver"]


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The checks above cannot pass by reading nothing."""
    sample = tmp_path / "x.py"
    sample.write_text("import conveyor.executor.worker\nfrom conveyor.deliverer import x\nmsg._ackd = True\n")
    assert {_service_of(m) for m in _imports(sample)} == {"executor", "deliverer"}
    assert len(_sources("services/receiver/src")) > 10 and len(SERVICES) == 4
