"""The house rules of docs/architecture.md, checked on the source: who may import whom.

Every import statement counts, also those inside functions (lazy imports are still
dependencies) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"controller": "edgeplane.controller", "edge_agent": "edgeplane.edge_agent"}
FOLDERS["shared"] = "edgeplane.shared"


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """The absolute name of every module ``path`` imports (``from a import b``: ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            yield node.module


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


def is_stdlib(name: str) -> bool:
    return top(name) in sys.stdlib_module_names or name == "__future__"


def violations(folder: str, allowed: Callable[[Path, str], bool]) -> list[str]:
    found = []
    for path in sources(folder):
        for name in imports_of(path):
            if not allowed(path, name):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


def within(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def test_every_source_file_is_seen() -> None:
    assert len(sources("controller")) > 30
    assert len(sources("edge_agent")) > 20
    assert module_name(REPO / "controller" / "core" / "gate.py") == "edgeplane.controller.core.gate"


@pytest.mark.parametrize(
    ("folder", "other"), [("controller", "edge_agent"), ("edge_agent", "controller")]
)
def test_controller_and_agent_never_import_each_other(folder: str, other: str) -> None:
    assert violations(folder, lambda _, name: not within(name, FOLDERS[other])) == []


def test_shared_imports_neither_side() -> None:
    sides = (FOLDERS["controller"], FOLDERS["edge_agent"])
    assert violations("shared", lambda _, name: not within(name, *sides)) == []


def test_the_core_is_pure() -> None:
    """controller/core/ decides over messages and a clock: the standard library and the
    contract only (no MQTT, no SQLite, no files)."""

    def allowed(path: Path, name: str) -> bool:
        if not path.is_relative_to(REPO / "controller" / "core"):
            return True
        return is_stdlib(name) or within(name, "edgeplane.shared", "edgeplane.controller.core")

    assert violations("controller", allowed) == []


# The agent installs without extras and must stay light (docs/performance.md).
AGENT_NEVER_IMPORTS = ("structlog", "aiomqtt", "aiosqlite", "yaml")
PAHO_MODULE = REPO / "edge_agent" / "session.py"


def test_the_agent_outside_the_simulator_imports_no_heavy_or_controller_library() -> None:
    """structlog (asyncio), aiomqtt, aiosqlite and yaml stay out of edge_agent/ (the
    simulator, installed with [sim], may use them), and paho is edge_agent/session.py's."""

    def allowed(path: Path, name: str) -> bool:
        if path.is_relative_to(REPO / "edge_agent" / "simulator"):
            return True
        if top(name) == "paho":
            return path == PAHO_MODULE
        return top(name) not in AGENT_NEVER_IMPORTS

    assert violations("edge_agent", allowed) == []


def test_only_the_mqtt_boundary_imports_aiomqtt_or_paho() -> None:
    """controller/mqtt.py is the controller's one MQTT module: everything else sees its
    values, its connection and :class:`BrokerUnavailable`, never aiomqtt's or paho's."""
    boundary = REPO / "controller" / "mqtt.py"
    mqtt_libraries = {"aiomqtt", "paho"}
    assert mqtt_libraries <= {top(name) for name in imports_of(boundary)}

    def allowed(path: Path, name: str) -> bool:
        return path == boundary or top(name) not in mqtt_libraries

    assert violations("controller", allowed) == []


def test_no_two_classes_share_a_name() -> None:
    """A name says one thing: two public classes with one name in the project are two
    meanings a reader has to tell apart (``Session`` once meant three)."""
    seen: dict[str, list[str]] = {}
    for folder in FOLDERS:
        for path in sources(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    seen.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    assert {name: places for name, places in seen.items() if len(places) > 1} == {}


def test_tests_share_helpers_through_tests_support_only() -> None:
    """A test module imports no other test module: what tests share lives in tests/support/."""
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for name in imports_of(path):
            if name.startswith("tests.") and not within(name, "tests.support"):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    assert found == []
