"""The controller's rotation shell with the agent's credential store, over a stand-in for
the broker's client administration: the new credential opens on the agent and works at
the broker, the old one is removed only after the agent's online with the new one, and a
controller killed after creating or after sending resumes from its database. No clear
password is ever in a command, the database or a log line."""

from __future__ import annotations

import itertools
from pathlib import Path

import structlog

from edgeplane.controller.core.rotation import Credential, Rotations
from edgeplane.controller.daemon.rotation import CredentialRotator
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.edge_agent.credentials import CredentialStore, Login, ensure_box_key
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import encode
from edgeplane.shared.identity import Identity, Password
from edgeplane.shared.messages import Credentials, OnlineStatus

ENV = "edge-rot"
ENROLLED = 1_699_000_000.0


class FakeBroker:
    """The broker's clients: user name -> password. Refuses a login it does not hold."""

    def __init__(self) -> None:
        self.clients: dict[str, str] = {ENV: "enrolled"}
        self.calls: list[tuple[str, str]] = []

    async def create_client(
        self, username: str, password: str, *, client_id: str, role: str
    ) -> None:
        assert (client_id, role) == (ENV, f"edgeplane-env-{ENV}")
        self.calls.append(("create", username))
        self.clients[username] = password

    async def delete_client(self, username: str) -> None:
        self.calls.append(("delete", username))
        self.clients.pop(username, None)

    def accepts(self, username: str, password: str) -> bool:
        return self.clients.get(username) == password


class Controller:
    """One life of the controller: its rotator over ``store``, its sent commands."""

    def __init__(self, store: Store, broker: FakeBroker, rows: list[Credential]) -> None:
        self.sent: list[Credentials] = []
        self.online: int | None = None
        ids = (f"c-{n:010x}" for n in itertools.count(1))
        self.rotator = CredentialRotator(
            Rotations(None, ids, rows),
            broker,
            store,
            ManualClock(),
            send=self._send,
            online_bdseq=lambda env: self.online,
            enrolled=lambda env: ENROLLED,
        )

    async def _send(self, env: str, command: Credentials) -> None:
        self.sent.append(command)


def agent_online(state_dir: Path, bdseq: int, login: Login | None = None) -> OnlineStatus:
    """The agent's online on a connection logged in with ``login`` (None: the enrolled)."""
    box_key = ensure_box_key(state_dir)
    return OnlineStatus(
        env=ENV,
        bdseq=bdseq,
        seq=0,
        interval=10,
        boot="b",
        box_key=box_key,
        cred_gen=0 if login is None else login.generation,
        cred_proof="" if login is None else login.reported_proof,
    )


def agent_logs_in(agent: CredentialStore, broker: FakeBroker) -> Login:
    """The agent connects as it would: newest login first, falling back when refused."""
    for _ in range(3):
        login = agent.choose()
        assert login is not None
        if broker.accepts(login.username, login.password.reveal()):
            agent.accepted(login)
            return login
        agent.refused(login, "Not authorized")
    raise AssertionError("locked out")


def bootstrap(tmp_path: Path) -> CredentialStore:
    identity = Identity(username=ENV, password=Password("enrolled"))
    (tmp_path / "agent").mkdir(exist_ok=True)
    return CredentialStore(tmp_path / "agent", ENV, identity)


async def test_rotation_with_the_agent_online(tmp_path: Path) -> None:
    broker, agent = FakeBroker(), bootstrap(tmp_path)
    agent_dir = tmp_path / "agent"
    with structlog.testing.capture_logs() as logs:
        async with open_store(tmp_path / "c.db") as store:
            controller = Controller(store, broker, [])
            controller.online = 1
            await controller.rotator.on_online(agent_online(agent_dir, 1))
            state = await controller.rotator.rotate(ENV)
            assert (state.state, state.target) == ("sent", 1)
            [command] = controller.sent
            assert agent.take(command).switch
            login = agent_logs_in(agent, broker)
            assert login.generation == 1
            await controller.rotator.on_online(agent_online(agent_dir, 2, login))
            done = controller.rotator.rotations.get(ENV)
            assert done is not None
            assert (done.generation, done.state) == (1, None)
            stored = await store.credentials()
    assert stored == [done]
    assert list(broker.clients) == [f"{ENV}.1"]  # only the new credential is valid
    assert broker.calls == [("delete", f"{ENV}.1"), ("create", f"{ENV}.1"), ("delete", ENV)]
    password = broker.clients[f"{ENV}.1"]
    assert len(password) >= 32
    assert password.encode() not in encode(command)
    assert password.encode() not in (tmp_path / "c.db").read_bytes()
    assert password not in repr(logs)
    # the proof came sealed (never readable in the command) and is public only once used
    assert len(login.reported_proof) == 32
    assert login.reported_proof.encode() not in encode(command)
    assert login.reported_proof not in repr(logs)


async def test_rotation_with_the_agent_offline_ends_when_it_returns(tmp_path: Path) -> None:
    broker, agent = FakeBroker(), bootstrap(tmp_path)
    agent_dir = tmp_path / "agent"
    async with open_store(tmp_path / "c.db") as store:
        controller = Controller(store, broker, [])
        await controller.rotator.on_online(agent_online(agent_dir, 1))
        controller.online = None  # gone before the request
        state = await controller.rotator.rotate(ENV)
        assert (state.state, controller.sent) == ("created", [])
        # it returns with the old credential, gets the command, logs in with the new
        await controller.rotator.on_online(agent_online(agent_dir, 2, agent_logs_in(agent, broker)))
        [command] = controller.sent
        agent.take(command)
        await controller.rotator.on_online(agent_online(agent_dir, 3, agent_logs_in(agent, broker)))
    assert list(broker.clients) == [f"{ENV}.1"]


async def test_a_controller_killed_after_creating_or_sending_resumes(tmp_path: Path) -> None:
    broker, agent = FakeBroker(), bootstrap(tmp_path)
    agent_dir = tmp_path / "agent"
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        first = Controller(store, broker, [])
        await first.rotator.on_online(agent_online(agent_dir, 1))
        await first.rotator.rotate(ENV)  # offline: created, not sent
    # killed after creating: the next life sends it on the agent's next online
    async with open_store(db) as store:
        second = Controller(store, broker, await store.credentials())
        await second.rotator.resume()
        await second.rotator.on_online(agent_online(agent_dir, 1))
        [command] = second.sent
    # killed after sending, before the agent got it: sent again on the next online
    async with open_store(db) as store:
        third = Controller(store, broker, await store.credentials())
        await third.rotator.resume()
        await third.rotator.on_online(agent_online(agent_dir, 1))
        [again] = third.sent
        assert (again.sealed, again.generation) == (command.sealed, 1)
        agent.take(again)
        await third.rotator.on_online(agent_online(agent_dir, 2, agent_logs_in(agent, broker)))
    assert list(broker.clients) == [f"{ENV}.1"]
    # the agent restarted now still logs in (with the new credential)
    assert agent_logs_in(CredentialStore(agent_dir, ENV, None), broker).generation == 1


async def test_an_agent_killed_after_storing_the_new_credential_starts_with_it(
    tmp_path: Path,
) -> None:
    broker, agent = FakeBroker(), bootstrap(tmp_path)
    agent_dir = tmp_path / "agent"
    async with open_store(tmp_path / "c.db") as store:
        controller = Controller(store, broker, [])
        controller.online = 1
        await controller.rotator.on_online(agent_online(agent_dir, 1))
        await controller.rotator.rotate(ENV)
        agent.take(controller.sent[0])
        del agent  # killed before it logged in again
        restarted = bootstrap(tmp_path)
        login = agent_logs_in(restarted, broker)
        assert login.generation == 1
        await controller.rotator.on_online(agent_online(agent_dir, 2, login))
    assert list(broker.clients) == [f"{ENV}.1"]
