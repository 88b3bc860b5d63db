"""What ``pip install edgeplane`` installs: one top-level package, every subpackage, the
agent working without the extras, and the controller saying which extra it needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"controller": "edgeplane.controller", "edge_agent": "edgeplane.edge_agent"}
FOLDERS["shared"] = "edgeplane.shared"


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_in_the_wheel_list() -> None:
    """setuptools installs the packages pyproject names: a new folder must be named there."""
    found = {
        ".".join([FOLDERS[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
    }
    listed = set(pyproject()["tool"]["setuptools"]["packages"])  # type: ignore[index]
    assert listed == found


def test_the_base_install_is_the_agent_and_what_it_needs() -> None:
    dependencies = pyproject()["project"]["dependencies"]  # type: ignore[index]
    names = sorted(d.split(">")[0].split("<")[0].split("=")[0].strip() for d in dependencies)
    assert names == ["msgspec", "packaging", "paho-mqtt", "psutil", "pynacl"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("edgeplane-*.whl")
    return built


def test_the_wheel_has_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith("top_level.txt")))
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"edgeplane"}
    assert top_level.decode().split() == ["edgeplane"]
    for needed in ("edgeplane/controller/broker/edgeplane.conf", "edgeplane/shared/py.typed"):
        assert needed in names


@pytest.fixture(scope="module")
def bare_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and no extras (its dependencies from the index)."""
    home = tmp_path_factory.mktemp("bare-venv")
    venv.create(home, with_pip=True)
    done = subprocess.run(
        [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return home / "bin"


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_the_bare_install_has_no_controller_dependency(bare_install: Path) -> None:
    listed = run([str(bare_install / "python"), "-m", "pip", "list", "--format=freeze"])
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert installed.isdisjoint({"aiomqtt", "aiosqlite", "structlog", "iotcore", "pyyaml"})
    assert {"paho-mqtt", "msgspec", "psutil", "pynacl"} <= installed


@pytest.mark.slow
def test_the_agent_runs_without_the_extras(bare_install: Path) -> None:
    for command in (
        [str(bare_install / "edge-agent"), "--help"],
        [str(bare_install / "edge-agent"), "run", "--help"],
        [str(bare_install / "python"), "-m", "edgeplane.edge_agent", "--version"],
    ):
        result = run(command)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["edgeplane", "controller", "run"], "controller"),
        (["edgeplane", "status"], "controller"),
        (["edge-agent", "simulate", "--count", "1"], "sim"),
    ],
)
def test_a_command_of_an_extra_names_the_extra_in_one_line(
    bare_install: Path, command: list[str], extra: str
) -> None:
    result = run([str(bare_install / command[0]), *command[1:]])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"pip install 'edgeplane[{extra}]'" in result.stderr


@pytest.mark.slow
def test_the_operator_help_works_without_the_extras(bare_install: Path) -> None:
    result = run([str(bare_install / "edgeplane"), "--help"])
    assert result.returncode == 0, result.stderr
    assert "controller" in result.stdout
