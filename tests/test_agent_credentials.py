"""The agent's side of credential rotation: its box key, the logins it keeps across a
rotation (newest first, the previous one kept until the new one is accepted), and the loop
logging in again with a new credential or falling back when the broker refuses it."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PublicKey, SealedBox

from edgeplane.edge_agent.agent import Agent
from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.credentials import (
    BOX_KEY_FILE,
    CREDENTIALS_FILE,
    CredentialStore,
    ensure_box_key,
    generation_of,
)
from edgeplane.edge_agent.errors import StateDirError
from edgeplane.edge_agent.session import ConnectRefused, Disconnected, MessageIn
from edgeplane.edge_agent.state import BdseqStore
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.identity import Identity, Password
from edgeplane.shared.messages import Credentials
from tests.support.command_key import PUBLIC_KEY, signed
from tests.support.logs import capture_logs
from tests.support.scripted_agent import CMD, ENV, EVENTS, ROOT, NoOtherRuntime, ScriptedBroker

BOOTSTRAP = Identity(username=ENV, password=Password("enrolled-password"))


def sealed_to(state_dir: Path, password: str, proof: str) -> str:
    """What the controller sends: ``password`` and ``proof`` sealed to the agent's public
    box key."""
    clear = json.dumps({"password": password, "proof": proof}).encode()
    return sealed_bytes(state_dir, clear)


def sealed_bytes(state_dir: Path, clear: bytes) -> str:
    public = base64.b64decode(ensure_box_key(state_dir))
    return base64.b64encode(SealedBox(PublicKey(public)).encrypt(clear)).decode()


def proof_of(password: str) -> str:
    """The proof the controller would have made with ``password`` (here: from it)."""
    return hashlib.sha256(password.encode()).hexdigest()[:32]


def credentials(
    state_dir: Path, password: str, generation: int = 1, cmd: str = "c-1"
) -> Credentials:
    return Credentials(
        id=cmd,
        username=f"{ENV}.{generation}",
        generation=generation,
        sealed=sealed_to(state_dir, password, proof_of(password)),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the box key ------------------------------------------------------------------------------
def test_the_box_key_is_made_once_private_to_its_owner_and_without_pynacl_in_the_agent(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from edgeplane.edge_agent.credentials import ensure_box_key;"
        "print(ensure_box_key(Path(sys.argv[1]))); print('nacl' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    public, nacl_loaded = done.stdout.split()
    assert nacl_loaded == "False"
    assert len(base64.b64decode(public)) == 32
    assert mode(tmp_path / BOX_KEY_FILE) == 0o600
    assert ensure_box_key(tmp_path) == public  # the same pair at the next start


def test_a_damaged_box_key_file_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / BOX_KEY_FILE).write_text("{}")
    with pytest.raises(StateDirError, match=r"box-key\.json.*remove it and restart"):
        ensure_box_key(tmp_path)


# --- the logins -------------------------------------------------------------------------------
def test_the_user_name_says_the_generation() -> None:
    assert generation_of(ENV, ENV) == 0
    assert generation_of(ENV, f"{ENV}.12") == 12
    assert generation_of(ENV, "someone-else.3") == 0


def test_a_new_credential_is_kept_beside_the_working_one_until_the_broker_accepts_it(
    tmp_path: Path,
) -> None:
    store = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    first = store.choose()
    assert first is not None
    assert (first.username, first.generation) == (ENV, 0)
    store.accepted(first)

    taken = store.take(credentials(tmp_path, "new-password"))
    assert (taken.ok, taken.switch) == (True, True)
    assert "new-password" not in taken.detail
    assert mode(tmp_path / CREDENTIALS_FILE) == 0o600
    # killed now: the next start logs in with the new one, the old one still at hand
    again = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    newest = again.choose()
    assert newest is not None
    assert (newest.username, newest.password.reveal()) == (f"{ENV}.1", "new-password")
    assert [c.generation for c in again.candidates()] == [1, 0]

    again.accepted(newest)
    kept = json.loads((tmp_path / CREDENTIALS_FILE).read_text())
    assert kept["pending"] is None
    assert kept["working"]["username"] == f"{ENV}.1"


def test_a_refused_new_credential_falls_back_to_the_previous_and_is_not_tried_again(
    tmp_path: Path,
) -> None:
    store = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    command = credentials(tmp_path, "wrong-on-the-broker")
    store.take(command)
    newest = store.choose()
    assert newest is not None
    assert newest.generation == 1
    assert store.refused(newest, "Bad user name or password")
    fallback = store.choose()
    assert fallback is not None
    assert fallback.username == ENV
    taken = store.take(command)  # sent again by the controller
    assert (taken.ok, taken.switch) == (False, False)
    assert "refused" in taken.detail
    # a restart does not bring the refused one back either
    restarted = CredentialStore(tmp_path, ENV, BOOTSTRAP).choose()
    assert restarted is not None
    assert restarted.username == ENV


def test_a_refusal_for_another_reason_keeps_the_login(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    store.take(credentials(tmp_path, "fine"))
    newest = store.choose()
    assert newest is not None
    assert not store.refused(newest, "Server unavailable")
    assert store.choose() == newest


def test_a_password_sealed_to_another_key_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    command = credentials(other, "for-someone-else")
    ensure_box_key(tmp_path)
    taken = CredentialStore(tmp_path, ENV, BOOTSTRAP).take(command)
    assert (taken.ok, taken.switch) == (False, False)
    assert "does not open with this agent's box key" in taken.detail


def test_the_proof_is_kept_with_its_credential_and_reported_only_with_that_login(
    tmp_path: Path,
) -> None:
    store = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    enrolled = store.choose()
    assert enrolled is not None
    assert enrolled.reported_proof == ""  # the enrolled credential has no proof
    store.accepted(enrolled)
    store.take(credentials(tmp_path, "new-password"))
    restarted = CredentialStore(tmp_path, ENV, BOOTSTRAP)  # kept across a restart
    newest, previous = restarted.candidates()
    assert (newest.generation, newest.reported_proof) == (1, proof_of("new-password"))
    assert (previous.generation, previous.reported_proof) == (0, "")
    assert proof_of("new-password") not in repr(newest)  # no repr shows it
    restarted.accepted(newest)
    working = CredentialStore(tmp_path, ENV, BOOTSTRAP).choose()
    assert working is not None
    assert working.reported_proof == proof_of("new-password")


def test_a_sealed_credential_without_a_proof_is_refused(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, ENV, BOOTSTRAP)
    for clear in (b"just-a-password", json.dumps({"password": "p"}).encode()):
        command = Credentials(
            id="c-1", username=f"{ENV}.1", generation=1, sealed=sealed_bytes(tmp_path, clear)
        )
        taken = store.take(command)
        assert (taken.ok, taken.switch) == (False, False)
        assert "a password and a proof" in taken.detail
    assert [c.generation for c in store.candidates()] == [0]


def test_a_damaged_credentials_file_is_named(tmp_path: Path) -> None:
    (tmp_path / CREDENTIALS_FILE).write_text('{"working": {"username": 3}}')
    with pytest.raises(StateDirError, match=r"credentials\.json.*corrupt"):
        CredentialStore(tmp_path, ENV, BOOTSTRAP)


# --- the loop ---------------------------------------------------------------------------------
class LoginBroker(ScriptedBroker):
    """A scripted broker that checks logins: ``valid`` user name -> password."""

    def __init__(self, clock: ManualClock, valid: dict[str, str]) -> None:
        super().__init__(clock)
        self.valid = valid
        self.logins: list[str] = []
        self._login: tuple[str, str] = ("", "")

    def set_login(self, username: str, password: str) -> None:
        self._login = (username, password)

    def connect(self, will: tuple[str, bytes] | None = None) -> None:
        username, password = self._login
        self.logins.append(username)
        if self.valid.get(username) == password:
            super().connect(will)
            return
        self.record.append((self.now(), "refused", username))
        self.pending += [ConnectRefused("Bad user name or password"), Disconnected(134, "", True)]

    def disconnect(self) -> None:
        was_open = self.open
        super().disconnect()
        if was_open:
            self.pending.append(Disconnected(0, "Normal disconnection", by_broker=False))


def looping_agent(tmp_path: Path, broker: LoginBroker, clock: ManualClock) -> Agent:
    config = AgentConfig(
        env_id=ENV,
        broker=BrokerUrl("mqtt", "127.0.0.1", 9).with_identity(BOOTSTRAP),
        state_dir=tmp_path,
        topic_root=ROOT,
        heartbeat_interval=10.0,
        command_key=PUBLIC_KEY,
    )
    return Agent(
        config,
        clock=clock,
        session=broker,
        store=BdseqStore(tmp_path),
        takeover_check=NoOtherRuntime(clock),
        box_key=ensure_box_key(tmp_path),
    )


def onlines(broker: LoginBroker) -> list[dict[str, Any]]:
    return [p for _, p in broker.published() if p and p["status"] == "online" and p["seq"] == 0]


def test_the_agent_logs_in_again_with_a_new_credential_and_says_so(tmp_path: Path) -> None:
    clock = ManualClock()
    valid = {ENV: "enrolled-password", f"{ENV}.1": "rotated-password"}
    broker = LoginBroker(clock, valid)
    agent = looping_agent(tmp_path, broker, clock)
    command = signed(credentials(tmp_path, "rotated-password"), ENV)
    broker.at(2, lambda: broker.pending.append(_message(CMD, command)))
    broker.at(5, agent.request_stop)
    assert agent.run() == 0

    assert broker.logins == [ENV, f"{ENV}.1"]
    first, second = onlines(broker)
    assert (first["box_key"], first.get("cred_gen", 0)) == (ensure_box_key(tmp_path), 0)
    assert second["cred_gen"] == 1
    # the proof goes only with the login it came with
    assert ("cred_proof" in first, second["cred_proof"]) == (False, proof_of("rotated-password"))
    acks = [p for _, p in broker.published(EVENTS) if p["type"] == "ack"]
    assert [(a["op"], a["ok"]) for a in acks] == [("credentials", True)]
    assert "rotated-password" not in json.dumps([d for _, _, d in broker.record])


def test_a_new_credential_the_broker_refuses_leaves_the_agent_online_with_the_old(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    broker = LoginBroker(clock, {ENV: "enrolled-password"})
    agent = looping_agent(tmp_path, broker, clock)
    command = signed(credentials(tmp_path, "never-created"), ENV)
    broker.at(2, lambda: broker.pending.append(_message(CMD, command)))
    broker.at(8, agent.request_stop)
    assert agent.run() == 0

    assert broker.logins == [ENV, f"{ENV}.1", ENV]
    assert [o.get("cred_gen", 0) for o in onlines(broker)] == [0, 0]
    assert not any("cred_proof" in o for o in onlines(broker))  # back on the old: no proof
    # the next connection tells the controller of the refused login, once
    assert [(o.get("refused", 0), o.get("refused_reason", "")) for o in onlines(broker)] == [
        (0, ""),
        (1, "Bad user name or password"),
    ]


def _message(topic: str, payload: bytes) -> MessageIn:
    return MessageIn(topic, payload, False)


# --- locked out -------------------------------------------------------------------------------
def refusals(broker: LoginBroker) -> list[tuple[float, str]]:
    return [(t, d) for t, a, d in broker.record if a == "refused"]


def test_a_locked_out_agent_backs_off_long_and_says_what_to_do(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = LoginBroker(clock, {})  # its credential was deleted: every login is refused
    agent = looping_agent(tmp_path, broker, clock)
    broker.at(3000, agent.request_stop)
    with capture_logs() as logs:
        assert agent.run() == 0

    times = [t for t, _ in refusals(broker)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert 5 <= len(times) <= 25  # not three a second
    assert all(5.0 <= gap <= 301.0 for gap in gaps)
    assert max(gaps) >= 150.0  # it grew to the cap
    told = [e for e in logs if e["log_level"] == "error" and "re-enrol" in e["event"].lower()]
    assert len(told) == len(times)  # one clear line per attempt
    assert all(e["username"] == ENV and ENV in e["event"] for e in told)
    assert BdseqStore(tmp_path).last == 1  # refused attempts keep the one bdseq


def test_a_refused_login_tries_the_next_stored_credential_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = LoginBroker(clock, {ENV: "enrolled-password", f"{ENV}.1": "rotated-password"})
    agent = looping_agent(tmp_path, broker, clock)
    command = signed(credentials(tmp_path, "rotated-password"), ENV)
    broker.at(2, lambda: broker.pending.append(_message(CMD, command)))
    broker.at(5, lambda: broker.valid.update({f"{ENV}.1": "replaced"}))  # it no longer works
    broker.at(5, lambda: broker.drop(134))
    broker.at(60, agent.request_stop)
    agent.run()

    # ... the agent falls back to the bootstrap login at once, without a long wait
    assert broker.logins == [ENV, f"{ENV}.1", f"{ENV}.1", ENV]
    ((refused_at, _),) = refusals(broker)
    online_again = min(
        t for t, p in broker.published() if p and p["status"] == "online" and t > refused_at
    )
    assert online_again - refused_at < 1.0


def test_a_locked_out_agent_comes_back_once_a_login_works_again(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = LoginBroker(clock, {})
    agent = looping_agent(tmp_path, broker, clock)
    broker.at(700, lambda: broker.valid.update({ENV: "enrolled-password"}))
    broker.at(1100, agent.request_stop)
    agent.run()

    assert onlines(broker)  # online again, without a restart
    assert refusals(broker)[-1][0] < 700
