"""Taking a workflow back off a target (issue 10): ``deployments cancel ID`` of a queued
deployment, of a running job and of a running service; ``undeploy WORKFLOW --env ID``;
``deploy`` to several environments at once. Real controller and agent processes, the CLI as
subprocesses, a real broker: what the operator sees afterwards (``deployments``, ``env
show``) is what runs on the target."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.pids import pid_dir, pids
from tests.support.procs import Proc
from tests.support.system import System, alive, open_system, wait_until, write_script

PY = sys.executable

# A process that writes its pid and lives until it is killed (or orphaned).
LIVES = """\
import os, pathlib, sys, time
with (pathlib.Path(sys.argv[1]) / "pids").open("a") as pids:
    pids.write(f"{os.getpid()}\\n")
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.1)
"""


def service(system: System, out: Path, name: str = "camera-service") -> Path:
    script = write_script(system.base / "lives.py", LIVES)
    data = {
        "name": name,
        "version": "1.0.0",
        "kind": "service",
        "steps": [{"name": "serve", "run": [PY, str(script), str(out)]}],
    }
    return system.workflow(name, data)


def long_job(system: System, out: Path) -> Path:
    script = write_script(system.base / "lives.py", LIVES)
    data = {
        "name": "long-job",
        "version": "1.0.0",
        "steps": [{"name": "crunch", "run": [PY, str(script), str(out)], "timeout": 600}],
    }
    return system.workflow("long-job", data)


def quick_job(system: System) -> Path:
    data = {
        "name": "quick-job",
        "version": "1.0.0",
        "steps": [{"name": "hello", "run": [PY, "-c", "print('hello')"], "timeout": 30}],
    }
    return system.workflow("quick-job", data)


def deployment_row(listing: str, dep: str) -> str:
    (row,) = [line for line in listing.splitlines() if line.startswith(dep)]
    return row


async def running_service(system: System, env: str, out: Path) -> str:
    deployed = await system.deploy(service(system, out), env, "--wait")
    assert deployed.code == 0, str(deployed)
    await wait_until(lambda: len(pids(out)) == 1, "the service started")
    return str((await system.latest_deployment(env))["id"])


async def env_show(system: System, env: str) -> dict[str, Any]:
    shown: dict[str, Any] = await system.cli_json("env", "show", env)
    return shown


@pytest.mark.slow
async def test_cancel_of_a_queued_deployment_drops_it_and_nothing_is_ever_sent(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-q")
        queued = await system.cli_json(
            "deploy", str(quick_job(system)), "--env", "edge-q", "--when-online"
        )
        dep = queued["id"]
        assert queued["state"] == "queued"

        cancelled = await system.cli("deployments", "cancel", dep)
        assert cancelled.code == 0, str(cancelled)
        assert f"deployment {dep} (quick-job) on edge-q cancelled" in cancelled.stdout
        shown = await system.show_deployment(dep)
        assert shown["state"] == "cancelled"
        assert shown["reason"] == "cancelled by the operator before it was sent"
        row = deployment_row((await system.cli("deployments")).stdout, dep)
        assert " cancelled " in row

        # the agent comes online: the cancelled deployment is not sent
        mark = system.probe.mark()
        await system.start_agent("edge-q")
        await system.barrier()
        assert [c for c in system.commands("edge-q") if c.get("type") == "deploy"] == []
        assert not [m for m in system.messages[mark:] if m.topic == root.cmd("edge-q")]
        again = await system.cli("deployments", "cancel", dep)
        assert again.code == 1, str(again)
        assert f"deployment {dep} has ended already (cancelled" in again.stderr


@pytest.mark.slow
async def test_cancel_of_a_running_job_stops_its_step_and_it_ends_cancelled(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path) as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            await system.online("edge-j")
            sent = await system.cli_json("deploy", str(long_job(system, out)), "--env", "edge-j")
            dep = sent["id"]
            await system.wait_event("edge-j", "step-started", dep=dep)
            await wait_until(lambda: len(pids(out)) == 1, "the step started")

            cancelled = await system.cli("deployments", "cancel", dep)
            assert cancelled.code == 0, str(cancelled)
            assert (
                "edge-j: cancelled: cancelled by the operator during step 'crunch'"
                in cancelled.stdout
            )
            assert f"deployment {dep} (long-job) on edge-j cancelled" in cancelled.stdout
            await wait_until(lambda: not alive(pids(out)[0]), "the step's process is gone")

            shown = await system.show_deployment(dep)
            assert shown["state"] == "cancelled"
            kinds = [logged["event"]["type"] for logged in shown["events"]]
            assert kinds[-1] == "cancelled"
            assert not {"succeeded", "failed"} & set(kinds)
            shown_env = await env_show(system, "edge-j")
            assert shown_env["running"] == []
            assert shown_env["commands"][-1]["op"] == "cancel"
            assert shown_env["commands"][-1]["state"] == "done"


@pytest.mark.slow
async def test_cancel_of_a_running_service_stops_it_for_good_also_across_an_agent_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path) as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            agent = await system.online("edge-s")
            dep = await running_service(system, "edge-s", out)

            cancelled = await system.cli_json("deployments", "cancel", dep)
            assert cancelled["deployment"]["state"] == "cancelled"
            assert cancelled["answer"]["type"] == "cancelled"
            assert cancelled["answer"]["cmd"] == cancelled["cmd"]
            await wait_until(lambda: not alive(pids(out)[0]), "the service is gone")
            assert (await env_show(system, "edge-s"))["running"] == []
            text = await system.cli("env", "show", "edge-s")
            assert re.search(r"^running: +nothing$", text.stdout, re.MULTILINE), str(text)
            assert re.search(r"^command: +cancel of camera-service c-\S+: done", text.stdout,
                             re.MULTILINE), str(text)  # fmt: skip

            # the agent's next start does not start it again
            assert await agent.proc.terminate() == 0
            await system.start_agent("edge-s")
            await system.barrier()
            assert not [e for e in system.events("edge-s", dep) if e["type"] == "running"][1:]
            assert len(pids(out)) == 1
            assert (await system.show_deployment(dep))["state"] == "cancelled"


@pytest.mark.slow
async def test_undeploy_stops_and_removes_the_service_and_says_so_everywhere(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path) as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            agent = await system.online("edge-u")
            dep = await running_service(system, "edge-u", out)
            assert (await env_show(system, "edge-u"))["running"] == [dep]

            undeployed = await system.cli("undeploy", "camera-service", "--env", "edge-u")
            assert undeployed.code == 0, str(undeployed)
            assert f"deployment {dep} (camera-service) on edge-u cancelled" in undeployed.stdout
            await wait_until(lambda: not alive(pids(out)[0]), "the service is gone")

            shown = await env_show(system, "edge-u")
            assert shown["running"] == []
            assert (shown["commands"][-1]["op"], shown["commands"][-1]["state"]) == (
                "undeploy",
                "done",
            )
            assert [(d["id"], d["state"]) for d in await system.deployments()] == [
                (dep, "cancelled")
            ]
            reason = (await system.show_deployment(dep))["reason"]
            assert reason.startswith("undeployed by the operator")

            again = await system.cli("undeploy", "camera-service", "--env", "edge-u")
            assert again.code == 1, str(again)
            assert again.stderr.strip() == (
                "edgeplane: workflow 'camera-service' does not run on edge-u (no deployment of "
                "it is running, starting or queued there); see: edgeplane env show edge-u"
            )
            unknown = await system.cli("deployments", "cancel", "d-0000000000")
            assert unknown.code == 1, str(unknown)
            assert unknown.stderr.strip() == "edgeplane: no deployment 'd-0000000000'"

            # and the agent's next start leaves it off
            assert await agent.proc.terminate() == 0
            await system.start_agent("edge-u")
            await system.barrier()
            assert len(pids(out)) == 1


@pytest.mark.slow
async def test_deploy_to_two_environments_makes_one_deployment_each_and_follows_both(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-m1")
        await system.create_env("edge-m2")
        await system.start_agent("edge-m2")
        workflow = str(quick_job(system))

        waited = await system.cli(
            "deploy", workflow, "--env", "edge-m1", "--env", "edge-m2", "--wait", "--json"
        )
        assert waited.code == 0, str(waited)
        reports = waited.json()
        assert [(r["env"], r["state"], r["ok"]) for r in reports] == [
            ("edge-m1", "succeeded", True),
            ("edge-m2", "succeeded", True),
        ]
        deployments = await system.deployments()
        assert sorted((d["env"], d["state"]) for d in deployments) == [
            ("edge-m1", "succeeded"),
            ("edge-m2", "succeeded"),
        ]

        followed = await system.cli(
            "deploy", workflow, "--env", "edge-m1", "--env", "edge-m2", "--wait"
        )
        assert followed.code == 0, str(followed)
        assert "edge-m1: succeeded in " in followed.stdout
        assert "edge-m2: succeeded in " in followed.stdout
        summary = followed.stdout.splitlines()[-3:]
        assert summary[0].split() == ["ENV", "ID", "STATE", "REASON"]
        assert [row.split()[::2] for row in summary[1:]] == [
            ["edge-m1", "succeeded"],
            ["edge-m2", "succeeded"],
        ]

        table = await system.cli("deploy", workflow, "--env", "edge-m1", "--env", "edge-m2")
        assert table.code == 0, str(table)
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["ENV", "ID", "STATE", "DETAIL"]
        assert [line.split()[0] for line in lines[1:]] == ["edge-m1", "edge-m2"]

        # one refused among them: shown beside the other, exit 1
        await system.create_env("edge-m3")
        mixed = await system.cli("deploy", workflow, "--env", "edge-m1", "--env", "edge-m3")
        assert mixed.code == 1, str(mixed)
        assert re.search(r"^edge-m3 +- +refused +environment 'edge-m3' has never been online",
                         mixed.stdout, re.MULTILINE), str(mixed)  # fmt: skip
        assert "edgeplane: edge-m3: refused: " in mixed.stderr

        before = len(await system.deployments())
        twice = await system.cli("deploy", workflow, "--env", "edge-m1", "--env", "edge-m1")
        assert twice.code == 2, str(twice)
        assert twice.stderr.strip() == (
            "edgeplane: --env edge-m1: given more than once (each environment gets one deployment)"
        )
        assert len(await system.deployments()) == before


@pytest.mark.slow
async def test_force_needs_a_reason_and_is_refused_for_an_offline_environment(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-f")
        workflow = quick_job(system)
        no_reason = await system.deploy(workflow, "edge-f", "--force")
        assert no_reason.code == 2, str(no_reason)
        assert no_reason.stderr.strip() == (
            "edgeplane: --force: needs --reason TEXT (the override is recorded)"
        )
        offline = await system.deploy(workflow, "edge-f", "--force", "--reason", "urgent")
        assert offline.code == 1, str(offline)
        assert "has never been online" in offline.stderr


@pytest.mark.slow
async def test_a_cancel_answered_while_the_controller_is_down_ends_cancelled_all_the_same(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with pid_dir(tmp_path) as out:
        async with open_system(broker, root, tmp_path, procs) as system:
            agent = await system.online("edge-k")
            dep = await running_service(system, "edge-k", out)
            agent.proc.freeze()  # the cancel waits at the broker, unanswered
            try:
                sent = await system.cli_json("deployments", "cancel", dep, "--no-wait")
                assert sent["cmd"].startswith("c-")
                assert sent["answer"] is None
                assert system.controller is not None
                await system.controller.kill()
            finally:
                agent.proc.thaw()
            await system.wait_event("edge-k", "cancelled", dep=dep, cmd=sent["cmd"])
            await wait_until(lambda: not alive(pids(out)[0]), "the service is gone")
            await system.start_controller()
            assert (await system.wait_deployment(dep, ["cancelled"]))["state"] == "cancelled"
            shown = await env_show(system, "edge-k")
            assert shown["running"] == []
            assert (shown["commands"][-1]["op"], shown["commands"][-1]["state"]) == (
                "cancel",
                "done",
            )
