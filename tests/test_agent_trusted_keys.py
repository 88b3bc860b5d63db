"""The command keys an agent trusts across a key rotation: the store in its state dir
(edge_agent/trusted_keys.py) and the ``trust`` / ``distrust`` commands that change it,
through the real command path and outbox."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgeplane.edge_agent.commands import CommandHandler
from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.edge_agent.trusted_keys import TRUSTED_KEYS_FILE, TrustedKeys
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import EVENT
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.messages import Ack, CommandRejected, Distrust, Event, Ping, Pong, Trust
from tests.support.command_key import OTHER_SIGNER, TEST_SIGNER, signed

ENV = "dev-keys"
NEW_SIGNER = CommandSigner(b"edgeplane-tests-the-rotated-key3")


def handler(state: Path, clock: ManualClock) -> tuple[CommandHandler, Outbox, TrustedKeys]:
    outbox = Outbox(state, ENV, clock=clock)
    keys = TrustedKeys(state, [TEST_SIGNER.public_key])
    return CommandHandler(ENV, clock, outbox, commands=outbox, key_store=keys), outbox, keys


def sent(outbox: Outbox) -> list[Event]:
    return [EVENT.decode(payload) for _, payload in outbox.pending()]


def trust_new(cmd: str = "t-1", signer: CommandSigner = TEST_SIGNER) -> bytes:
    return signed(Trust(id=cmd, key=NEW_SIGNER.public_key_b64), ENV, signer=signer)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_a_trusted_key_signs_commands_and_is_kept_across_a_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    commands, outbox, _ = handler(tmp_path, clock)
    (ack,) = commands.handle(trust_new())
    assert isinstance(ack, Ack)
    assert (ack.op, ack.ok) == ("trust", True)
    assert isinstance(commands.handle(signed(Ping(id="p-new"), ENV, signer=NEW_SIGNER))[0], Pong)
    outbox.close()
    # a restarted agent (the same settings) trusts it still; the file is private
    again, outbox, keys = handler(tmp_path, clock)
    assert NEW_SIGNER.key_id in keys.key_ids()
    assert stat.S_IMODE((tmp_path / TRUSTED_KEYS_FILE).stat().st_mode) == 0o600
    assert isinstance(again.handle(signed(Ping(id="p-2"), ENV, signer=NEW_SIGNER))[0], Pong)
    outbox.close()


def test_a_trust_command_signed_by_an_unknown_key_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    commands, outbox, keys = handler(tmp_path, clock)
    (event,) = commands.handle(trust_new(signer=OTHER_SIGNER))
    assert isinstance(event, CommandRejected)
    assert event.reason.startswith("unknown-key")
    assert keys.key_ids() == [TEST_SIGNER.key_id]
    assert not (tmp_path / TRUSTED_KEYS_FILE).exists()
    outbox.close()


def test_distrust_drops_the_old_key_even_one_of_the_settings(
    tmp_path: Path, clock: ManualClock
) -> None:
    commands, outbox, keys = handler(tmp_path, clock)
    commands.handle(trust_new())
    drop = Distrust(id="d-1", key=TEST_SIGNER.key_id)
    (ack,) = commands.handle(signed(drop, ENV, signer=NEW_SIGNER))
    assert isinstance(ack, Ack)
    assert (ack.op, ack.ok) == ("distrust", True)
    assert keys.key_ids() == [NEW_SIGNER.key_id]
    (old,) = commands.handle(signed(Ping(id="p-old"), ENV))
    assert isinstance(old, CommandRejected)
    assert old.reason.startswith("unknown-key")
    outbox.close()
    # the settings still name the old key: the agent, restarted, does not trust it again
    _, outbox, keys = handler(tmp_path, clock)
    assert keys.key_ids() == [NEW_SIGNER.key_id]
    outbox.close()


def test_a_distrust_of_the_only_key_or_of_its_own_signer_is_refused(
    tmp_path: Path, clock: ManualClock
) -> None:
    commands, outbox, keys = handler(tmp_path, clock)
    (only,) = commands.handle(signed(Distrust(id="d-only", key=TEST_SIGNER.key_id), ENV))
    assert isinstance(only, Ack)
    assert not only.ok
    assert "only key" in only.detail
    commands.handle(trust_new())
    (itself,) = commands.handle(signed(Distrust(id="d-self", key=TEST_SIGNER.key_id), ENV))
    assert isinstance(itself, Ack)
    assert not itself.ok
    assert "signed this command" in itself.detail
    assert sorted(keys.key_ids()) == sorted([TEST_SIGNER.key_id, NEW_SIGNER.key_id])
    assert [e.cmd for e in sent(outbox) if isinstance(e, Ack)] == ["d-only", "t-1", "d-self"]
    outbox.close()


def test_a_bad_key_is_refused_and_a_corrupt_file_named(tmp_path: Path) -> None:
    keys = TrustedKeys(tmp_path, [TEST_SIGNER.public_key])
    ok, detail = keys.trust("not base64!")
    assert not ok
    assert "base64 Ed25519 public key" in detail
    (tmp_path / TRUSTED_KEYS_FILE).write_text("{nope")
    with pytest.raises(StateDirError, match=TRUSTED_KEYS_FILE):
        TrustedKeys(tmp_path, [TEST_SIGNER.public_key])
