"""Rotating the controller's command key end to end: a real controller and real agents on
the session's mosquitto, the operator command ``controller rotate-command-key``, and what a
user sees (the command's output, events, the controller's retained status, files)."""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path
from typing import Any

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import TEST_SIGNER, signed
from tests.support.procs import Proc
from tests.support.system import System, open_system

HELLO = {
    "name": "hello",
    "version": "1.0.0",
    "steps": [{"name": "hi", "run": [sys.executable, "-c", "print('hi')"], "timeout": 30}],
}


def key_file(system: System) -> Path:
    return system.db.parent / "command-key"


def key_id_in(path: Path) -> str:
    return CommandSigner(base64.b64decode(path.read_text().strip())).key_id


async def rotation(system: System, *flags: str) -> dict[str, Any]:
    shown: dict[str, Any] = await system.cli_json("controller", "rotate-command-key", *flags)
    return shown


async def wait_rotation(system: System, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal found
        found = await rotation(system, "--status")
        return bool(found["state"] == state)

    for _ in range(100):
        if await reached():
            return found
        await system.barrier()
    raise AssertionError(f"the rotation never reached {state}: {found}")


async def deploys(system: System, env: str) -> None:
    result = await system.deploy(system.workflow("hello", HELLO), env, "--wait")
    assert result.code == 0, str(result)


async def test_a_rotation_with_the_agent_online_ends_with_only_the_new_key(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-rot")
        mark = system.probe.mark()
        started = await rotation(system)
        assert started["key_id"] == TEST_SIGNER.key_id
        new_id = started["next_key_id"]
        assert new_id not in ("", TEST_SIGNER.key_id)
        assert started["state"] in ("rolling", "finished", "done"), started
        trusted = await system.wait_event("edge-rot", "ack", after=mark, op="trust", ok=True)
        assert new_id in trusted["detail"]
        await system.wait_event("edge-rot", "ack", after=mark, op="distrust", ok=True)
        done = await wait_rotation(system, "done")
        assert (done["done"], done["key_id"]) == (["edge-rot"], new_id), done
        # the key file holds the new key now; the old one is gone
        assert key_id_in(key_file(system)) == new_id
        assert not key_file(system).with_name("command-key.next").exists()
        status = await system.probe.wait_json(
            root.controller_status(), after=mark, command_key_id=new_id, status="online"
        )
        assert status["command_key_ids"] == [new_id]
        # the agent keeps what it trusts in its state dir, private
        kept = agent.files.state_dir / "trusted-keys.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert json.loads(kept.read_text())["dropped"] == [TEST_SIGNER.key_id]
        await deploys(system, "edge-rot")
        # a command signed with the old key is refused now
        mark = system.probe.mark()
        await system.probe.publish(
            root.cmd("edge-rot"), signed({"type": "ping", "id": "old"}, "edge-rot")
        )
        refused = await system.wait_event("edge-rot", "rejected", after=mark)
        assert refused["reason"].startswith("unknown-key"), refused


async def test_an_agent_offline_during_a_rotation_and_a_killed_controller_lose_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-up")
        await system.create_env("edge-away")
        away = await system.start_agent("edge-away")
        await away.proc.terminate()
        await system.probe.wait_json(root.view("edge-away"), status="offline")
        mark = system.probe.mark()
        started = await rotation(system)
        new_id = started["next_key_id"]
        await system.wait_event("edge-up", "ack", after=mark, op="trust", ok=True)
        rolling = await wait_rotation(system, "rolling")
        assert "edge-away" in rolling["pending"], rolling
        next_file = key_file(system).with_name("command-key.next")
        assert stat.S_IMODE(next_file.stat().st_mode) == 0o600
        assert key_id_in(next_file) == new_id
        # the controller dies mid-rotation, and resumes where it was
        assert system.controller is not None
        await system.controller.kill()
        await system.start_controller()
        resumed = await rotation(system, "--status")
        assert (resumed["state"], resumed["next_key_id"]) == ("rolling", new_id), resumed
        # the edge-up agent took the new key: its commands are signed with it
        await deploys(system, "edge-up")
        # the agent that was away gets the key when it returns, then runs new-key commands
        mark = system.probe.mark()
        await system.start_agent("edge-away", wait="status")
        await system.wait_event("edge-away", "ack", after=mark, op="trust", ok=True)
        await wait_rotation(system, "done")
        assert key_id_in(key_file(system)) == new_id
        await deploys(system, "edge-away")


async def test_finish_drops_the_old_key_and_names_the_agents_to_enrol_again(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-gone")
        gone = await system.start_agent("edge-gone")
        await gone.proc.terminate()
        await system.probe.wait_json(root.view("edge-gone"), status="offline")
        started = await rotation(system)
        assert started["pending"] == ["edge-gone"], started
        result = await system.cli("controller", "rotate-command-key", "--finish")
        assert result.code == 0, str(result)
        assert "enrol again: edge-gone" in result.stdout, str(result)
        assert key_id_in(key_file(system)) == started["next_key_id"]
