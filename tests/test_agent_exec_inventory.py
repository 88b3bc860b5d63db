"""The agent's local facts: the models inventory, the platform facts and the secrets file."""

from __future__ import annotations

import os
import platform
import stat
from pathlib import Path

import pytest

from edge_agent.errors import ModelsDirError
from edge_agent.inventory import scan_models
from edge_agent.platform_facts import gpu_visible, platform_facts
from shared import __version__

# --- models inventory ------------------------------------------------------------------------


def make_models(root: Path, *paths: str) -> Path:
    for path in paths:
        (root / path).mkdir(parents=True)
    return root


def test_models_are_name_and_version_directories_in_order(tmp_path: Path) -> None:
    models = make_models(
        tmp_path, "ocr/1.10.0", "ocr/1.9.2", "ocr/2.0.0rc1", "ocr/latest", "defect/1.0"
    )
    assert scan_models(models) == {
        "defect": ["1.0"],
        "ocr": ["1.9.2", "1.10.0", "2.0.0rc1", "latest"],
    }


def test_files_and_hidden_entries_are_not_models(tmp_path: Path) -> None:
    models = make_models(tmp_path, "ocr/1.0", "ocr/.2.0.partial", ".cache/1.0")
    (tmp_path / "README").write_text("models live here\n")
    (tmp_path / "ocr" / "NOTES.txt").write_text("")
    assert scan_models(models) == {"ocr": ["1.0"]}


def test_a_model_without_versions_is_listed_empty(tmp_path: Path) -> None:
    assert scan_models(make_models(tmp_path, "ocr")) == {"ocr": []}


def test_no_models_dir_means_no_models() -> None:
    assert scan_models(None) == {}


def test_a_missing_models_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelsDirError, match="cannot be listed") as info:
        scan_models(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_a_file_as_models_dir_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelsDirError, match="Not a directory"):
        scan_models(tmp_path / "file")


# --- platform facts --------------------------------------------------------------------------


def test_platform_facts_describe_this_machine() -> None:
    facts = platform_facts()
    assert facts.os == platform.system().lower()
    assert facts.arch == platform.machine()
    assert facts.py == platform.python_version()
    assert facts.agent == __version__
    assert facts.gpu == gpu_visible()
    assert platform_facts() is facts, "computed once"


def test_gpu_is_seen_through_nvidia_smi_on_the_path(tmp_path: Path) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has an NVIDIA device node")
    assert not gpu_visible(path=str(tmp_path))
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert gpu_visible(path=str(tmp_path))
