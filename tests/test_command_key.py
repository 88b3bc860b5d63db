"""The controller's command key file, and the shared sign/verify helpers."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import msgspec
import pytest

from edgeplane.controller.command_key import load_command_key, public_key_file
from edgeplane.controller.daemon.settings import load_settings
from edgeplane.controller.errors import CommandKeyError
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.shared.command_signature import CommandVerifier, key_id, parse_public_key
from edgeplane.shared.errors import CommandRefused
from edgeplane.shared.messages import SignedCommand


def test_a_missing_key_file_is_made_private_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state" / "command-key"
    made = load_command_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_command_key(path)
    assert again.public_key == made.public_key
    assert public_key_file(path).read_text().strip() == made.public_key_b64
    assert made.key_id == key_id(made.public_key)
    assert len(made.key_id) == 16
    assert path.read_text().strip() not in repr(made), "the seed shows nowhere"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_group_or_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "command-key"
    load_command_key(path)
    path.chmod(mode)
    with pytest.raises(CommandKeyError, match=f"{path} has mode {mode:04o}.*chmod 600"):
        load_command_key(path)


@pytest.mark.parametrize("text", ["not base64!\n", base64.b64encode(b"short").decode()])
def test_a_key_file_that_holds_no_key_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "command-key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(CommandKeyError, match=f"{path}: not a command key"):
        load_command_key(path)


def test_a_memory_database_keeps_its_key_in_memory(tmp_path: Path) -> None:
    assert load_settings({"db": ":memory:"}, environ={}).command_key_path is None
    beside = load_settings({"db": str(tmp_path / "c.db")}, environ={}).command_key_path
    assert beside == tmp_path / "command-key"
    given = load_settings({"command_key_file": str(tmp_path / "k")}, environ={})
    assert given.command_key_path == tmp_path / "k"
    assert load_command_key(None).public_key != load_command_key(None).public_key


def test_a_signature_covers_every_byte_of_the_command(tmp_path: Path) -> None:
    signer = load_command_key(tmp_path / "command-key")
    verifier = CommandVerifier([signer.public_key])
    command = b'{"type":"ping","id":"c-1","env":"dev-a","expires":1795761330.0}'
    envelope = msgspec.json.decode(signer.seal(command), type=SignedCommand)
    assert verifier.open(envelope) == command
    signature = base64.b64decode(envelope.signed)[:64]
    for changed in (command.replace(b"dev-a", b"dev-b"), command.replace(b"1330", b"9330")):
        forged = msgspec.structs.replace(
            envelope, signed=base64.b64encode(signature + changed).decode()
        )
        with pytest.raises(CommandRefused, match="bad-signature"):
            verifier.open(forged)


@pytest.mark.parametrize("text", ["", "abc", base64.b64encode(b"x" * 31).decode()])
def test_a_public_key_setting_must_be_32_bytes_of_base64(text: str) -> None:
    with pytest.raises(ValueError, match="Ed25519 public key"):
        parse_public_key(text)


def test_an_outbox_from_before_signed_commands_remembers_ids_until_they_expire(
    tmp_path: Path,
) -> None:
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute("CREATE TABLE seen (cmd TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("INSERT INTO seen VALUES ('c-old', 1.0)")
    outbox = Outbox(tmp_path, "dev-a")
    outbox.remember("c-new", until=2e9)
    assert outbox.seen("c-old")
    assert outbox.seen("c-new")
    outbox.close()
