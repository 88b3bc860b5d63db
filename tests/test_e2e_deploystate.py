"""What ``deployments`` and ``env show`` say of a running service is what its agent said
last, after every operator command: ``env restart`` (issue 9, observation 3), ``env update``,
``env retire``, a rollback, and a controller killed between a command and the agent's
answer. Real controller and agent processes, the CLI as subprocesses, a real broker."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.pids import pid_dir, pids
from tests.support.procs import Proc
from tests.support.system import Agent, System, alive, open_system, wait_until, write_script

PY = sys.executable

SERVICE = """\
import os, pathlib, sys, time
with (pathlib.Path(sys.argv[1]) / "pids").open("a") as pids:
    pids.write(f"{os.getpid()}\\n")
parent = os.getppid()
while os.getppid() == parent:  # orphaned (the agent killed): stop, leave nothing behind
    time.sleep(0.1)
"""


def service(
    system: System, out: Path, version: str = "1.0.0", run: list[str] | None = None
) -> Path:
    script = write_script(system.base / "service.py", SERVICE)
    data = {
        "name": "camera-service",
        "version": version,
        "kind": "service",
        "steps": [{"name": "serve", "run": run or [PY, str(script), str(out)]}],
    }
    return system.workflow(f"camera-{version}", data)


async def running_service(system: System, env: str, out: Path) -> tuple[str, Agent]:
    """``env`` online with the service deployed and running: its deployment id, its agent."""
    agent = await system.online(env)
    deployed = await system.deploy(service(system, out), env, "--wait")
    assert deployed.code == 0, str(deployed)
    await wait_until(lambda: len(pids(out)) == 1, "the service started")
    return str((await system.latest_deployment(env))["id"]), agent


async def wait_shown(
    system: System, env: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """``env show --json`` once ``check`` holds (the controller may take the agent's last
    event a moment after the probe saw it)."""
    deadline = time.monotonic() + 30
    shown: dict[str, Any] = {}
    while not check(shown := await system.cli_json("env", "show", env)):
        if time.monotonic() > deadline:
            raise AssertionError(f"env show {env}: not {what} within 30s: {shown}")
        await asyncio.sleep(0.3)  # polling a query: the controller has no push for it
    return shown


def last_command(shown: dict[str, Any]) -> tuple[str, str]:
    commands = shown.get("commands") or [{"op": "", "state": ""}]
    return commands[-1]["op"], commands[-1]["state"]


def deployment_state(shown: dict[str, Any]) -> tuple[list[str], list[str]]:
    return shown["running"], shown.get("restarting", [])


async def user_view(system: System, env: str) -> Any:
    """What ``deployments`` and ``env show`` say, without what changes with every heartbeat."""
    shown = await system.cli_json("env", "show", env)
    for volatile in ("last_seen", "since"):
        shown.pop(volatile, None)
    return await system.deployments(), shown


@pytest.mark.slow
async def test_env_restart_of_a_running_service_shows_it_running_again(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path, "service-out") as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            dep, _ = await running_service(system, "edge-rs", out)
            mark = system.probe.mark()
            restarted = await system.cli("env", "restart", "edge-rs")
            assert restarted.code == 0, str(restarted)
            await system.wait_event("edge-rs", "running", dep=dep, after=mark)
            assert len(pids(out)) == 2
            assert alive(pids(out)[1])

            assert (await system.wait_deployment(dep, ["running"]))["reason"] == ""
            assert [(d["id"], d["state"]) for d in await system.deployments()] == [(dep, "running")]
            shown = await wait_shown(
                system, "edge-rs", lambda s: last_command(s) == ("restart", "done"), "restart done"
            )
            assert deployment_state(shown) == ([dep], [])
            text = await system.cli("env", "show", "edge-rs")
            assert re.search(
                rf"^running: +{dep} \(camera-service 1\.0\.0\)$", text.stdout, re.MULTILINE
            ), str(text)
            assert re.search(r"^command: +restart c-\S+: done", text.stdout, re.MULTILINE), text
            listed = await system.cli("deployments")
            assert re.search(rf"^{dep} .* running ", listed.stdout, re.MULTILINE), str(listed)


@pytest.mark.slow
async def test_env_update_leaves_the_running_service_running_and_says_the_update_done(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path, "service-out") as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            dep, _ = await running_service(system, "edge-up", out)
            updated = await system.cli("env", "update", "edge-up", "--set", "log_level=debug")
            assert updated.code == 0, str(updated)
            shown = await wait_shown(
                system, "edge-up", lambda s: last_command(s) == ("update", "done"), "update done"
            )
            assert deployment_state(shown) == ([dep], [])
            assert (await system.show_deployment(dep))["state"] == "running"
            assert alive(pids(out)[0])


@pytest.mark.slow
async def test_retire_shows_the_service_stopped_and_nothing_running(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path, "service-out") as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            dep, agent = await running_service(system, "edge-rt", out)
            retired = await system.cli("env", "retire", "edge-rt")
            assert retired.code == 0, str(retired)
            assert await agent.proc.wait(30) == 0
            await wait_until(lambda: not alive(pids(out)[0]), "the service stopped")
            shown = await wait_shown(
                system, "edge-rt", lambda s: last_command(s) == ("retire", "done"), "retire done"
            )
            assert deployment_state(shown) == ([], [])
            assert (await system.show_deployment(dep))["state"] == "stopped"


@pytest.mark.slow
async def test_a_controller_killed_between_env_restart_and_the_answer_shows_it_right(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path, "service-out") as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            dep, _ = await running_service(system, "edge-kl", out)
            mark = system.probe.mark()
            sent = await system.cli_json("env", "restart", "edge-kl", "--no-wait")
            await system.wait_event("edge-kl", "stopped", dep=dep, after=mark)
            assert system.controller is not None
            await system.controller.kill()  # the agent's answer comes while it is down
            await system.wait_event("edge-kl", "running", dep=dep, after=mark)
            await system.wait_event("edge-kl", "ack", cmd=sent["cmd"], after=mark)
            await system.start_controller()

            await system.wait_deployment(dep, ["running"])
            shown = await wait_shown(
                system, "edge-kl", lambda s: last_command(s) == ("restart", "done"), "restart done"
            )
            assert deployment_state(shown) == ([dep], [])

            # and a restart of the controller, clean or killed, changes none of it
            before = await user_view(system, "edge-kl")
            assert await system.controller.terminate() == 0
            await system.start_controller()
            assert await user_view(system, "edge-kl") == before
            await system.controller.kill()
            await system.start_controller()
            assert await user_view(system, "edge-kl") == before


@pytest.mark.slow
async def test_a_rollback_across_a_controller_kill_shows_the_old_version_running(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path, "service-out") as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            dep1, _ = await running_service(system, "edge-rb", out)
            dies = service(system, out, "2.0.0", [PY, "-c", "import sys; sys.exit(3)"])
            mark = system.probe.mark()
            sent = await system.deploy(dies, "edge-rb")
            assert sent.code == 0, str(sent)
            failed = await system.wait_event("edge-rb", "failed", after=mark)
            dep2 = failed["dep"]
            assert system.controller is not None
            await system.controller.kill()  # the rollback happens while it is down
            await system.wait_event("edge-rb", "rolled-back", dep=dep2, after=mark)
            await system.start_controller()

            assert (await system.wait_deployment(dep2))["state"] == "rolled-back"
            assert (await system.wait_deployment(dep1, ["running"]))["state"] == "running"
            shown = await wait_shown(system, "edge-rb", lambda s: s["running"] == [dep1], "v1")
            assert deployment_state(shown) == ([dep1], [])
            assert alive(pids(out)[-1])
