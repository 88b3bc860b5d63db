"""``edgeplane env diagnose ID`` end to end: a real controller and agent processes, the CLI
as a subprocess, a real broker. The controller pings the agent (signed), times its pong and
judges the facts it holds, in the documented troubleshooting order."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import OTHER_SIGNER
from tests.support.pids import pid_dir, pids
from tests.support.procs import Proc
from tests.support.system import System, open_system, wait_until, write_script

PY = sys.executable
LIVES = """\
import os, pathlib, sys, time
with (pathlib.Path(sys.argv[1]) / "pids").open("a") as pids:
    pids.write(f"{os.getpid()}\\n")
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.1)
"""


def states(report: dict[str, Any]) -> dict[str, str]:
    return {f"{c['area']}/{c['name']}": c["state"] for c in report["checks"]}


def by_name(report: dict[str, Any], name: str) -> dict[str, Any]:
    checks: list[dict[str, Any]] = report["checks"]
    (found,) = [c for c in checks if f"{c['area']}/{c['name']}" == name]
    return found


async def diagnose_json(system: System, env: str) -> tuple[int, dict[str, Any]]:
    result = await system.cli("env", "diagnose", env, "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return result.code, report


@pytest.mark.slow
async def test_a_healthy_environment_passes_and_shows_the_round_trip(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-ok", interval=1.0, models={"detector": ["2.1.0"]})
        # cpu and mem are this machine's real load (shared with other tests): a busy host
        # may warn or fail them; every other check must pass
        code, report = await diagnose_json(system, "edge-ok")
        found = states(report)
        loaded = {n for n in found if n.startswith("resources/") or n == "network/link"}
        for name, state in found.items():
            assert state in (("pass", "warn", "fail") if name in loaded else ("pass",)), report
        busy = any(found[name] == "fail" for name in loaded)
        assert code == (1 if busy else 0)
        assert list(found)[:3] == ["process/heartbeat", "process/workflows", "network/round-trip"]
        assert by_name(report, "network/round-trip")["ms"] > 0
        assert by_name(report, "credentials/command-key")["reason"].startswith(
            "the agent accepted the signed ping"
        )

        result = await system.cli("env", "diagnose", "edge-ok")
        assert result.code in (0, 1), str(result)
        lines = result.stdout.splitlines()
        assert lines[0].startswith("PASS  1. process/heartbeat: online, last heartbeat"), lines
        trip = next(line for line in lines if "network/round-trip" in line)
        assert trip.startswith("PASS  2. network/round-trip: ping answered (pong)")
        assert trip.endswith(" ms)")
        if result.code == 0:
            assert "edge-ok: no check failed" in lines[-1]
        pong = await system.wait_event("edge-ok", "pong")
        assert pong.get("processes", []) == []  # its executor was never loaded


@pytest.mark.slow
async def test_a_killed_agent_fails_the_process_check_and_is_named_the_cause(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-dead", interval=1.0)
        after = system.probe.mark()
        await agent.proc.kill()
        await system.probe.wait_json(root.view("edge-dead"), after=after, status="offline")
        mark = system.probe.mark()
        result = await system.cli("env", "diagnose", "edge-dead")
        assert result.code == 1, str(result)
        assert "FAIL  1. process/heartbeat: offline (connection-lost)" in result.stdout
        assert "SKIP  2. network/round-trip: skipped: process/heartbeat failed" in result.stdout
        assert "likely cause: process/heartbeat: offline (connection-lost)" in result.stdout
        assert "hint: is the agent running?" in result.stdout
        await system.barrier()
        sent = [m for m in system.messages[mark:] if m.topic == root.cmd("edge-dead")]
        assert sent == []  # no ping to an offline agent


@pytest.mark.slow
async def test_a_full_disk_and_a_missing_model_fail_while_the_agent_answers(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    env = "edge-full"
    with pid_dir(tmp_path) as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            await system.online(env, interval=30.0, models={"detector": ["2.1.0"]})
            script = write_script(system.base / "lives.py", LIVES)
            service = system.workflow("camera", {
                "name": "camera", "version": "1.0.0", "kind": "service",
                "requires": {"models": [{"name": "detector", "version": ">=2"}]},
                "steps": [{"name": "serve", "run": [PY, str(script), str(out)]}],
            })  # fmt: skip
            deployed = await system.deploy(service, env, "--wait")
            assert deployed.code == 0, str(deployed)
            await wait_until(lambda: len(pids(out)) == 1, "the service started")

            # a scripted heartbeat of the agent's connection: disk 97 %, no models any more
            status = json.loads(system.probe.on(root.status(env))[-1].payload)
            scripted = {**status, "seq": status["seq"] + 1, "models": {}}
            scripted.update(cpu=5.0, mem=5.0, disk=97.0)
            await system.probe.publish(root.status(env), json.dumps(scripted), retain=True)
            await inventory_taken(system, env)

            code, report = await diagnose_json(system, env)
            assert code == 1, report
            found = states(report)
            assert found["process/heartbeat"] == "pass"
            assert found["network/round-trip"] == "pass"
            assert found["resources/disk"] == "fail"
            assert by_name(report, "resources/disk")["reason"] == "97.0 % (threshold 90 %)"
            assert found["compatibility/models"] == "fail"
            assert (
                "model detector >=2 is not on edge-full"
                in by_name(report, "compatibility/models")["reason"]
            )
            workflows = by_name(report, "process/workflows")
            assert workflows["reason"] == "reported: camera service running"
            assert report["cause"] == "resources/disk"

            pong = await system.wait_event(env, "pong")
            (process,) = pong["processes"]
            assert process["workflow"] == "camera"
            assert process.get("kind") == "service"


async def inventory_taken(system: System, env: str, timeout: float = 15.0) -> None:
    """Ask the controller (``env show``) until the inventory it holds is empty."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        shown = await system.cli_json("env", "show", env)
        if not shown.get("models"):
            return
        await asyncio.sleep(0.2)  # polling a query: the controller has no push for it
    raise AssertionError(f"the controller kept the inventory of {env}")


@pytest.mark.slow
async def test_unknown_and_retired_environments_get_one_line(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        unknown = await system.cli("env", "diagnose", "no-such-env")
        assert unknown.code == 1, str(unknown)
        assert unknown.stdout == ""
        assert len(unknown.stderr.strip().splitlines()) == 1
        assert "no-such-env" in unknown.stderr

        await system.create_env("edge-old")
        retired = await system.cli("env", "retire", "edge-old", "--yes")
        assert retired.code == 0, str(retired)
        answer = await system.cli("env", "diagnose", "edge-old")
        assert answer.code == 1, str(answer)
        assert answer.stderr.strip().endswith(
            "environment 'edge-old' is retired: nothing to diagnose"
        )


@pytest.mark.slow
async def test_an_agent_that_does_not_answer_fails_the_round_trip_and_blocks_no_one(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-mute", interval=20.0)
        agent.proc.freeze()  # connected and online for the controller, but silent
        try:
            diagnosis = asyncio.create_task(
                system.cli("env", "diagnose", "edge-mute", "--timeout", "4")
            )
            listed = await system.cli("env", "list")  # answered while the ping waits
            assert listed.code == 0, str(listed)
            assert not diagnosis.done()
            result = await diagnosis
        finally:
            agent.proc.thaw()
        assert result.code == 1, str(result)
        assert "FAIL  2. network/round-trip: no answer to the ping within 4 s" in result.stdout
        assert "SKIP  3. credentials/command-key: skipped: network/round-trip failed" in (
            result.stdout
        )
        assert "likely cause: network/round-trip" in result.stdout


@pytest.mark.slow
async def test_an_agent_that_does_not_trust_the_command_key_is_named(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        other_key = OTHER_SIGNER.public_key_b64  # the agent trusts this one only
        await system.online("edge-key", interval=20.0, extra=["--command-key", other_key])
        result = await system.cli("env", "diagnose", "edge-key")
        assert result.code == 1, str(result)
        assert "PASS  2. network/round-trip: ping answered (refused)" in result.stdout
        assert (
            "FAIL  3. credentials/command-key: the agent refused the signed ping: unknown-key"
            in (result.stdout)
        )
        assert "likely cause: credentials/command-key" in result.stdout
        assert "hint: the agent does not trust this controller's command key" in result.stdout
