"""Signed commands end to end: a real agent process on the session's mosquitto, commands
published by hand with a raw MQTT client (as anyone who can reach the broker could), and
what a user sees: the events, the agent's log, whether a step ran. And the controller's
key file: made private, refused when it is not, its public key on the controller's status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.codec import encode
from edgeplane.shared.command_signature import key_id, parse_public_key
from edgeplane.shared.messages import Deploy, Ping
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import start_agent, wait_online
from tests.support.command_key import OTHER_SIGNER, signed
from tests.support.execution import py, workflow
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc, start_proc


def touching(path: Path) -> Deploy:
    """A deployment whose one step creates ``path``: whether it ran is visible."""
    step = py("touch", f"open({str(path)!r}, 'a').write('ran\\n')")
    return Deploy(id="c-0000000000", dep="d-0000000000", workflow=workflow(step))


async def rejection(probe: Probe, root: TopicRoot, env: str, after: int, slug: str) -> Any:
    return await probe.wait_for(
        lambda m: (
            m.topic == root.events(env)
            and json.loads(m.payload).get("type") == "rejected"
            and json.loads(m.payload)["reason"].startswith(slug + ": ")
        ),
        after=after,
        what=f"a {slug} rejection",
    )


async def pong(probe: Probe, root: TopicRoot, env: str, cmd_id: str, after: int = 0) -> Any:
    await probe.publish(root.cmd(env), signed(Ping(id=cmd_id), env))
    return await probe.wait_json(root.events(env), after=after, type="pong", cmd=cmd_id)


async def test_the_agent_runs_only_what_the_controller_signed_for_it(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-signed"
    ran = tmp_path / "ran.txt"
    deploy = touching(ran)
    forged = {
        "unsigned": encode(Deploy(id="c-1a1a1a1a1a", dep="d-1", workflow=deploy.workflow)),
        "unknown-key": signed(deploy, env, signer=OTHER_SIGNER),
        "bad-signature": signed(deploy, env).replace(b'"signed":"', b'"signed":"AAAA', 1),
        "wrong-env": signed(deploy, "dev-lab-other"),
        "no-expiry": signed(
            encode(Deploy(id="c-2b", dep="d-2", workflow=deploy.workflow, env=env))
        ),
    }
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        await wait_online(probe, root.status(env))
        for slug, payload in forged.items():
            mark = probe.mark()
            await probe.publish(root.cmd(env), payload)
            message = await rejection(probe, root, env, mark, slug)
            event = json.loads(message.payload)
            assert "cmd" not in event, f"{slug}: names no command"
            assert "dep" not in event, f"{slug}: names no deployment"
        mark = probe.mark()
        late = signed(
            Deploy(id="c-3c", dep="d-3", workflow=deploy.workflow, expires=time.time() - 5), env
        )
        await probe.publish(root.cmd(env), late)
        await probe.wait_json(root.events(env), after=mark, type="expired", cmd="c-3c")
        assert not ran.exists(), "nothing forged, foreign or late ran"

        real = signed(deploy, env)
        await probe.publish(root.cmd(env), real)
        await probe.wait_json(root.events(env), type="succeeded", cmd=deploy.id)
        mark = probe.mark()
        await probe.publish(root.cmd(env), real)  # replayed by someone who recorded it
        await rejection(probe, root, env, mark, "replayed")
        await pong(probe, root, env, "c-4d", mark)
    assert ran.read_text() == "ran\n", "the signed deployment ran, once"
    assert "command rejected" in agent.output()


async def test_a_replay_is_refused_also_after_the_agent_restarts(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-replay"
    ran = tmp_path / "ran.txt"
    real = signed(touching(ran), env)
    state = tmp_path / "state"
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state)
        await wait_online(probe, root.status(env))
        await probe.publish(root.cmd(env), real)
        await probe.wait_json(root.events(env), type="succeeded", cmd="c-0000000000")
        assert await agent.terminate() == 0

        mark = probe.mark()
        await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state, name="again")
        await wait_online(probe, root.status(env), after=mark)
        await probe.publish(root.cmd(env), real)
        await rejection(probe, root, env, mark, "replayed")
    assert ran.read_text() == "ran\n"


async def test_an_agent_without_a_command_key_is_online_refuses_commands_and_says_how_to_enrol(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-keyless"
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env, command_key=None)
        await wait_online(probe, root.status(env))
        await probe.publish(root.cmd(env), signed(Ping(id="c-5e"), env))
        message = await rejection(probe, root, env, 0, "no-command-key")
        await wait_online(probe, root.status(env), after=probe.mark())  # presence goes on
    assert "command_key = " in json.loads(message.payload)["reason"]
    lines = [json.loads(line) for line in agent.output().splitlines() if line.startswith("{")]
    hints = [line for line in lines if "command_key = " in json.dumps(line)]
    assert hints, "the log says how to enrol the agent"


async def test_the_controller_makes_a_private_key_and_publishes_only_its_public_half(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    db = tmp_path / "fresh" / "controller.db"
    key_file = db.parent / "command-key"
    args = ["controller", "run", "--broker", broker.url, "--db", str(db)]
    args += ["--topic-root", str(root), "--log-format", "json"]
    async with open_probe(broker.url, root.controller_status()) as probe:
        proc = await start_proc("edgeplane.controller", args, tmp_path / "controller.log")
        procs.append(proc)
        birth = await probe.wait_json(root.controller_status(), status="online", timeout=20)
        assert await proc.terminate() == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    seed = key_file.read_text().strip()
    public = (db.parent / "command-key.pub").read_text().strip()
    assert birth["command_key"] == public
    assert birth["command_key_id"] == key_id(parse_public_key(public))
    assert seed not in proc.output(), "the private key is in no log line"
    assert public in proc.output(), "the start-up log names the public key"


async def test_a_key_file_others_can_read_is_refused_naming_the_file_and_its_mode(
    tmp_path: Path, procs: list[Proc]
) -> None:
    key_file = tmp_path / "command-key"
    key_file.write_text("not even read\n")
    key_file.chmod(0o644)
    args = ["controller", "run", "--broker", "mqtt://127.0.0.1:9", "--db", ":memory:"]
    args += ["--command-key-file", str(key_file)]
    proc = await start_proc("edgeplane.controller", args, tmp_path / "controller.log")
    procs.append(proc)
    assert await proc.wait() != 0
    line = proc.output().strip().splitlines()[-1]
    assert str(key_file) in line
    assert "0644" in line
    assert "chmod 600" in line
