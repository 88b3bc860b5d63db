"""Credential rotation end to end, against a site's broker made by ``broker init``: a real
controller, an agent started from its bootstrap file, ``edgeplane env rotate-credentials``
run as the user runs it. Each rotation (agent online; agent offline; controller killed
with the new client made, or with the command sent; agent killed once it stored the new
credential) ends the same way: the old password is refused by the broker, the new one
works, the agent is online on the new generation and ``env show`` says so. Every MQTT
message is recorded, and the clear new password is in none of them (nor in a log)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.credentials import BOX_KEY_FILE, CREDENTIALS_FILE
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.site import (
    BAD_CREDENTIALS,
    NOT_AUTHORIZED,
    Identity,
    Received,
    SiteBroker,
    SiteClient,
)
from tests.support.site_system import Site, connack, read_toml
from tests.support.system import open_system

pytestmark = pytest.mark.slow

CREATE = ("env", "create", "--stage", "prod", "--location", "berlin", "--purpose", "vision")
WAIT = 40.0


@pytest.fixture
async def site(tmp_path: Path, procs: list[Proc]) -> AsyncIterator[Site]:
    broker = SiteBroker.create(tmp_path / "site", TopicRoot("rotate/edgeplane/v1"))
    broker.start()
    try:
        yield Site(broker, tmp_path, procs)
    finally:
        broker.stop()


@dataclass
class Rotation:
    """One environment of ``site`` enrolled, its agent, and a recording of every message."""

    site: Site
    env: str
    bootstrap: Path
    recorder: SiteClient
    agent: Proc | None = None
    recorded: list[Received] = field(default_factory=list)

    @classmethod
    async def enroll(cls, site: Site, env: str, *controller_flags: str) -> Rotation:
        await site.start_controller(*controller_flags)
        bootstrap = site.tmp / f"{env}.toml"
        created = await site.cli(*CREATE, env, "--output", str(bootstrap))
        assert created.code == 0, str(created)
        return cls(site, env, bootstrap, site.recorder())

    @property
    def state_dir(self) -> Path:
        return self.site.tmp / "agent-state" / "edgeplane-agent" / self.env

    @property
    def old(self) -> Identity:
        return Identity(self.env, read_toml(self.bootstrap)["password"], client_id=self.env)

    def stored(self, which: str) -> dict[str, Any] | None:
        """The agent's ``working`` or ``pending`` login in its credential store."""
        path = self.state_dir / CREDENTIALS_FILE
        if not path.exists():
            return None
        login: dict[str, Any] | None = json.loads(path.read_text())[which]
        return login

    async def start_agent(self) -> None:
        self.agent = await self.site.start_agent(self.bootstrap)

    async def stop_agent(self) -> None:
        assert self.agent is not None
        assert await self.agent.terminate(30) == 0
        self.agent = None

    async def until(self, predicate: Callable[[Received], bool], timeout: float = WAIT) -> Received:
        """Record messages up to the first that ``predicate`` accepts."""
        seen = await asyncio.to_thread(self.recorder.wait_for, predicate, timeout)
        self.recorded += seen
        return seen[-1]

    async def online_on(self, generation: int) -> None:
        """Wait for the agent's online with ``generation`` (a box key: a new connection)."""
        await self.until(lambda m: _is_status(m, self.site.root.status(self.env), generation))

    async def acked_credentials(self) -> None:
        events = self.site.root.events(self.env)
        await self.until(lambda m: m.topic == events and _is_credentials_ack(m))

    async def rotate(self, *flags: str) -> str:
        run = await self.site.cli("env", "rotate-credentials", self.env, *flags)
        assert run.code == 0, str(run)
        return run.stdout

    async def show(self) -> dict[str, Any]:
        run = await self.site.cli("env", "show", self.env, "--json")
        assert run.code == 0, str(run)
        shown: dict[str, Any] = json.loads(run.stdout)
        return shown

    async def rotated_to(self, generation: int) -> dict[str, Any]:
        """``env show`` once the rotation is over (the old client removed)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT
        while True:
            shown = await self.show()
            done = shown["credential_generation"] == generation and not shown["rotation_state"]
            if done or loop.time() > give_up:
                return shown
            await asyncio.sleep(0.5)  # polling the controller's answer: each ask is a process

    async def ends_on(self, generation: int) -> None:
        """What every rotation ends with."""
        shown = await self.rotated_to(generation)
        assert (shown["credential_generation"], shown["rotation_state"]) == (generation, "")
        assert shown["status"] == "online"
        text = await self.site.cli("env", "show", self.env)
        assert f"credential: generation {generation}," in text.stdout, str(text)
        working = self.stored("working")
        assert working is not None
        assert working["generation"] == generation
        new = Identity(working["username"], working["password"], client_id=self.env)
        assert new.username == f"{self.env}.{generation}"
        # The old password is refused; the new one is the agent's (it proves it online).
        assert connack(self.site, self.old) in (BAD_CREDENTIALS, NOT_AUTHORIZED)
        await self.stop_agent()
        assert connack(self.site, new) == 0
        self.recorder.close()
        self.recorded += list(self.recorder.messages.queue)
        assert any(m.topic.startswith("$CONTROL") for m in self.recorded)
        assert all(new.password.encode() not in m.payload for m in self.recorded)
        for proc in self.site.procs:
            assert new.password not in proc.output()


def _is_status(message: Received, topic: str, generation: int) -> bool:
    if message.topic != topic or not message.payload:
        return False
    status = json.loads(message.payload)
    online = status.get("status") == "online" and bool(status.get("box_key"))
    return online and status.get("cred_gen", 0) == generation


def _is_credentials_ack(message: Received) -> bool:
    event: dict[str, Any] = json.loads(message.payload)
    return bool(event.get("type") == "ack" and event.get("op") == "credentials")


async def test_rotation_with_the_agent_online(site: Site) -> None:
    rotation = await Rotation.enroll(site, "edge-on")
    await rotation.start_agent()
    await rotation.online_on(0)
    before = await rotation.show()
    assert (before["credential_generation"], before["rotation_state"]) == (0, "")

    out = await rotation.rotate("--wait")
    assert out.splitlines() == [
        "edge-on: new credential generation 1 (sent)",
        "edge-on: on credential generation 1; the old credential is removed",
    ]
    await rotation.online_on(1)
    await rotation.ends_on(1)


async def test_an_agent_offline_during_the_rotation_gets_it_when_it_returns(
    site: Site,
) -> None:
    rotation = await Rotation.enroll(site, "edge-off")
    await rotation.start_agent()
    await rotation.online_on(0)
    await rotation.stop_agent()

    out = await rotation.rotate()
    assert out == "edge-off: new credential generation 1 (created)\n"
    shown = await rotation.show()
    assert (shown["credential_generation"], shown["rotation_state"]) == (0, "created")
    assert connack(site, rotation.old) == 0  # nothing taken away before the agent has it

    await rotation.start_agent()
    await rotation.online_on(1)
    await rotation.ends_on(1)


async def test_a_controller_killed_once_the_new_client_exists_resumes(site: Site) -> None:
    rotation = await Rotation.enroll(site, "edge-kc")
    await rotation.start_agent()
    await rotation.online_on(0)
    await rotation.stop_agent()
    await rotation.rotate()  # the new client exists; the agent has nothing yet
    await site.kill_controller()

    await rotation.start_agent()
    await rotation.online_on(0)  # still on the old credential: nobody sent the new one
    await site.start_controller()
    await rotation.online_on(1)
    await rotation.ends_on(1)


async def test_a_controller_killed_after_sending_resumes(site: Site) -> None:
    rotation = await Rotation.enroll(site, "edge-ks")
    await rotation.start_agent()
    await rotation.online_on(0)
    assert rotation.agent is not None
    rotation.agent.freeze()  # the command goes out, and waits at the broker for the agent
    out = await rotation.rotate()
    assert out == "edge-ks: new credential generation 1 (sent)\n"
    await site.kill_controller()

    rotation.agent.thaw()
    await rotation.online_on(1)  # on the new credential; the old client is still there
    await site.start_controller()
    await rotation.ends_on(1)


async def test_an_agent_killed_once_it_stored_the_new_credential_logs_in_with_it(
    site: Site,
) -> None:
    rotation = await Rotation.enroll(site, "edge-ka")
    await rotation.start_agent()
    await rotation.online_on(0)
    await rotation.rotate()
    await rotation.acked_credentials()  # stored before it is acknowledged
    assert rotation.agent is not None
    await rotation.agent.kill()
    rotation.agent = None

    await rotation.start_agent()
    await rotation.online_on(1)
    await rotation.ends_on(1)


async def test_credentials_older_than_rotate_after_are_rotated_on_their_own(
    site: Site,
) -> None:
    rotation = await Rotation.enroll(site, "edge-age", "--rotate-after", "4")
    await rotation.start_agent()
    await rotation.online_on(0)
    await rotation.online_on(1)  # nobody asked
    shown = await rotation.rotated_to(1)
    assert shown["credential_generation"] >= 1
    assert connack(site, rotation.old) in (BAD_CREDENTIALS, NOT_AUTHORIZED)


async def test_rotation_on_a_broker_without_identities_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        assert (await system.cli(*CREATE, "edge-plain")).code == 0
        refused = await system.cli("env", "rotate-credentials", "edge-plain", "--wait")
        assert refused.code == 1
        assert refused.stderr.strip() == (
            "edgeplane: this broker has no identities: it was not made by edgeplane broker "
            "init (the controller logs in without a user name)"
        )
        shown = json.loads((await system.cli("env", "show", "edge-plain", "--json")).stdout)
        assert shown["credential_generation"] is None


async def test_an_unknown_environment_or_one_never_seen_is_refused(site: Site) -> None:
    await Rotation.enroll(site, "edge-new")
    unknown = await site.cli("env", "rotate-credentials", "edge-nope")
    assert unknown.code == 1
    assert "edge-nope" in unknown.stderr
    unseen = await site.cli("env", "rotate-credentials", "edge-new")
    assert unseen.code == 1
    assert "has not reported a box key yet" in unseen.stderr, str(unseen)


def _is_conflict_raised(message: Received, topic: str) -> bool:
    if message.topic != topic or not message.payload:
        return False
    alert = json.loads(message.payload)
    return bool(alert.get("kind") == "identity-conflict" and alert.get("state") == "raised")


async def test_a_stolen_login_with_its_own_box_key_gets_nothing_and_the_agent_keeps_working(
    site: Site,
) -> None:
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    rotation = await Rotation.enroll(site, "edge-pin")
    env, root = rotation.env, site.root
    await rotation.start_agent()
    await rotation.online_on(0)  # its box key is pinned
    await rotation.stop_agent()

    # With the agent away, someone holding its bootstrap login says it is the agent.
    thief_key = PrivateKey.generate()
    with site.broker.client(rotation.old) as thief:
        assert thief.subscribe(root.cmd(env)) == [1]
        online = {
            "status": "online",
            "env": env,
            "bdseq": 9999,
            "seq": 0,
            "interval": 30,
            "boot": "thief",
            "box_key": base64.b64encode(bytes(thief_key.public_key)).decode(),
        }
        assert thief.publish(root.status(env), json.dumps(online), retain=True) == 0
        await rotation.until(lambda m: _is_conflict_raised(m, root.alerts(env)))
        shown = await rotation.show()
        assert shown["box_key_mismatch"] is True
        text = await site.cli("env", "show", env)
        assert "--repin" in text.stdout, str(text)

        out = await rotation.rotate()
        assert out == "edge-pin: new credential generation 1 (created)\n"  # not sent to it
        got = list(thief.messages.queue)
    for command in got:  # nothing it received opens with its key
        sealed = json.loads(command.payload).get("sealed")
        if sealed:
            with pytest.raises(CryptoError):
                SealedBox(thief_key).decrypt(base64.b64decode(sealed))

    # The agent comes back, gets the credential sealed to its pinned key, and only then
    # is the stolen login removed.
    await rotation.start_agent()
    await rotation.online_on(1)
    await rotation.ends_on(1)


async def _logged(proc: Proc, text: str, timeout: float = WAIT) -> str:
    """The first line of ``proc``'s log with ``text``, once it is there."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while True:
        lines = [line for line in proc.output().splitlines() if text in line]
        if lines:
            return lines[0]
        assert loop.time() < give_up, f"{text!r} not logged within {timeout} s"
        await asyncio.sleep(0.2)  # polling a log file for a line it will have


async def test_a_stolen_login_claiming_the_new_generation_does_not_end_the_rotation(
    site: Site,
) -> None:
    rotation = await Rotation.enroll(site, "edge-claim")
    env, root = rotation.env, site.root
    await rotation.start_agent()
    await rotation.online_on(0)  # its box key is pinned
    await rotation.stop_agent()
    out = await rotation.rotate()
    assert out == "edge-claim: new credential generation 1 (created)\n"

    # With the agent away, someone holding its old login claims it is on generation 1,
    # with the agent's own (public) box key, but without the proof that came sealed with
    # generation 1.
    box_key = json.loads((rotation.state_dir / BOX_KEY_FILE).read_text())["public"]
    with site.broker.client(rotation.old) as thief:
        assert thief.subscribe(root.cmd(env)) == [1]
        online = {
            "status": "online",
            "env": env,
            "bdseq": 9999,
            "seq": 0,
            "interval": 30,
            "boot": "thief",
            "box_key": box_key,
            "cred_gen": 1,
        }
        assert thief.publish(root.status(env), json.dumps(online), retain=True) == 0
        # The controller took the online (counted, logged, and the pending command, sealed
        # to the agent's key, sent on that connection) and did not end the rotation on it.
        assert site.controller is not None
        logged = await _logged(site.controller, '"reason": "bad-credential-proof"')
        assert "claims credential generation 1 with no proof" in logged
        await _logged(site.controller, '"event": "credentials sent"')
        shown = await rotation.show()
        assert (shown["credential_generation"], shown["rotation_state"]) == (0, "sent")
    assert connack(site, rotation.old) == 0  # the old credential is still there

    # The real agent returns on the old credential, gets generation 1 and ends the rotation.
    await rotation.start_agent()
    await rotation.online_on(1)
    await rotation.ends_on(1)
