"""The command key rotation's decisions (controller/core/key_rotation.py): who gets which
command signed with which key, when the old key is dropped, and what a restart resumes."""

from __future__ import annotations

import itertools

import pytest

from edgeplane.controller.core.key_rotation import AgentTrust, KeyRotations, KeyStep
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import Trust


def rotations(*agents: AgentTrust) -> KeyRotations:
    return KeyRotations((f"c-{n}" for n in itertools.count()), agents=agents)


def sent(step: KeyStep) -> list[tuple[str, str, str]]:
    return [(c.env, type(c.command).__name__, c.command.key) for c in step.commands]


def started(keys: KeyRotations, live: set[str], online: dict[str, int]) -> KeyStep:
    return keys.start("old", "new", "TkVXLUtFWQ==", 100.0, live, online)


def test_start_sends_trust_to_online_agents_and_waits_for_the_others() -> None:
    keys = rotations()
    step = started(keys, {"a", "b"}, {"a": 1})
    assert sent(step) == [("a", "Trust", "TkVXLUtFWQ==")]
    assert step.rotation is not None
    assert step.rotation.state == "rolling"
    assert keys.by_phase("trust") == ["a", "b"]
    assert not keys.signs_with_new("a")  # not before it acknowledged


def test_an_agent_that_acknowledged_is_signed_for_with_the_new_key() -> None:
    keys = rotations()
    step = started(keys, {"a", "b"}, {"a": 1, "b": 7})
    trust_a = step.commands[0].command.id
    acked = keys.on_ack("a", trust_a, True, 101.0, {"a", "b"}, {"a": 1, "b": 7})
    assert keys.signs_with_new("a")
    assert not keys.signs_with_new("b")
    assert not acked.drop_old  # b has not taken it yet: the old key stays
    assert keys.rolling


def test_the_last_ack_drops_the_old_key_and_distrust_goes_out() -> None:
    keys = rotations()
    step = started(keys, {"a"}, {"a": 1})
    last = keys.on_ack("a", step.commands[0].command.id, True, 101.0, {"a"}, {"a": 1})
    assert last.drop_old
    assert last.rotation is not None
    assert last.rotation.state == "finished"
    # on the agent's next connection it is told to drop the old key (signed with the new)
    again = keys.on_online("a", 2, live=True)
    assert sent(again) == [("a", "Distrust", "old")]
    done = keys.on_ack("a", again.commands[0].command.id, True, 102.0, {"a"}, {"a": 2})
    assert done.rotation is not None
    assert done.rotation.state == "done"
    assert keys.by_phase("done") == ["a"]


def test_an_offline_agent_gets_trust_when_it_returns_once_per_connection() -> None:
    keys = rotations()
    started(keys, {"a"}, {})
    first = keys.on_online("a", 5, live=True)
    assert sent(first) == [("a", "Trust", "TkVXLUtFWQ==")]
    assert not keys.on_online("a", 5, live=True)  # a heartbeat: not again
    assert sent(keys.on_online("a", 6, live=True))  # a new connection: again


def test_a_refusal_or_a_stale_ack_changes_nothing() -> None:
    keys = rotations()
    step = started(keys, {"a"}, {"a": 1})
    cmd = step.commands[0].command.id
    assert not keys.on_ack("a", cmd, False, 101.0, {"a"}, {"a": 1})
    assert not keys.on_ack("a", "c-other", True, 101.0, {"a"}, {"a": 1})
    assert keys.by_phase("trust") == ["a"]


def test_finish_drops_the_old_key_and_agents_that_never_acked_are_lost() -> None:
    keys = rotations()
    step = started(keys, {"a", "b"}, {"a": 1})
    keys.on_ack("a", step.commands[0].command.id, True, 101.0, {"a", "b"}, {"a": 1})
    forced = keys.finish(102.0, {"a": 1})
    assert forced.drop_old
    assert keys.by_phase("lost") == ["b"]
    assert sent(forced) == [("a", "Distrust", "old")]
    assert not keys.on_online("b", 3, live=True)  # it cannot read anything now


def test_a_second_rotation_waits_for_the_first_to_finish() -> None:
    keys = rotations()
    started(keys, {"a"}, {})
    with pytest.raises(RequestRefused, match="rolling out already"):
        started(keys, {"a"}, {})
    with pytest.raises(RequestRefused, match="no rotation"):
        rotations().finish(1.0, {})


def test_no_live_agent_finishes_at_once() -> None:
    step = started(rotations(), set(), {})
    assert step.drop_old
    assert step.rotation is not None
    assert step.rotation.state == "done"


def test_a_newcomer_during_the_rollout_gets_trust_retired_ones_nothing() -> None:
    keys = rotations()
    started(keys, {"a"}, {})
    assert sent(keys.on_online("new", 1, live=True)) == [("new", "Trust", "TkVXLUtFWQ==")]
    assert not keys.on_online("retired", 1, live=False)


def test_resume_sends_again_on_the_next_online() -> None:
    keys = rotations()
    step = started(keys, {"a"}, {"a": 1})
    restored = KeyRotations((f"r-{n}" for n in itertools.count()), keys.rotation, list(keys))
    restored.resume()
    again = restored.on_online("a", 1, live=True)
    assert isinstance(again.commands[0].command, Trust)
    assert again.commands[0].command.id != step.commands[0].command.id


def test_killed_after_dropping_the_old_key_the_rotation_is_finished() -> None:
    keys = rotations()
    started(keys, {"a"}, {})
    step = keys.dropped_old(200.0)
    assert not step.drop_old  # the shell found it dropped already
    assert keys.by_phase("lost") == ["a"]
    assert step.rotation is not None
    assert step.rotation.finished == 200.0
