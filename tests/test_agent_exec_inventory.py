"""The agent's local facts: the models inventory, the platform facts and the secrets file."""

from __future__ import annotations

import os
import platform
import stat
from pathlib import Path

import pytest

from edgeplane.edge_agent.errors import ModelsDirError, SecretsFileError
from edgeplane.edge_agent.inventory import scan_models
from edgeplane.edge_agent.platform_facts import gpu_visible, platform_facts
from edgeplane.edge_agent.secrets import load_secrets
from edgeplane.shared import __version__
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.logs import redactor

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


# --- secrets file ----------------------------------------------------------------------------


def secrets_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.env"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_are_name_value_lines(tmp_path: Path) -> None:
    path = secrets_file(
        tmp_path,
        "# camera\n\nCAMERA_TOKEN=tok-7f3a=b64==\n  _DB_PASSWORD = pw-91c2  \nEMPTY=\n",
    )
    secrets = load_secrets(path)
    assert secrets.names() == {"CAMERA_TOKEN", "_DB_PASSWORD", "EMPTY"}
    assert secrets.env_for(["CAMERA_TOKEN"]) == {"CAMERA_TOKEN": "tok-7f3a=b64=="}
    assert secrets.env_for(["_DB_PASSWORD"]) == {"_DB_PASSWORD": "pw-91c2"}
    assert "tok-7f3a" not in repr(secrets)
    assert "3 names" in repr(secrets)


def test_secret_values_are_masked_here_and_in_logs(tmp_path: Path) -> None:
    secrets = load_secrets(secrets_file(tmp_path, "API_KEY=key-5b1e0c\n"))
    assert secrets.mask("auth key-5b1e0c ok") == "auth *** ok"
    assert redactor.mask("log: key-5b1e0c") == "log: ***"


def test_a_secret_not_held_is_named(tmp_path: Path) -> None:
    secrets = load_secrets(secrets_file(tmp_path, "A=alpha-1\n"))
    with pytest.raises(SecretsFileError, match=r"secrets not in .*: B, C"):
        secrets.env_for(["A", "C", "B"])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secrets_file_readable_by_others_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = secrets_file(tmp_path, "A=alpha-1\n", mode)
    with pytest.raises(SettingsError) as info:
        load_secrets(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    assert load_secrets(secrets_file(tmp_path, "A=alpha-1\n", 0o400)).names() == {"A"}


def test_a_missing_secrets_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SecretsFileError, match="does not exist") as info:
        load_secrets(tmp_path / "absent.env")
    assert str(tmp_path / "absent.env") in str(info.value)


def test_a_directory_is_not_a_secrets_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecretsFileError, match="not a regular file"):
        load_secrets(tmp_path / "dir")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A=alpha-1\nhunter2-secret\n", 2),
        ("# c\n1BAD=hunter2-secret\n", 2),
        ("export TOKEN=hunter2-secret\n", 1),
        ("\n\n=hunter2-secret\n", 3),
    ],
)
def test_a_bad_line_is_named_by_number_without_its_text(
    tmp_path: Path, text: str, line: int
) -> None:
    with pytest.raises(SecretsFileError, match=f"line {line}: expected NAME=value") as info:
        load_secrets(secrets_file(tmp_path, text))
    assert "hunter2" not in str(info.value)


def test_a_name_defined_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretsFileError, match="line 3: A is already defined on line 1"):
        load_secrets(secrets_file(tmp_path, "A=alpha-1\nB=beta-22\nA=alpha-2\n"))


def test_a_secrets_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_bytes(b"A=\xff\xfe\n")
    path.chmod(0o600)
    with pytest.raises(SecretsFileError, match="not UTF-8"):
        load_secrets(path)


def test_wipe_zeroes_and_removes_the_file(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, "A=alpha-1\n")
    keeper = os.open(path, os.O_RDONLY)  # sees the inode's content after the unlink
    try:
        secrets = load_secrets(path)
        secrets.wipe()
        assert not path.exists()
        assert os.pread(keeper, 100, 0) == b"\0" * len("A=alpha-1\n")
    finally:
        os.close(keeper)
    assert secrets.names() == frozenset()
