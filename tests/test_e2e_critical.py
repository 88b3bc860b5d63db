"""Critical workflows (issue 10): a ``critical: true`` workflow is refused for a flapping
environment, for one with missed heartbeats and for one without a recent validation, and
sent after ``--validate-first``. Real controller and agent processes, the CLI as
subprocesses, a real broker."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import heartbeat
from tests.support.procs import Proc
from tests.support.system import System, open_system

PY = sys.executable


def critical_job(system: System, *, version: str = "2.0.0", secret: bool = False) -> Path:
    data: dict[str, Any] = {
        "name": "interlock",
        "version": version,
        "critical": True,
        "steps": [{"name": "arm", "run": [PY, "-c", "print('armed')"], "timeout": 30}],
    }
    if secret:
        data["requires"] = {"secrets": ["INTERLOCK_TOKEN"]}
    return system.workflow(f"interlock-{version}-{secret}", data)


async def env_show(system: System, env: str) -> dict[str, Any]:
    shown: dict[str, Any] = await system.cli_json("env", "show", env)
    return shown


async def shown_until(system: System, env: str, field: str, value: Any) -> dict[str, Any]:
    """``env show ENV --json`` until ``field`` is ``value`` (polling a query: the
    controller has no push for it)."""
    deadline = time.monotonic() + 20
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = await env_show(system, env)
        if shown.get(field) == value:
            return shown
        await asyncio.sleep(0.2)
    raise AssertionError(f"env show {env}: {field} not {value!r} within 20 s: {shown}")


@pytest.mark.slow
async def test_a_critical_workflow_is_refused_for_a_flapping_environment(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller("--flap-high", "2", "--flap-low", "1")
        await system.create_env("edge-f")
        agent = await system.start_agent("edge-f")
        passed = await system.deploy(critical_job(system), "edge-f", "--dry-run")
        assert passed.code == 0, str(passed)
        # offline and online again: two transitions, flapping
        mark = system.probe.mark()
        await agent.proc.close()
        await system.probe.wait_json(root.view("edge-f"), after=mark, status="offline")
        await system.start_agent("edge-f")
        await system.probe.wait_json(root.view("edge-f"), after=mark, flapping=True)

        refused = await system.deploy(critical_job(system), "edge-f")
        assert refused.code == 1, str(refused)
        assert "flapping" in refused.stderr, str(refused)
        forced = await system.deploy(critical_job(system), "edge-f", "--force", "--reason", "fix")
        assert forced.code == 1, str(forced)  # --force passes the gate, not a critical check
        assert "is flapping (not steady): a critical workflow" in forced.stderr, str(forced)
        shown = await env_show(system, "edge-f")
        assert shown["steady"] is False
        assert "steady:    no (flapping)" in (await system.cli("env", "show", "edge-f")).stdout
        assert [d for d in await system.deployments() if not d["dry_run"]] == []


@pytest.mark.slow
async def test_a_critical_workflow_is_refused_for_an_environment_that_missed_heartbeats(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-m")
        # a runtime whose heartbeats 3 and 4 never arrived (interval 5 s: online for 15 s)
        mark = system.probe.mark()
        for seq in (0, 1, 2, 5):
            await heartbeat(system.probe, root, "edge-m", seq=seq, interval=5)
        await system.probe.wait_json(root.view("edge-m"), after=mark, status="online")
        shown = await shown_until(system, "edge-m", "missed_heartbeats", 2)
        assert shown["steady"] is False

        refused = await system.deploy(critical_job(system), "edge-m")
        assert refused.code == 1, str(refused)
        assert "missed 2 heartbeats in the last 5 intervals (not steady)" in refused.stderr
        as_json = await system.cli("deploy", str(critical_job(system)), "--env", "edge-m", "--json")
        assert as_json.code == 1, str(as_json)
        assert "missed 2 heartbeats" in as_json.stderr, str(as_json)
        text = (await system.cli("env", "show", "edge-m")).stdout
        assert "steady:    no (2 heartbeats missed in the last 5 intervals)" in text, text
        assert await system.deployments() == []


@pytest.mark.slow
async def test_a_critical_workflow_needs_a_recent_validation_and_goes_after_validate_first(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-v", secrets={"INTERLOCK_TOKEN": "t0ken"})
        assert (await shown_until(system, "edge-v", "steady", True))["missed_heartbeats"] == 0

        refused = await system.deploy(critical_job(system), "edge-v")
        assert refused.code == 1, str(refused)
        assert "validation missing: no dry run of critical workflow interlock 2.0.0" in (
            refused.stderr
        ), str(refused)
        other = await system.deploy(critical_job(system, version="1.9.0"), "edge-v", "--dry-run")
        assert other.code == 0, str(other)
        refused = await system.deploy(critical_job(system), "edge-v")
        assert refused.code == 1, str(refused)
        assert "of another version" in refused.stderr, str(refused)

        sent = await system.deploy(critical_job(system), "edge-v", "--validate-first", "--wait")
        assert sent.code == 0, str(sent)
        assert "waits for its validation, dry run d-" in sent.stdout, str(sent)
        assert "(dry run)" in sent.stdout, str(sent)  # the dry run's events, shown
        deployed = next(d for d in await system.deployments() if not d["dry_run"])
        assert deployed["state"] == "succeeded"
        dry = await system.show_deployment(deployed["validation"])
        assert dry["dry_run"]
        assert dry["state"] == "checked"
        assert dry["reason"] == "preflight passed"
        shown = (await system.cli("deployments", "show", deployed["id"])).stdout
        assert f"validation: dry run {dry['id']}" in shown, shown
        # validated now: the same version goes straight away, naming its validation
        again = await system.cli_json("deploy", str(critical_job(system)), "--env", "edge-v")
        assert again["state"] == "sent"
        assert again["validation"] == dry["id"]


@pytest.mark.slow
async def test_validate_first_with_a_failing_dry_run_ends_failed_naming_the_validation(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-x")  # no secrets file: the preflight fails
        await shown_until(system, "edge-x", "steady", True)
        flow = critical_job(system, secret=True)
        failed = await system.deploy(flow, "edge-x", "--validate-first", "--wait")
        assert failed.code == 1, str(failed)
        deployed = [d for d in await system.deployments() if not d["dry_run"]]
        assert [d["state"] for d in deployed] == ["failed"]
        assert deployed[0]["reason"].startswith(f"validation {deployed[0]['validation']} did")
        assert "INTERLOCK_TOKEN" in deployed[0]["reason"]
        assert f"validation {deployed[0]['validation']} did not pass" in failed.stderr
        assert [c["dry_run"] for c in system.commands("edge-x") if c["type"] == "deploy"] == [True]


@pytest.mark.slow
async def test_a_deployment_waiting_for_its_validation_survives_a_controller_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        controller = await system.start_controller()
        await system.create_env("edge-r")
        flow = system.workflow(
            "hello",
            {"name": "hello", "version": "1.0.0",
             "steps": [{"name": "hi", "run": [PY, "-c", "print('hi')"], "timeout": 30}]},
        )  # fmt: skip
        waiting = await system.cli_json(
            "deploy", str(flow), "--env", "edge-r", "--validate-first", "--when-online"
        )
        assert waiting["state"] == "queued"
        assert waiting["waiting"]
        shown = (await system.cli("deployments", "show", waiting["id"])).stdout
        assert f"validation: waits for dry run {waiting['validation']}" in shown, shown

        await controller.close()
        await system.start_controller()
        await system.start_agent("edge-r")
        done = await system.wait_deployment(waiting["id"], timeout=30)
        assert done["state"] == "succeeded", done
        assert done["validation"] == waiting["validation"]
        assert not done["waiting"]
        dry = await system.show_deployment(waiting["validation"])
        assert dry["state"] == "checked"
        assert dry["reason"] == "preflight passed"
