"""Every module says what it offers (``__all__``), and says it truly; the packages' own
``__all__`` are pinned here, so a change to what the project exports is a visible change.

Only ``edgeplane.shared`` exports names at package level: it is the contract both sides
import. The controller and the agent are used through their commands and topics.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import edgeplane.controller
import edgeplane.edge_agent
import edgeplane.shared

PACKAGES = (edgeplane.controller, edgeplane.edge_agent, edgeplane.shared)

SHARED_EXPORTS = [
    "DEFAULT_BROKER",
    "DEFAULT_ROOT",
    "BrokerUrl",
    "DecodeError",
    "EdgeplaneError",
    "InvalidBrokerUrl",
    "InvalidId",
    "InvalidTopic",
    "ParsedTopic",
    "SettingsError",
    "TopicKind",
    "TopicRoot",
    "__version__",
    "derive_env_id",
    "is_env_id",
    "validate_env_id",
]


def all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # running them is their import
                names.append(info.name)
    return sorted(names)


MODULES = all_modules()


def test_every_module_is_found() -> None:
    assert "edgeplane.controller.core.presence" in MODULES
    assert "edgeplane.edge_agent.simulator.wire.client" in MODULES
    assert len(MODULES) > 100


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_what_it_exports_and_has_it(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__dict__.get("__all__")
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert len(set(exported)) == len(exported), f"{name}: a name twice in __all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what it does not have"


def subpackages() -> list[ModuleType]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            found.append(module)
    return found


def test_the_shared_package_exports_exactly_the_contract() -> None:
    assert edgeplane.shared.__all__ == SHARED_EXPORTS


@pytest.mark.parametrize(
    "package", [p for p in subpackages() if p is not edgeplane.shared], ids=lambda p: p.__name__
)
def test_the_other_packages_export_nothing_at_package_level(package: ModuleType) -> None:
    assert package.__all__ == []
    assert package.__doc__, f"{package.__name__} says in its docstring what its folder holds"
