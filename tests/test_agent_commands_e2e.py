"""The agent's commands end to end: a real agent process, a real mosquitto, commands
published as the controller would, and what a user sees (events, statuses, files, exit
statuses)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.messages import Deploy
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import start_agent, wait_online
from tests.support.command_key import signed
from tests.support.execution import py, workflow
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc


def append_step(path: Path, name: str = "append") -> Any:
    """A step that appends one line to ``path``: how many times it ran is visible."""
    return py(name, f"open({str(path)!r}, 'a').write('ran\\n')")


def event_types(probe: Probe, topic: str, cmd: str) -> list[str]:
    return [
        data["type"]
        for data in (json.loads(m.payload) for m in probe.on(topic))
        if data.get("cmd") == cmd
    ]


async def ping(probe: Probe, root: TopicRoot, env: str, cmd_id: str) -> dict[str, Any]:
    """A ping and its pong: once it is answered, every command sent before it was taken."""
    mark = probe.mark()
    await probe.publish(root.cmd(env), signed({"type": "ping", "id": cmd_id}, env))
    return await probe.wait_json(root.events(env), after=mark, type="pong", cmd=cmd_id)


async def test_a_deploy_delivered_twice_runs_once_also_after_an_agent_restart(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-dedupe"
    ran = tmp_path / "ran.txt"
    command = signed(
        Deploy(id="cmd-once", dep="dep-once", workflow=workflow(append_step(ran))), env
    )
    state = tmp_path / "state"
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state)
        await wait_online(probe, root.status(env))
        await probe.publish(root.cmd(env), command)
        await probe.publish(root.cmd(env), command)  # as a QoS 1 redelivery would
        await probe.wait_json(root.events(env), type="succeeded", cmd="cmd-once")
        await ping(probe, root, env, "after-twice")
        assert await agent.terminate() == 0

        mark = probe.mark()
        await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state, name="again")
        await wait_online(probe, root.status(env), after=mark)
        await probe.publish(root.cmd(env), command)  # as the controller resending it would
        await ping(probe, root, env, "after-restart")
    assert ran.read_text() == "ran\n"
    assert event_types(probe, root.events(env), "cmd-once").count("accepted") == 1


async def test_an_expired_command_is_reported_and_not_run(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-expired"
    ran = tmp_path / "ran.txt"
    late = Deploy(
        id="cmd-late",
        dep="dep-late",
        workflow=workflow(append_step(ran)),
        expires=time.time() - 30,
    )
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env)
        await wait_online(probe, root.status(env))
        await probe.publish(root.cmd(env), signed(late, env))
        expired = await probe.wait_json(root.events(env), type="expired", cmd="cmd-late")
        await ping(probe, root, env, "after-late")
    assert expired["dep"] == "dep-late"
    assert expired["reason"].startswith("arrived 3"), expired["reason"]
    assert expired["reason"].endswith(" s after it expired")
    assert event_types(probe, root.events(env), "cmd-late") == ["expired"]
    assert not ran.exists()


async def test_an_update_is_acknowledged_applied_at_once_and_kept_across_a_restart(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-update"
    status, events = root.status(env), root.events(env)
    state = tmp_path / "state"
    async with open_probe(broker.url, status, events) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env, state_dir=state)
        await wait_online(probe, status, interval=0.5)
        bad = {"type": "update", "id": "u-bad", "config": {"colour": "red", "log_level": "x"}}
        await probe.publish(root.cmd(env), signed(bad, env))
        refused = await probe.wait_json(events, type="ack", cmd="u-bad")
        mark = probe.mark()
        good = {
            "type": "update",
            "id": "u-good",
            "interval": 1.5,
            "config": {"log_level": "debug", "endpoints.api": "http://10.0.0.7:8080"},
        }
        await probe.publish(root.cmd(env), signed(good, env))
        applied = await probe.wait_json(events, type="ack", cmd="u-good")
        await wait_online(probe, status, after=mark, interval=1.5, timeout=3)
        assert await agent.terminate() == 0

        mark = probe.mark()
        again = await start_agent(
            procs, tmp_path, broker.url, root, env, state_dir=state, name="again"
        )
        first = await wait_online(probe, status, after=mark, seq=0)
        assert await again.terminate() == 0
    assert (refused["op"], refused["ok"]) == ("update", False)
    assert "unknown config keys: colour" in refused["detail"]
    assert (applied["op"], applied["ok"]) == ("update", True)
    assert '"level": "debug"' in agent.output(), "the new log level is in force at once"
    assert first["interval"] == 1.5, "the controller's interval survives a restart"
    assert '"level": "debug"' in again.output(), "and so does its log level"
    assert "10.0.0.7" not in again.output()


async def test_inventory_goes_in_the_first_online_and_again_only_when_it_changes(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-inventory"
    status = root.status(env)
    models = tmp_path / "models"
    (models / "defect-detector" / "2.1.0").mkdir(parents=True)
    async with open_probe(broker.url, status) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env, "--models-dir", str(models))
        first = await wait_online(probe, status, seq=0)
        plain = await wait_online(probe, status, seq=2)
        mark = probe.mark()
        (models / "defect-detector" / "2.2.0").mkdir()
        changed = await probe.wait_for(
            lambda m: m.topic == status and b'"models"' in m.payload, after=mark, timeout=5
        )
        after = await wait_online(probe, status, seq=json.loads(changed.payload)["seq"] + 1)
    assert first["models"] == {"defect-detector": ["2.1.0"]}
    assert first["platform"]["os"] == platform.system().lower()
    assert first["platform"]["py"] == ".".join(map(str, sys.version_info[:3]))
    assert "models" not in plain
    assert "platform" not in plain
    assert json.loads(changed.payload)["models"] == {"defect-detector": ["2.1.0", "2.2.0"]}
    assert "platform" not in json.loads(changed.payload)
    assert "models" not in after


@pytest.mark.slow
async def test_retire_stops_workflows_clears_the_status_wipes_secrets_and_refuses_to_run_again(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-retire"
    status, events = root.status(env), root.events(env)
    state = tmp_path / "state"
    secrets = tmp_path / "secrets.env"
    secrets.write_text("API_TOKEN=tok-1234567\n")
    secrets.chmod(0o600)
    service = workflow(py("serve", "import time; time.sleep(120)"), name="svc", kind="service")
    async with open_probe(broker.url, status, events) as probe:
        agent = await start_agent(
            procs, tmp_path, broker.url, root, env, "--secrets-file", str(secrets), state_dir=state
        )
        online = await wait_online(probe, status)
        await probe.publish(
            root.cmd(env), signed(Deploy(id="c-svc", dep="d-svc", workflow=service), env)
        )
        await probe.wait_json(events, type="running", cmd="c-svc", timeout=20)
        mark = probe.mark()
        await probe.publish(root.cmd(env), signed({"type": "retire", "id": "c-bye"}, env))
        stopped = await probe.wait_json(events, after=mark, type="stopped", dep="d-svc")
        ack = await probe.wait_json(events, after=mark, type="ack", cmd="c-bye")
        offline = await probe.wait_json(status, after=mark, status="offline")
        await probe.wait_for(lambda m: m.topic == status and m.payload == b"", after=mark)
        assert await agent.wait(15) == 0
    assert stopped["reason"] == "retired"
    assert (ack["op"], ack["ok"]) == ("retire", True)
    assert offline == {
        "status": "offline",
        "env": env,
        "bdseq": online["bdseq"],
        "reason": "retired",
    }
    async with open_probe(broker.url, status) as late:
        await ping_broker(late)
        assert late.on(status) == [], "nothing retained: cleared, and no will followed"
    assert not secrets.exists(), "the secrets file is wiped"
    assert "tok-1234567" not in agent.output()
    # the marker, and the agent's recent log (masked) for whoever looks into it later
    assert sorted(p.name for p in state.iterdir()) == ["agent.log", "retired"]
    assert "tok-1234567" not in (state / "agent.log").read_text()

    result = run_agent(env, broker.url, root, state)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"edge-agent: environment {env} was retired on "
        f"{json.loads((state / 'retired').read_text())['retired_at']}; "
        f"remove {state / 'retired'} to reuse this state dir"
    ]


@pytest.mark.slow
async def test_restart_restarts_the_named_service_and_is_acknowledged(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-restart-cmd"
    events = root.events(env)
    starts = tmp_path / "starts.txt"
    serve = py("serve", f"open({str(starts)!r}, 'a').write('up\\n')\nimport time; time.sleep(120)")
    service = workflow(serve, name="svc", kind="service")
    async with open_probe(broker.url, root.status(env), events) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env)
        await wait_online(probe, root.status(env))
        await probe.publish(
            root.cmd(env), signed(Deploy(id="c-svc", dep="d-svc", workflow=service), env)
        )
        await probe.wait_json(events, type="running", cmd="c-svc", timeout=20)
        for cmd_id, name in (("r-other", "other"), ("r-svc", "svc")):
            await probe.publish(
                root.cmd(env), signed({"type": "restart", "id": cmd_id, "workflow": name}, env)
            )
        other = await probe.wait_json(events, type="ack", cmd="r-other")
        restarted = await probe.wait_json(events, type="ack", cmd="r-svc", timeout=20)
    assert (other["op"], other["ok"]) == ("restart", False)
    assert "other" in other["detail"]
    assert (restarted["op"], restarted["ok"]) == ("restart", True)
    assert starts.read_text() == "up\nup\n", "the service process was started again"


async def ping_broker(probe: Probe) -> None:
    """A round trip through the broker: retained messages for the probe's subscriptions
    arrive before the answer to a later publish."""
    topic = f"test/roundtrip/{os.getpid()}/{time.monotonic_ns()}"
    await probe.subscribe(topic)
    await probe.publish(topic, b"x")
    await probe.wait_for(lambda m: m.topic == topic, what="the round trip")


def run_agent(
    env: str, broker: str, root: TopicRoot, state: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "edgeplane.edge_agent",
                "run",
                "--env-id",
                env,
                "--broker",
                broker,
            ),
            *("--state-dir", str(state), "--topic-root", root.value, *extra),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secrets_file_readable_by_others_is_refused_naming_file_and_mode(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, mode: int
) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("API_TOKEN=tok-1234567\n")
    secrets.chmod(mode)
    result = run_agent("dev-lab-secrets", broker.url, root, tmp_path / "state",
                       "--secrets-file", str(secrets))  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("edge-agent: ")
    assert str(secrets) in line
    assert f"{mode:04o}" in line
    assert "tok-1234567" not in result.stderr
    assert not (tmp_path / "state").exists(), "refused before anything was written"
