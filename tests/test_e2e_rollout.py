"""Rollouts end to end: a real controller process, simulated agents that run the real
command path (``edge_agent.simulator`` with execution), real agent processes where a
target needs a secret, the operator CLI as subprocesses, a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.simulator.fleet import ExecutionSettings, Fleet
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.command_signature import parse_public_key
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY
from tests.support.procs import Proc
from tests.support.system import System, open_system

pytestmark = pytest.mark.timeout(180)

PY = sys.executable


@contextlib.asynccontextmanager
async def fleet(
    system: System, prefix: str, count: int, *labels: str, create: int | None = None
) -> AsyncIterator[Fleet]:
    """``count`` simulated agents ``{prefix}-0000N`` with the real command path; the first
    ``create`` of them (all by default) get a record with ``labels`` first."""
    for index in range(count if create is None else create):
        await system.create_env(f"{prefix}-{index:05d}", *labels)
    agents = Fleet(
        BrokerUrl.parse(system.broker.url),
        system.root,
        count,
        1.0,
        prefix,
        execution=ExecutionSettings(
            system.base / f"sim-{prefix}", command_keys=(parse_public_key(PUBLIC_KEY),)
        ),
    )
    async with agents:
        await agents.start()
        yield agents


def job(system: System, version: str, *, seconds: float = 0.0, secret: str = "") -> Path:
    data: dict[str, Any] = {
        "name": "rollout-app",
        "version": version,
        "steps": [{"name": "run", "run": [PY, "-c", f"import time; time.sleep({seconds})"]}],
    }
    if secret:
        data["requires"] = {"secrets": [secret]}
    return system.workflow(f"app-{version}", data)


def deploys(system: System, env: str) -> list[dict[str, Any]]:
    return [c for c in system.commands(env) if c.get("type") == "deploy"]


async def status(system: System, rollout: str) -> dict[str, Any]:
    shown: dict[str, Any] = await system.cli_json("rollout", "status", rollout)
    return shown


async def wait_rollout(
    system: System, rollout: str, check: Any, what: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = await status(system, rollout)
        if check(shown):
            return shown
        await asyncio.sleep(0.3)  # polling a query: the controller has no push for it
    raise AssertionError(f"rollout {rollout}: not {what} within {timeout}s: {shown}")


def targets(shown: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["env"]: t for t in shown["targets"]}


async def start(system: System, workflow: Path, *flags: str) -> dict[str, Any]:
    started: dict[str, Any] = await system.cli_json("rollout", "start", str(workflow), *flags)
    return started


# ---------------------------------------------------------------------------------------
async def test_a_rollout_goes_wave_by_wave_to_the_selected_environments_only(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("ro-other", "--label", "ring=green")
        async with fleet(system, "ro-w", 4, "--label", "ring=blue"):
            workflow = job(system, "1.0.0")
            planned = await system.cli(
                "rollout", "start", str(workflow), "--selector", "ring=blue,stage=dev",
                "--waves", "1,50%,100%", "--bake", "0",
            )  # fmt: skip
            assert planned.code == 0, str(planned)
            assert "wave 1 (1): ro-w-00000" in planned.stdout
            assert "wave 2 (1): ro-w-00001" in planned.stdout
            assert "wave 3 (2): ro-w-00002, ro-w-00003" in planned.stdout
            rollout = planned.stdout.split("started rollout ")[1].split(":")[0]
            followed = await system.cli("rollout", "status", rollout, "--follow", timeout=90)
            assert followed.code == 0, str(followed)
            assert f"rollout {rollout} succeeded" in followed.stdout
            assert "progress [" in followed.stdout
            shown = await status(system, rollout)
        assert shown["state"] == "succeeded"
        assert [w["state"] for w in shown["waves"]] == ["done"] * 3
        by_env = targets(shown)
        assert {e: t["state"] for e, t in by_env.items()} == {
            f"ro-w-0000{i}": "succeeded" for i in range(4)
        }
        for wave in (1, 2):  # each wave began only after the one before it was done
            before = [t["finished"] for t in shown["targets"] if t["wave"] == wave - 1]
            after = [t["started"] for t in shown["targets"] if t["wave"] == wave]
            assert min(after) >= max(before)
        for env in by_env:
            assert len(deploys(system, env)) == 1, env  # each exactly once
        assert deploys(system, "ro-other") == []
        as_json = await system.cli("rollout", "status", rollout, "--follow", "--json")
        assert as_json.code == 0, str(as_json)
        (line,) = as_json.stdout.splitlines()  # one object per change: it is over already
        assert json.loads(line)["state"] == "succeeded"
        listed = await system.cli("rollout", "list")
        assert rollout in listed.stdout
        assert "succeeded" in listed.stdout


async def test_bad_flags_are_usage_errors_and_a_selector_matching_nothing_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        workflow = job(system, "1.0.0")
        for flags, flag in (
            (["--selector", "ring"], "--selector"),
            (["--selector", "a=b", "--waves", "50%,10%"], "--waves"),
            (["--selector", "a=b", "--max-failures", "many"], "--max-failures"),
        ):
            result = await system.cli("rollout", "start", str(workflow), *flags)
            assert result.code == 2, str(result)
            assert flag in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        nothing = await system.cli("rollout", "start", str(workflow), "--selector", "ring=none")
        assert nothing.code == 1, str(nothing)
        assert "no environment matches --selector ring=none" in nothing.stderr
        missing = await system.cli("rollout", "status", "r-0000000000")
        assert missing.code == 1
        assert "no rollout" in missing.stderr


async def test_failing_preflight_aborts_within_10s_and_rolls_the_changed_ones_back(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        good = ["ro-a-1", "ro-a-2"]
        for env in good:  # real agents with the secret the new version needs
            await system.create_env(env, "--label", "ring=red")
            await system.start_agent(env, secrets={"TOKEN": "s3cret"})
            first = await system.deploy(job(system, "1.0.0"), env, "--wait")
            assert first.code == 0, str(first)
        # simulated agents without it: their preflight fails
        async with fleet(system, "ro-z", 3, "--label", "ring=red"):
            mark = system.probe.mark()
            started = await start(
                system, job(system, "2.0.0", secret="TOKEN"), "--selector", "ring=red",
                "--waves", "2,3,100%", "--bake", "0", "--max-failures", "0",
                "--rollback-on-abort",
            )  # fmt: skip
            rollout = started["id"]
            assert [len([t for t in started["targets"] if t["wave"] == w]) for w in range(3)] == [
                2,
                1,
                2,
            ]
            rejected = await system.wait_event("ro-z-00000", "rejected", after=mark, timeout=60)
            assert "TOKEN" in str(rejected)
            seen = time.monotonic()
            alert = await system.probe.wait_json(
                root.alerts("ro-z-00000"), after=mark, timeout=10, state="raised"
            )
            assert time.monotonic() - seen < 10
            assert alert["kind"] == "rollout-aborted"
            assert rollout in alert["detail"]
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "aborted", "aborted and rolled back"
            )
            await system.probe.wait_json(
                root.alerts("ro-z-00000"), after=mark, timeout=10, state="cleared"
            )
        by_env = targets(shown)
        assert by_env["ro-z-00000"]["state"] == "failed"
        for env in ("ro-z-00001", "ro-z-00002"):  # the later wave untouched
            assert by_env[env]["state"] == "pending"
            assert deploys(system, env) == []
        assert shown["waves"][2]["state"] == "pending"
        for env in good:
            assert by_env[env]["state"] == "rolled-back", by_env[env]
            versions = [c["workflow"]["version"] for c in deploys(system, env)]
            assert versions == ["1.0.0", "2.0.0", "1.0.0"]  # back to what ran before
        assert "rolled back" in shown["reason"]


async def test_pause_resume_and_approve(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        async with fleet(system, "ro-p", 3, "--label", "ring=amber"):
            started = await start(
                system, job(system, "1.0.0"), "--selector", "ring=amber", "--waves", "1,100%",
                "--bake", "0", "--approve-each-wave",
            )  # fmt: skip
            rollout = started["id"]
            await wait_rollout(
                system, rollout, lambda s: s["state"] == "awaiting-approval", "awaiting approval"
            )
            assert deploys(system, "ro-p-00001") == []
            rival = await system.cli(
                "rollout", "start", "--undeploy", "rollout-app", "--selector", "ring=amber"
            )
            assert rival.code == 1, str(rival)
            assert f"rollout {rollout} of rollout-app is awaiting-approval on 3" in rival.stderr
            paused = await system.cli("rollout", "pause", rollout)
            assert paused.code == 0, str(paused)
            assert "paused" in paused.stdout
            early = await system.cli("rollout", "approve", rollout)
            assert early.code == 1
            assert "is paused: cannot approve" in early.stderr
            resumed = await system.cli_json("rollout", "resume", rollout)
            assert resumed["state"] == "awaiting-approval"
            approved = await system.cli_json("rollout", "approve", rollout)
            assert approved["state"] == "running"
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "succeeded", "succeeded"
            )
        assert shown["counts"] == {"succeeded": 3}


async def test_a_controller_killed_mid_rollout_carries_on_without_doubles(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        controller = await system.start_controller()
        async with fleet(system, "ro-k", 5, "--label", "ring=kill"):
            started = await start(
                system, job(system, "1.0.0", seconds=2.0), "--selector", "ring=kill",
                "--waves", "1,100%", "--bake", "0",
            )  # fmt: skip
            rollout = started["id"]
            await wait_rollout(
                system,
                rollout,
                lambda s: (
                    s["waves"][1]["state"] == "running"
                    and any(t["state"] == "sent" for t in s["targets"] if t["wave"] == 1)
                ),
                "in its second wave",
            )
            await controller.kill()  # SIGKILL mid-wave
            await system.start_controller()
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "succeeded", "succeeded after restart"
            )
        assert shown["counts"] == {"succeeded": 5}
        for env in targets(shown):
            assert len(deploys(system, env)) == 1, env


async def test_offline_targets_are_not_deployed_and_new_environments_join(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("ro-j-offline", "--label", "ring=join")  # no agent ever
        async with fleet(system, "ro-j", 3, "--label", "ring=join", create=2):
            started = await start(
                system, job(system, "1.0.0"), "--selector", "ring=join", "--waves", "1,100%",
                "--bake", "0", "--target-timeout", "4", "--skip-offline",
                "--approve-each-wave",
            )  # fmt: skip
            rollout = started["id"]
            assert sorted(t["env"] for t in started["targets"]) == [
                "ro-j-00000",
                "ro-j-00001",
                "ro-j-offline",
            ]
            await wait_rollout(
                system, rollout, lambda s: s["state"] == "awaiting-approval", "awaiting approval"
            )
            await system.create_env("ro-j-00002", "--label", "ring=join")  # joins now
            joined = await wait_rollout(
                system, rollout, lambda s: "ro-j-00002" in targets(s), "joined by ro-j-00002"
            )
            assert targets(joined)["ro-j-00002"]["wave"] == 1
            await system.cli_json("rollout", "approve", rollout)
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "succeeded", "succeeded"
            )
        by_env = targets(shown)
        assert by_env["ro-j-offline"]["state"] == "not-deployed"
        assert "offline" in by_env["ro-j-offline"]["reason"]
        assert by_env["ro-j-00002"]["state"] == "succeeded"
        assert shown["counts"] == {"succeeded": 3, "not-deployed": 1}
        assert deploys(system, "ro-j-offline") == []
        text = await system.cli("rollout", "status", rollout)
        assert "not-deployed" in text.stdout


async def test_offline_targets_count_as_failures_without_skip_offline(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("ro-o-offline", "--label", "ring=off")
        started = await start(
            system, job(system, "1.0.0"), "--selector", "ring=off", "--target-timeout", "2",
        )  # fmt: skip
        shown = await wait_rollout(
            system, started["id"], lambda s: s["state"] == "aborted", "aborted"
        )
        assert targets(shown)["ro-o-offline"]["state"] == "not-deployed"
        assert shown["failures"] == 1


async def test_dry_run_prints_the_plan_and_the_first_waves_preflight(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        async with fleet(system, "ro-d", 2, "--label", "ring=dry"):
            result = await system.cli(
                "rollout", "start", str(job(system, "1.0.0", secret="TOKEN")),
                "--selector", "ring=dry", "--waves", "1,100%", "--dry-run",
            )  # fmt: skip
            assert result.code == 1, str(result)  # the preflight did not pass
            assert "dry run of a rollout" in result.stdout
            assert "wave 1 (1): ro-d-00000" in result.stdout
            assert "ro-d-00000: FAIL" in result.stdout
            assert "TOKEN" in result.stdout
            listed = await system.cli_json("rollout", "list")
        assert listed == []  # nothing stored
        assert all(c.get("dry_run") for c in deploys(system, "ro-d-00000"))
        assert deploys(system, "ro-d-00001") == []


def sleeper(system: System) -> Path:
    data = {
        "name": "rollout-sleeper",
        "version": "1.0.0",
        "kind": "service",
        "steps": [{"name": "serve", "run": [PY, "-c", "import time; time.sleep(600)"]}],
    }
    return system.workflow("rollout-sleeper", data)


async def test_an_undeploy_rollout_takes_the_service_off_the_selected_environments_only(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("ro-u-idle", "--label", "ring=teal")  # nothing runs there
        async with fleet(system, "ro-u", 4, "--label", "ring=teal"):
            others = ("--selector", "ring=teal", "--waves", "100%", "--bake", "0")
            deployed = await start(system, sleeper(system), *others)
            await wait_rollout(
                system, deployed["id"], lambda s: s["counts"].get("succeeded") == 4, "running"
            )
            idle_dep = targets(await status(system, deployed["id"]))["ro-u-idle"]["dep"]
            await system.cli_json("rollout", "abort", deployed["id"])  # ro-u-idle stays queued
            await system.create_env("ro-u-none", "--label", "ring=teal")  # nothing ever
            kept = "ro-u-00003"
            await system.cli("env", "update", kept, "--label", "ring=kept")
            planned = await system.cli(
                "rollout", "start", "--undeploy", "rollout-sleeper", "--selector", "ring=teal",
                "--waves", "1,100%", "--bake", "0",
            )  # fmt: skip
            assert planned.code == 0, str(planned)
            assert "undeploy rollout-sleeper to 5 environment(s)" in planned.stdout
            rollout = planned.stdout.split("started rollout ")[1].split(":")[0]
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "succeeded", "succeeded"
            )
            by_env = targets(shown)
            assert set(by_env) == {
                "ro-u-00000",
                "ro-u-00001",
                "ro-u-00002",
                "ro-u-idle",
                "ro-u-none",
            }
            assert {t["state"] for t in by_env.values()} == {"succeeded"}
            assert by_env["ro-u-none"]["reason"] == "nothing of it ran here"
            assert (await system.show_deployment(idle_dep))["state"] == "cancelled"
            assert shown["action"] == "undeploy"
            for env in ("ro-u-00000", "ro-u-00001", "ro-u-00002"):
                cancels = [c for c in system.commands(env) if c.get("type") == "cancel"]
                assert len(cancels) == 1, env  # each exactly once
                assert (await env_running(system, env)) == [], env
            assert [c for c in system.commands(kept) if c.get("type") == "cancel"] == []
            assert len(await env_running(system, kept)) == 1  # not selected: still runs
            listed = await system.cli("rollout", "list")
            assert "(undeploy)" in listed.stdout


async def env_running(system: System, env: str) -> list[str]:
    shown: dict[str, Any] = await system.cli_json("env", "show", env)
    running: list[str] = shown["running"]
    return running


async def test_rollout_start_takes_a_file_or_undeploy_but_not_both(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        workflow = job(system, "1.0.0")
        for args in ([str(workflow), "--undeploy", "x"], []):
            result = await system.cli("rollout", "start", *args, "--selector", "a=b")
            assert result.code == 2, str(result)
            assert "give a workflow FILE to deploy, or --undeploy NAME" in result.stderr
        bad = await system.cli("rollout", "start", "--undeploy", "Bad Name!", "--selector", "a=b")
        assert bad.code == 2, str(bad)
        assert "'Bad Name!' is not a workflow name" in bad.stderr


async def test_a_service_that_fails_to_start_is_a_failure_and_an_abort_drops_queued_targets(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("ro-f-offline", "--label", "ring=rust")  # no agent ever
        async with fleet(system, "ro-f", 2, "--label", "ring=rust"):
            broken = system.workflow(
                "broken-svc",
                {
                    "name": "broken-svc",
                    "version": "1.0.0",
                    "kind": "service",
                    "steps": [
                        {"name": "prepare", "run": [PY, "-c", "raise SystemExit(1)"]},
                        {"name": "serve", "run": [PY, "-c", "import time; time.sleep(600)"]},
                    ],
                },
            )
            started = await start(
                system, broken, "--selector", "ring=rust", "--waves", "100%", "--bake", "30",
                "--max-failures", "0", "--target-timeout", "120",
            )  # fmt: skip
            rollout = started["id"]
            shown = await wait_rollout(
                system, rollout, lambda s: s["state"] == "aborted" and s["counts"].get(
                    "not-deployed") == 1, "aborted, the queued target dropped", timeout=60
            )  # fmt: skip
        by_env = targets(shown)
        assert by_env["ro-f-00000"]["state"] == "failed", by_env
        assert (
            "prepare" in by_env["ro-f-00000"]["reason"]
            or "failed" in by_env["ro-f-00000"]["reason"]
        )
        assert "queued deployment was dropped" in by_env["ro-f-offline"]["reason"]
        dropped = await system.show_deployment(by_env["ro-f-offline"]["dep"])
        assert dropped["state"] == "cancelled"
        assert f"rollout {rollout} is aborted" in dropped["reason"]
        assert deploys(system, "ro-f-offline") == []  # never sent, and never will be


async def test_a_critical_rollout_is_refused_unvalidated_and_goes_with_validate_first(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        critical = system.workflow(
            "rollout-interlock",
            {
                "name": "rollout-interlock",
                "version": "1.0.0",
                "critical": True,
                "steps": [{"name": "arm", "run": [PY, "-c", "print('armed')"]}],
            },
        )
        async with fleet(system, "ro-c", 2, "--label", "ring=iron"):
            flags = ("--selector", "ring=iron", "--waves", "100%", "--bake", "0")
            refused = await start(system, critical, *flags)
            shown = await wait_rollout(
                system, refused["id"], lambda s: s["state"] == "aborted", "aborted"
            )
            for target in shown["targets"]:
                assert target["state"] == "failed"
                assert "validation missing" in target["reason"], target
            assert all(deploys(system, f"ro-c-0000{i}") == [] for i in range(2))

            validated = await start(system, critical, *flags, "--validate-first")
            shown = await wait_rollout(
                system, validated["id"], lambda s: s["state"] == "succeeded", "succeeded"
            )
        for target in shown["targets"]:
            deployment = await system.show_deployment(target["dep"])
            assert deployment["state"] == "succeeded"
            dry = await system.show_deployment(deployment["validation"])
            assert (dry["dry_run"], dry["state"]) == (True, "checked")
