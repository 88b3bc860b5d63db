"""Credential rotation's decisions (pure): each state, what it asks the shell to do, what a
restart resumes, and that the old credential goes only once the new one is in use."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from edgeplane.controller.core.rotation import (
    CreateClient,
    Credential,
    DeleteClient,
    Rotations,
    SendCredentials,
)
from edgeplane.controller.errors import RequestRefused
from edgeplane.shared.messages import OnlineStatus

NOW = 1_700_000_000.0
ENROLLED = NOW - 1000
KEY = "a" * 43 + "="
OTHER_KEY = "b" * 43 + "="
PROOF = "1" * 32
PROOF2 = "2" * 32


def ids() -> Iterator[str]:
    return (f"c-{n}" for n in itertools.count(1))


def online(
    bdseq: int,
    cred_gen: int = 0,
    box_key: str = KEY,
    env: str = "edge-a",
    cred_proof: str = "",
) -> OnlineStatus:
    return OnlineStatus(
        env=env,
        bdseq=bdseq,
        seq=0,
        interval=10,
        boot="b1",
        box_key=box_key,
        cred_gen=cred_gen,
        cred_proof=cred_proof,
    )


def known(rotate_after: float | None = None) -> Rotations:
    """An environment whose agent has reported its box key, connection bdseq 1."""
    rotations = Rotations(rotate_after, ids())
    rotations.on_online(online(1), ENROLLED)
    return rotations


def test_the_first_online_with_a_box_key_makes_the_environment_known_at_generation_0() -> None:
    rotations = Rotations(None, ids())
    changed, actions = rotations.on_online(online(1), ENROLLED)
    assert changed == Credential(
        "edge-a", generation=0, since=ENROLLED, box_key=KEY, reported_key=KEY, reported_bdseq=1
    )
    assert actions == []
    assert rotations.on_online(online(1), ENROLLED) == (None, [])  # nothing new: no write


def test_an_agent_without_a_box_key_cannot_be_rotated() -> None:
    rotations = Rotations(None, ids())
    assert rotations.on_online(online(1, box_key=""), ENROLLED) == (None, [])
    with pytest.raises(RequestRefused, match="has not reported a box key") as caught:
        rotations.start("edge-a", "operator", NOW, ENROLLED)
    assert caught.value.code == "offline"


def test_a_rotation_with_the_agent_online_ends_with_only_the_new_client() -> None:
    rotations = known()
    state, actions = rotations.start("edge-a", "operator", NOW, ENROLLED)
    assert state.state == "creating"
    assert actions == [CreateClient("edge-a", "edge-a.1", 1, KEY)]

    state, actions = rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    assert state.state == "sent"
    [send] = actions
    assert isinstance(send, SendCredentials)
    assert (send.command.username, send.command.generation) == ("edge-a.1", 1)
    assert (send.command.sealed, send.command.box_key) == ("SEALED", KEY)

    # the agent reconnects with the new credential: only then does the old one go
    changed, actions = rotations.on_online(online(2, cred_gen=1, cred_proof=PROOF), ENROLLED)
    assert changed is not None
    assert changed.state == "removing"
    assert actions == [DeleteClient("edge-a", "edge-a")]

    done = rotations.removed("edge-a", NOW + 5)
    assert (done.generation, done.state, done.since, done.sealed, done.proof) == (
        1,
        None,
        NOW,
        "",
        "",
    )

    _, actions = rotations.start("edge-a", "operator", NOW + 10, ENROLLED)
    assert actions == [CreateClient("edge-a", "edge-a.2", 2, KEY)]
    rotations.created("edge-a", 2, "SEALED2", KEY, online_bdseq=2, proof=PROOF2)
    _, actions = rotations.on_online(online(3, cred_gen=2, cred_proof=PROOF2), ENROLLED)
    assert actions == [DeleteClient("edge-a", "edge-a.1")]


def test_an_agent_offline_gets_the_command_when_it_returns() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    state, actions = rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=None, proof=PROOF)
    assert (state.state, actions) == ("created", [])
    _, actions = rotations.on_online(online(5), ENROLLED)
    assert [type(a) for a in actions] == [SendCredentials]
    # heartbeats of the same connection do not send it again; a new connection does
    assert rotations.on_online(online(5), ENROLLED) == (None, [])
    _, actions = rotations.on_online(online(6), ENROLLED)
    [again] = actions
    assert isinstance(again, SendCredentials)
    assert again.command.id != "c-1"  # a new command id (and expiry) each time


def test_a_restart_makes_a_half_made_client_again_and_sends_on_the_next_online() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rows = list(rotations)  # as stored when the controller was killed
    after = Rotations(None, ids(), rows)
    assert after.resume() == [CreateClient("edge-a", "edge-a.1", 1, KEY)]

    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    after = Rotations(None, ids(), list(rotations))
    assert after.resume() == []
    # killed after sending: the same connection's next heartbeat sends it again (it may
    # never have gone out)
    _, actions = after.on_online(online(1), ENROLLED)
    assert [type(a) for a in actions] == [SendCredentials]


def test_a_restart_while_removing_deletes_the_old_client_again() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    rotations.on_online(online(2, cred_gen=1, cred_proof=PROOF), ENROLLED)
    after = Rotations(None, ids(), list(rotations))
    assert after.resume() == [DeleteClient("edge-a", "edge-a")]


def test_asking_again_makes_the_same_generation_again_with_a_new_password() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    state, actions = rotations.start("edge-a", "operator", NOW + 60, ENROLLED)
    assert (state.state, state.target, state.sealed, state.proof) == ("creating", 1, "", "")
    assert actions == [CreateClient("edge-a", "edge-a.1", 1, KEY)]
    # the first creation's late report changes nothing
    rotations.start("edge-a", "operator", NOW + 61, ENROLLED)
    assert rotations.created("edge-a", 2, "LATE", KEY, None, proof=PROOF2)[1] == []


def test_once_the_new_credential_is_in_use_a_new_request_waits_for_the_removal() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    rotations.on_online(online(2, cred_gen=1, cred_proof=PROOF), ENROLLED)
    with pytest.raises(RequestRefused, match="being removed"):
        rotations.start("edge-a", "operator", NOW, ENROLLED)


def test_the_first_box_key_is_pinned_and_another_never_moves_it() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=None, proof=PROOF)
    # someone with the environment's login reports a key of its own while the agent is away
    stranger = online(2, box_key=OTHER_KEY)
    reason = rotations.key_mismatch(stranger)
    assert reason is not None
    assert all(words in reason for words in ("edge-a", "pinned", "--repin"))
    changed, actions = rotations.on_online(stranger, ENROLLED)
    assert actions == []  # not re-sealed to it, and nothing sent to it
    assert changed is not None
    assert (changed.box_key, changed.key_mismatch, changed.sealed_to) == (KEY, True, KEY)
    assert rotations.on_online(online(2, box_key=""), ENROLLED) == (None, [])  # its heartbeats
    # the real agent comes back: the credential sealed to the pinned key goes to it
    changed, actions = rotations.on_online(online(3), ENROLLED)
    [send] = actions
    assert isinstance(send, SendCredentials)
    assert (send.command.sealed, send.command.box_key) == ("SEALED", KEY)
    assert changed is not None
    assert not changed.key_mismatch
    assert rotations.key_mismatch(online(3)) is None


def test_a_rotation_seals_to_the_pinned_key_whatever_was_reported_last() -> None:
    rotations = known(rotate_after=10)
    rotations.on_online(online(2, box_key=OTHER_KEY), ENROLLED)
    _, actions = rotations.start("edge-a", "operator", NOW, ENROLLED)
    assert actions == [CreateClient("edge-a", "edge-a.1", 1, KEY)]
    # the connection with the other key is online now: it is not sent there
    state, actions = rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=2, proof=PROOF)
    assert (state.state, actions) == ("created", [])


def test_no_mismatch_without_a_pin_or_without_a_key() -> None:
    rotations = Rotations(None, ids())
    assert rotations.key_mismatch(online(1, box_key=OTHER_KEY)) is None  # nothing pinned yet
    rotations.on_online(online(1), ENROLLED)
    assert rotations.key_mismatch(online(2, box_key="")) is None
    assert rotations.key_mismatch(online(2)) is None


def test_repin_pins_the_key_of_the_current_connection_and_rotates() -> None:
    rotations = known()
    rotations.on_online(online(2, box_key=OTHER_KEY), ENROLLED)  # the reinstalled agent
    with pytest.raises(RequestRefused, match="--repin") as caught:
        rotations.start("edge-a", "operator", NOW, ENROLLED, repin_on=1)  # not connected now
    assert caught.value.code == "offline"
    state, actions = rotations.start("edge-a", "operator", NOW, ENROLLED, repin_on=2)
    assert (state.box_key, state.key_mismatch) == (OTHER_KEY, False)
    assert actions == [CreateClient("edge-a", "edge-a.1", 1, OTHER_KEY)]
    assert rotations.key_mismatch(online(3, box_key=OTHER_KEY)) is None


def test_automatic_rotation_takes_credentials_older_than_rotate_after() -> None:
    rotations = known(rotate_after=3600)
    enrolled = {"edge-a": ENROLLED, "edge-b": ENROLLED}  # edge-b never reported a key
    assert rotations.due(ENROLLED + 3599, enrolled) == []
    assert rotations.next_due(enrolled) == ENROLLED + 3600
    assert rotations.due(ENROLLED + 3600, enrolled) == ["edge-a"]
    rotations.start("edge-a", "age", ENROLLED + 3600, ENROLLED)
    assert rotations.due(ENROLLED + 9999, enrolled) == []  # under way: not again


def test_automatic_rotation_is_off_by_default() -> None:
    rotations = known()
    assert rotations.due(NOW + 10**9, {"edge-a": ENROLLED}) == []
    assert rotations.next_due({"edge-a": ENROLLED}) is None


# --- proof of possession: the claim of an online is not enough ------------------------------
def test_a_claimed_new_generation_without_its_proof_keeps_the_old_credential() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=None, proof=PROOF)
    # the agent is away; whoever holds the old (generation 0) login claims generation 1
    for claim in (online(7, cred_gen=1), online(7, cred_gen=1, cred_proof="f" * 32)):
        reason = rotations.proof_refused(claim)
        assert reason is not None
        assert all(words in reason for words in ("edge-a", "generation 1", "old credential"))
        _, actions = rotations.on_online(claim, ENROLLED)
        assert not any(isinstance(action, DeleteClient) for action in actions)
        credential = rotations.get("edge-a")
        assert credential is not None
        assert (credential.generation, credential.target) == (0, 1)
        assert credential.state in ("created", "sent")
    # the real agent returns, gets the command, and switches: its proof ends the rotation
    _, actions = rotations.on_online(online(8), ENROLLED)
    assert [type(a) for a in actions] == [SendCredentials]
    proven = online(9, cred_gen=1, cred_proof=PROOF)
    assert rotations.proof_refused(proven) is None
    _, actions = rotations.on_online(proven, ENROLLED)
    assert actions == [DeleteClient("edge-a", "edge-a")]


def test_a_rotation_asked_again_is_not_ended_by_the_earlier_passwords_session() -> None:
    rotations = known()
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    # asked again while the agent switches: the same generation, a new password and proof
    rotations.start("edge-a", "operator", NOW + 60, ENROLLED)
    stale = online(2, cred_gen=1, cred_proof=PROOF)  # logged in with the first password
    assert rotations.proof_refused(stale) is not None  # while the new client is being made
    assert rotations.on_online(stale, ENROLLED)[1] == []
    _, actions = rotations.created("edge-a", 1, "SEALED-B", KEY, online_bdseq=2, proof=PROOF2)
    [send] = actions  # the new password goes to the connection online now
    assert isinstance(send, SendCredentials)
    assert send.command.sealed == "SEALED-B"
    stale = online(3, cred_gen=1, cred_proof=PROOF)
    assert rotations.proof_refused(stale) is not None
    _, actions = rotations.on_online(stale, ENROLLED)
    assert not any(isinstance(action, DeleteClient) for action in actions)
    credential = rotations.get("edge-a")
    assert credential is not None
    assert (credential.generation, credential.state, credential.proof) == (0, "sent", PROOF2)
    # the agent on the second password ends it
    _, actions = rotations.on_online(online(4, cred_gen=1, cred_proof=PROOF2), ENROLLED)
    assert actions == [DeleteClient("edge-a", "edge-a")]


def test_no_proof_is_asked_of_an_online_not_claiming_the_new_generation() -> None:
    rotations = known()
    assert rotations.proof_refused(online(2, cred_gen=1)) is None  # no rotation under way
    rotations.start("edge-a", "operator", NOW, ENROLLED)
    rotations.created("edge-a", 1, "SEALED", KEY, online_bdseq=1, proof=PROOF)
    assert rotations.proof_refused(online(2)) is None  # still on the old credential
