"""The lifecycle of an environment end to end, as an operator lives it: real controller and
agent processes, the ``edgeplane`` CLI as subprocesses, a real broker.

Create the record, run the agent with that id, see it online, deploy (every gate, every
preflight check, --dry-run, --when-online, bad workflow files, rollback), then retire it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc, start_proc
from tests.support.system import (
    System,
    alive,
    open_system,
    retained_now,
    wait_for_file,
    wait_for_output,
    wait_until,
    write_script,
)

PY = sys.executable

WRITE_REPORT = """\
import pathlib, sys
pathlib.Path(sys.argv[1], "report.txt").write_text("inspected 3 frames\\n")
print("report written")
"""

TOUCH = """\
import pathlib, sys
pathlib.Path(sys.argv[1]).write_text("ran\\n")
"""


def touch_workflow(system: System, name: str, marker: Path, **extra: Any) -> Path:
    """A job whose only step writes ``marker``: that the file is absent proves nothing ran."""
    script = system.script("touch", TOUCH)
    data = {
        "name": name,
        "version": "1.0.0",
        "steps": [{"name": "touch", "run": [PY, str(script), str(marker)], "timeout": 30}],
        **extra,
    }
    return system.workflow(name, data)


# the lifecycle ---------------------------------------------------------------------------
@pytest.mark.slow
async def test_create_run_online_deploy_into_a_bucket_and_see_every_event_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        # created without an id: named {stage}-{location}-{purpose}
        created = await system.cli(
            "env", "create", "--stage", "dev", "--location", "lab", "--purpose", "vision"
        )
        assert created.code == 0, str(created)
        assert "dev-lab-vision" in created.stdout, str(created)
        listed = await system.cli_json("env", "list")
        # the project's default cloud environment came with its first environment
        assert {"dev-lab-vision", "default-cloud"} <= {env["id"] for env in listed}

        await system.start_agent("dev-lab-vision", models={"detector": ["2.2.0"]})
        status = await system.cli_json("status")
        assert {(row["env"], row["status"]) for row in status} >= {("dev-lab-vision", "online")}
        shown = await system.cli_json("env", "show", "dev-lab-vision")
        assert shown["status"] == "online"
        assert shown["models"] == {"detector": ["2.2.0"]}  # the reported inventory
        assert shown["platform"]["os"] == platform.system().lower()

        bucket = tmp_path / "results"
        bucket.mkdir()
        script = system.script("write_report", WRITE_REPORT)
        workflow = tmp_path / "vision-inspect.yaml"
        workflow.write_text(
            f"""\
name: vision-inspect
version: 1.4.0
requires:
  models: [{{name: detector, version: ">=2.1,<3"}}]
  buckets: [{{name: results, path: {json.dumps(str(bucket))}, access: write}}]
steps:
  - name: inspect
    run: [{json.dumps(PY)}, {json.dumps(str(script))}, {json.dumps(str(bucket))}]
    timeout: 30
"""
        )
        result = await system.deploy(workflow, "dev-lab-vision", "--wait")
        assert result.code == 0, str(result)
        assert "succeeded" in result.stdout, str(result)
        assert (bucket / "report.txt").read_text() == "inspected 3 frames\n"

        listed_deps = await system.deployments()
        assert [(d["env"], d["workflow"], d["version"], d["state"]) for d in listed_deps] == [
            ("dev-lab-vision", "vision-inspect", "1.4.0", "succeeded")
        ]
        dep = listed_deps[0]["id"]
        shown_dep = await system.show_deployment(dep)
        assert shown_dep["state"] == "succeeded"
        text = await system.cli("deployments", "show", dep)
        assert text.code == 0, str(text)
        assert "succeeded" in text.stdout, str(text)

        logged = [e for e in await system.logged_events("dev-lab-vision") if e["dep"] == dep]
        assert [e["type"] for e in logged] == [
            "accepted",
            "preflight",
            "started",
            "step-started",
            "step-finished",
            "succeeded",
        ]
        finished = logged[4]
        assert (finished["step"], finished["exit_code"], finished["ok"]) == ("inspect", 0, True)
        assert "report written" in finished["stdout"]
        # the agent published the same events, each once
        published = system.events("dev-lab-vision", dep=dep)
        assert [(e["type"], e["seq"]) for e in published] == [(e["type"], e["seq"]) for e in logged]


HOLD = """\
import os, pathlib, sys, time
gate = pathlib.Path(sys.argv[1])
parent, deadline = os.getppid(), time.monotonic() + 60
while not gate.exists() and os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(0 if gate.exists() else 5)
"""


@pytest.mark.slow
async def test_deploy_wait_and_events_follow_show_progress_as_it_happens(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    gate = tmp_path / "gate"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-live")
        follow = await system.start_cli("events", "--follow", "--env", "edge-live")
        hold = system.script("hold", HOLD)
        steps = [
            {"name": "hold", "run": [PY, str(hold), str(gate)], "timeout": 60},
            {"name": "after", "run": [PY, "-c", "print('after')"], "timeout": 30},
        ]
        workflow = system.workflow("live", {"name": "live", "version": "1", "steps": steps})
        deploy = await system.start_cli("deploy", str(workflow), "--env", "edge-live", "--wait")
        # the first step waits for the gate: both commands show it started, and wait on
        await wait_for_output(deploy, "hold")
        await wait_for_output(follow, "hold")
        assert deploy.process.returncode is None
        assert "succeeded" not in deploy.output()
        gate.touch()
        assert await deploy.wait(30) == 0
        assert "succeeded" in deploy.output()
        await wait_for_output(follow, "succeeded")
        assert follow.process.returncode is None, "--follow keeps following"


@pytest.mark.slow
async def test_a_model_installed_while_running_is_reported_and_opens_the_gate(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-inv", models={"detector": ["1.0.0"]})
        marker = tmp_path / "ran"
        needs = {"models": [{"name": "detector", "version": ">=2"}]}
        workflow = touch_workflow(system, "needs-v2", marker, requires=needs)
        refused = await system.deploy(workflow, "edge-inv", "--wait")
        assert refused.code != 0, str(refused)

        mark = system.probe.mark()
        (agent.files.models_dir / "detector" / "2.2.0").mkdir()
        status_topic = root.status("edge-inv")
        await system.probe.wait_for(
            lambda m: m.topic == status_topic and b"2.2.0" in m.payload,
            after=mark,
            what="the new inventory in a heartbeat",
        )
        shown = await system.cli_json("env", "show", "edge-inv")
        assert sorted(shown["models"]["detector"]) == ["1.0.0", "2.2.0"]
        result = await system.deploy(workflow, "edge-inv", "--wait")
        assert result.code == 0, str(result)
        assert marker.exists()
        # heartbeats stay small: the inventory went out in the first online and on change
        with_models = [
            m for m in system.probe.messages if m.topic == status_topic and b'"models"' in m.payload
        ]
        assert len(with_models) == 2


@pytest.mark.slow
async def test_a_model_removed_across_an_agent_restart_closes_the_gate(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-shrink", models={"detector": ["2.2.0"]})
        marker = tmp_path / "ran"
        needs = {"models": [{"name": "detector", "version": ">=2"}]}
        workflow = touch_workflow(system, "needs-v2", marker, requires=needs)
        assert await agent.proc.terminate() == 0
        shutil.rmtree(agent.files.models_dir / "detector")
        await system.start_agent("edge-shrink", models={})
        shown = await system.cli_json("env", "show", "edge-shrink")
        assert shown["models"] == {}, "the inventory is the last one reported, not a merge"
        refused = await system.deploy(workflow, "edge-shrink", "--wait")
        assert refused.code != 0, str(refused)
        assert "detector" in refused.stderr, str(refused)
        assert not marker.exists()


@pytest.mark.slow
async def test_two_jobs_deployed_at_once_run_one_after_the_other(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    gate = tmp_path / "gate"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-two")
        hold = system.script("hold", HOLD)
        first_steps = [{"name": "hold", "run": [PY, str(hold), str(gate)], "timeout": 60}]
        first = system.workflow("first", {"name": "first", "version": "1", "steps": first_steps})
        second = touch_workflow(system, "second", tmp_path / "second-ran")
        assert (await system.deploy(first, "edge-two")).code == 0
        dep1 = (await system.latest_deployment("edge-two"))["id"]
        await system.wait_event("edge-two", "step-started", dep=dep1)
        assert (await system.deploy(second, "edge-two")).code == 0
        dep2 = (await system.latest_deployment("edge-two"))["id"]
        gate.touch()
        await system.wait_event("edge-two", "succeeded", dep=dep2)
        order = [
            (e["dep"], e["type"])
            for e in system.events("edge-two")
            if e["type"] in {"started", "succeeded"}
        ]
        assert order == [
            (dep1, "started"),
            (dep1, "succeeded"),
            (dep2, "started"),
            (dep2, "succeeded"),
        ]


@pytest.mark.slow
async def test_up_runs_the_default_cloud_environment_and_it_takes_a_deployment(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        args = ["up", "--broker", broker.url, "--topic-root", str(root)]
        args += ["--state-dir", str(tmp_path / "up"), "--heartbeat-interval", "1"]
        up = await start_proc(
            "edgeplane.controller", [*args, "--log-format", "json"], tmp_path / "up.log"
        )
        procs.append(up)
        await system.probe.wait_json(root.view("default-cloud"), status="online", timeout=30)
        listed = await system.cli_json("env", "list")
        assert [env["id"] for env in listed] == ["default-cloud"]

        marker = tmp_path / "ran"
        result = await system.deploy(
            touch_workflow(system, "central", marker), "default-cloud", "--wait"
        )
        assert result.code == 0, str(result)
        assert marker.read_text() == "ran\n"
        assert await up.terminate(30) == 0


# every gate --------------------------------------------------------------------------------
@pytest.mark.slow
async def test_deploy_to_an_unknown_environment_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        result = await system.deploy(workflow, "no-such-env", "--wait")
        assert result.code != 0, str(result)
        assert "no-such-env" in result.stderr, str(result)
        assert re.search(r"unknown|not found|no such|no environment", result.stderr, re.I)
        assert len(result.stderr.strip().splitlines()) == 1, str(result)
        assert system.commands("no-such-env") == []


@pytest.mark.slow
async def test_deploy_to_a_retired_environment_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-old")
        retired = await system.cli("env", "retire", "edge-old")
        assert retired.code == 0, str(retired)
        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        result = await system.deploy(workflow, "edge-old", "--wait")
        assert result.code != 0, str(result)
        assert "edge-old" in result.stderr, str(result)
        assert "retired" in result.stderr, str(result)
        assert not any(c.get("type") == "deploy" for c in system.commands("edge-old"))


@pytest.mark.slow
async def test_deploy_to_a_never_seen_environment_is_refused_with_the_hint(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-new")
        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        result = await system.deploy(workflow, "edge-new", "--wait")
        assert result.code != 0, str(result)
        assert "edge-new" in result.stderr, str(result)
        assert "never" in result.stderr, str(result)
        assert "--when-online" in result.stderr, str(result)
        assert system.commands("edge-new") == []


@pytest.mark.slow
async def test_deploy_to_an_offline_environment_names_when_and_suggests_when_online(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-gone")
        agent = await system.start_agent("edge-gone")
        mark = system.probe.mark()
        assert await agent.proc.terminate() == 0
        await system.probe.wait_json(root.view("edge-gone"), after=mark, status="offline")
        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        result = await system.deploy(workflow, "edge-gone", "--wait")
        assert result.code != 0, str(result)
        assert "offline since" in result.stderr, str(result)
        assert "last heartbeat" in result.stderr, str(result)
        assert "--when-online" in result.stderr, str(result)
        assert not any(c.get("type") == "deploy" for c in system.commands("edge-gone"))


@pytest.mark.slow
async def test_deploy_to_a_flapping_environment_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        flags = ("--flap-window", "60", "--flap-high", "2", "--flap-low", "1")
        agent = await system.online("edge-flap", *flags)
        await agent.proc.kill()  # offline by its will: one transition
        await system.probe.wait_json(root.view("edge-flap"), status="offline")
        await system.start_agent("edge-flap")  # online again: the second
        await system.probe.wait_json(
            root.alerts("edge-flap"), kind="flapping", state="raised", timeout=20
        )
        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        result = await system.deploy(workflow, "edge-flap", "--wait")
        assert result.code != 0, str(result)
        assert "flapping" in result.stderr, str(result)
        assert not (tmp_path / "ran").exists()
        assert not any(c.get("type") == "deploy" for c in system.commands("edge-flap"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("need", "named"),
    [
        ({"name": "detector", "version": ">=2,<3"}, "detector"),  # held, wrong version
        ({"name": "segmenter"}, "segmenter"),  # not held at all
    ],
    ids=["wrong-version", "absent"],
)
async def test_deploy_needing_a_model_the_inventory_lacks_is_refused(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    need: dict[str, str],
    named: str,
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-models", models={"detector": ["1.0.0"]})
        workflow = touch_workflow(
            system, "needs-model", tmp_path / "ran", requires={"models": [need]}
        )
        result = await system.deploy(workflow, "edge-models", "--wait")
        assert result.code != 0, str(result)
        assert named in result.stderr, str(result)
        assert "model" in result.stderr, str(result)
        assert not (tmp_path / "ran").exists()
        assert not any(c.get("type") == "deploy" for c in system.commands("edge-models"))


@pytest.mark.slow
async def test_an_agent_without_a_record_is_unregistered_and_never_commanded(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.start_agent("ghost-gw", wait="status")
        await system.probe.wait_json(root.view("ghost-gw"), registered=False, timeout=20)
        status = await system.cli("status")
        assert status.code == 0, str(status)
        [line] = [line for line in status.stdout.splitlines() if "ghost-gw" in line]
        assert "unregistered" in line, str(status)

        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        deploy = await system.deploy(workflow, "ghost-gw", "--when-online")
        assert deploy.code != 0, str(deploy)
        restart = await system.cli("env", "restart", "ghost-gw")
        assert restart.code != 0, str(restart)
        await system.barrier()
        assert system.commands("ghost-gw") == []
        assert not (tmp_path / "ran").exists()


@pytest.mark.slow
async def test_an_unregistered_agent_gets_commands_once_its_record_is_created(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.start_agent("late-record", wait="status")
        await system.probe.wait_json(root.view("late-record"), registered=False, timeout=20)
        mark = system.probe.mark()
        await system.create_env("late-record")
        view = await system.probe.wait_json(root.view("late-record"), after=mark, registered=True)
        assert view["status"] == "online"
        marker = tmp_path / "ran"
        result = await system.deploy(touch_workflow(system, "now", marker), "late-record", "--wait")
        assert result.code == 0, str(result)
        assert marker.exists()


# every preflight check failing alone ----------------------------------------------------
@contextlib.asynccontextmanager
async def http_ok_server() -> AsyncIterator[int]:
    """A tiny HTTP server answering 200 to anything: a datasource that is up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this user cannot create files in (root ignores modes: use sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


PREFLIGHT_NAMES = {
    "detector",
    "line-camera",
    "weather-api",
    "calibration",
    "telemetry",
    "results",
    "API_TOKEN",
    "inference",
}


def full_requires(tmp_path: Path, port: int, broker: MosquittoProcess) -> dict[str, Any]:
    """Every kind of requirement, all met by the agent :func:`preflight_system` starts."""
    calibration = tmp_path / "calibration.csv"
    calibration.write_text("a,b\n1,2\n")
    bucket = tmp_path / "results"
    bucket.mkdir(exist_ok=True)
    return {
        "models": [{"name": "detector", "version": ">=2.1,<3"}],
        "datasources": [
            {"name": "line-camera", "url": f"tcp://127.0.0.1:{port}"},
            {"name": "weather-api", "url": f"http://127.0.0.1:{port}/health"},
            {"name": "calibration", "url": calibration.as_uri()},
            {"name": "telemetry", "url": broker.url},
        ],
        "buckets": [{"name": "results", "path": str(bucket), "access": "write"}],
        "secrets": ["API_TOKEN"],
        "endpoints": ["inference"],
    }


async def preflight_system(system: System, port: int) -> None:
    await system.online(
        "edge-pre",
        models={"detector": ["2.2.0"]},
        secrets={"API_TOKEN": "tok-preflight-1234"},
        endpoints={"inference": f"http://127.0.0.1:{port}/v1"},
    )


def _break_model(r: dict[str, Any], tmp_path: Path) -> None:
    r["models"][0]["version"] = ">=3"


def _break_tcp(r: dict[str, Any], tmp_path: Path) -> None:
    r["datasources"][0]["url"] = f"tcp://127.0.0.1:{free_port()}"


def _break_http(r: dict[str, Any], tmp_path: Path) -> None:
    r["datasources"][1]["url"] = f"http://127.0.0.1:{free_port()}/health"


def _break_file(r: dict[str, Any], tmp_path: Path) -> None:
    r["datasources"][2]["url"] = (tmp_path / "missing.csv").as_uri()


def _break_mqtt(r: dict[str, Any], tmp_path: Path) -> None:
    r["datasources"][3]["url"] = f"mqtt://127.0.0.1:{free_port()}"


def _break_bucket_missing(r: dict[str, Any], tmp_path: Path) -> None:
    r["buckets"][0]["path"] = str(tmp_path / "no-such-bucket")


def _break_bucket_unwritable(r: dict[str, Any], tmp_path: Path) -> None:
    r["buckets"][0]["path"] = str(unwritable_dir(tmp_path))


def _break_secret(r: dict[str, Any], tmp_path: Path) -> None:
    r["secrets"] = ["API_TOKEN", "MISSING_TOKEN"]


def _break_endpoint(r: dict[str, Any], tmp_path: Path) -> None:
    r["endpoints"] = ["inference", "billing-api"]


Breaker = Callable[[dict[str, Any], Path], None]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("breaker", "failing", "kind"),
    [
        (_break_tcp, "line-camera", "datasource"),
        (_break_http, "weather-api", "datasource"),
        (_break_file, "calibration", "datasource"),
        (_break_mqtt, "telemetry", "datasource"),
        (_break_bucket_missing, "results", "bucket"),
        (_break_bucket_unwritable, "results", "bucket"),
        (_break_secret, "MISSING_TOKEN", "secret"),
        (_break_endpoint, "billing-api", "endpoint"),
    ],
    ids=[
        "tcp-unreachable",
        "http-down",
        "file-missing",
        "mqtt-unreachable",
        "bucket-missing",
        "bucket-not-writable",
        "secret-missing",
        "endpoint-not-configured",
    ],
)
async def test_each_failing_preflight_check_alone_is_named_and_nothing_runs(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    breaker: Breaker,
    failing: str,
    kind: str,
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system, http_ok_server() as port:
        await preflight_system(system, port)
        requires = full_requires(tmp_path, port, broker)
        breaker(requires, tmp_path)
        marker = tmp_path / "ran"
        workflow = touch_workflow(system, "checked", marker, requires=requires)
        result = await system.deploy(workflow, "edge-pre", "--wait")
        assert result.code != 0, str(result)
        assert failing in result.output, str(result)
        assert not marker.exists()

        dep = await system.latest_deployment("edge-pre")
        assert dep["state"] == "rejected"
        [preflight] = [e for e in system.events("edge-pre", dep["id"]) if e["type"] == "preflight"]
        assert preflight["ok"] is False
        checks = {check["name"]: check for check in preflight["checks"]}
        # every check reported, each judged on its own: only the broken one failed
        assert set(checks) == (PREFLIGHT_NAMES | {failing})
        assert [n for n, c in checks.items() if not c["ok"]] == [failing]
        assert checks[failing]["kind"] == kind
        assert checks[failing]["detail"], "a failed check says why"
        types = [e["type"] for e in system.events("edge-pre", dep["id"])]
        assert "started" not in types
        assert "step-started" not in types


@pytest.mark.slow
async def test_an_endpoint_set_by_env_update_satisfies_preflight_across_agent_restarts(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system, http_ok_server() as port:
        agent = await system.online("edge-conf")
        marker = tmp_path / "ran"
        needs = {"endpoints": ["inference"]}
        workflow = touch_workflow(system, "needs-endpoint", marker, requires=needs)
        refused = await system.deploy(workflow, "edge-conf", "--wait")
        assert refused.code != 0, str(refused)
        assert "inference" in refused.output, str(refused)

        url = f"http://127.0.0.1:{port}/v1"
        updated = await system.cli(
            "env", "update", "edge-conf", "--set", f"endpoints.inference={url}"
        )
        assert updated.code == 0, str(updated)
        assert await agent.proc.terminate() == 0
        await system.start_agent("edge-conf")  # the update is kept across its restart
        result = await system.deploy(workflow, "edge-conf", "--wait")
        assert result.code == 0, str(result)
        assert marker.exists()


@pytest.mark.slow
async def test_a_required_model_version_the_target_lacks_is_named(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """Caught by the gate (the reported inventory) or by preflight: either way named."""
    async with open_system(broker, root, tmp_path, procs) as system, http_ok_server() as port:
        await preflight_system(system, port)
        requires = full_requires(tmp_path, port, broker)
        _break_model(requires, tmp_path)
        workflow = touch_workflow(system, "checked", tmp_path / "ran", requires=requires)
        result = await system.deploy(workflow, "edge-pre", "--wait")
        assert result.code != 0, str(result)
        assert "detector" in result.output, str(result)
        assert not (tmp_path / "ran").exists()


@pytest.mark.slow
async def test_dry_run_prints_the_preflight_report_and_runs_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system, http_ok_server() as port:
        await preflight_system(system, port)
        marker = tmp_path / "ran"
        requires = full_requires(tmp_path, port, broker)
        workflow = touch_workflow(system, "checked", marker, requires=requires)
        dry = await system.deploy(workflow, "edge-pre", "--dry-run")
        assert dry.code == 0, str(dry)
        for name in PREFLIGHT_NAMES:
            assert name in dry.stdout, f"{name} missing from the report:\n{dry}"
        assert not marker.exists()
        dep = await system.latest_deployment("edge-pre")
        assert (dep["state"], dep["dry_run"]) == ("checked", True)
        types = [e["type"] for e in system.events("edge-pre", dep["id"])]
        assert "preflight" in types
        assert "started" not in types
        assert "step-started" not in types

        # the same workflow for real writes the marker: the dry run could have
        real = await system.deploy(workflow, "edge-pre", "--wait")
        assert real.code == 0, str(real)
        assert marker.exists()


@pytest.mark.slow
async def test_dry_run_with_a_failing_check_reports_it_and_exits_non_zero(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system, http_ok_server() as port:
        await preflight_system(system, port)
        requires = full_requires(tmp_path, port, broker)
        _break_secret(requires, tmp_path)
        workflow = touch_workflow(system, "checked", tmp_path / "ran", requires=requires)
        dry = await system.deploy(workflow, "edge-pre", "--dry-run")
        assert dry.code != 0, str(dry)
        assert "MISSING_TOKEN" in dry.output, str(dry)
        assert not (tmp_path / "ran").exists()


# --when-online -------------------------------------------------------------------------
@pytest.mark.slow
async def test_when_online_queues_until_the_agent_comes_and_then_runs(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-later")
        marker = tmp_path / "ran"
        workflow = touch_workflow(system, "later", marker)
        queued = await system.deploy(workflow, "edge-later", "--when-online")
        assert queued.code == 0, str(queued)
        assert "queued" in queued.stdout, str(queued)
        dep = await system.latest_deployment("edge-later")
        assert dep["state"] == "queued"
        assert system.commands("edge-later") == []

        await system.start_agent("edge-later")
        await system.wait_event("edge-later", "succeeded", dep=dep["id"])
        assert marker.read_text() == "ran\n"
        done = await system.wait_deployment(dep["id"], {"succeeded"})
        assert done["state"] == "succeeded"


@pytest.mark.slow
async def test_when_online_with_a_short_ttl_and_no_agent_expires(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-never")
        marker = tmp_path / "ran"
        workflow = touch_workflow(system, "never", marker)
        result = await system.deploy(
            workflow, "edge-never", "--when-online", "--ttl", "2", "--wait", timeout=40
        )
        assert result.code != 0, str(result)
        assert "expired" in result.output, str(result)
        dep = await system.latest_deployment("edge-never")
        assert dep["state"] == "expired"
        logged = await system.logged_events("edge-never")
        assert [e["type"] for e in logged if e["dep"] == dep["id"]] == ["expired"]
        assert system.commands("edge-never") == []


# bad workflow files -------------------------------------------------------------------
BAD_WORKFLOWS: list[tuple[str, str, list[str]]] = [
    # (file name, content, what stderr must name besides the file)
    ("not-yaml.yaml", "name: [unclosed\nsteps: {\n", []),
    (
        "wrong-type.yaml",
        "name: w\nversion: '1'\nsteps:\n  - {name: a, run: ['true']}\n"
        "  - {name: b, run: ['true'], timeout: soon}\n",
        ["steps[1].timeout", "number", "soon"],
    ),
    ("missing-field.yaml", "name: w\nsteps:\n  - {name: a, run: ['true']}\n", ["version"]),
    (
        "unknown-field.yaml",
        "name: w\nversion: '1'\nsteps:\n  - {name: a, run: ['true'], timout: 5}\n",
        ["steps[0]", "timout"],
    ),
    (
        "bad-specifier.json",
        json.dumps(
            {
                "name": "w",
                "version": "1",
                "requires": {"models": [{"name": "detector", "version": "=>2.1"}]},
                "steps": [{"name": "a", "run": ["true"]}],
            }
        ),
        ["requires.models[0].version", "=>2.1"],
    ),
    ("no-steps.yaml", "name: w\nversion: '1'\nsteps: []\n", ["steps"]),
]


@pytest.mark.slow
async def test_bad_workflow_files_are_refused_with_file_and_path_and_nothing_is_sent(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-files")
        mark = system.probe.mark()
        problems = []
        for name, content, named in [*BAD_WORKFLOWS, ("absent.yaml", "", [])]:
            path = tmp_path / "bad" / name
            if content:
                write_script(path, content)
            result = await system.deploy(path, "edge-files", "--wait")
            stderr = result.stderr
            wanted = [name, *named]
            missing = [w for w in wanted if w.lower() not in stderr.lower()]
            if result.code == 0 or missing or len(stderr.strip().splitlines()) != 1:
                problems.append(f"{name}: wanted non-zero, one line naming {missing}\n{result}")
        await system.barrier()
        sent = [
            m.topic
            for m in system.probe.messages[mark:]
            if m.topic in {root.cmd("edge-files"), root.requests()}
        ]
        assert not problems, "\n\n".join(problems)
        assert sent == []


# services: rollback, restarts, resume ----------------------------------------------------
SERVICE = """\
import os, pathlib, sys, time
out, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
parent = os.getppid()
(out / f"{tag}.pid").write_text(str(os.getpid()))
beats = 0
while os.getppid() == parent:  # orphaned (the agent killed): stop, leave nothing behind
    beats += 1
    (out / f"{tag}.beat").write_text(f"{os.getpid()} {beats}")
    time.sleep(0.1)
"""


STUBBORN_SERVICE = """\
import os, pathlib, sys, time
(pathlib.Path(sys.argv[1]) / "svc.pid").write_text(str(os.getpid()))
time.sleep(60)
"""


def service_workflow(system: System, version: str, run: list[str]) -> Path:
    data = {
        "name": "camera-service",
        "version": version,
        "kind": "service",
        "steps": [{"name": "serve", "run": run}],
    }
    return system.workflow(f"service-{version}", data)


@pytest.mark.slow
async def test_a_new_version_that_dies_at_once_is_rolled_back_to_the_running_one(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "service-out"
    out.mkdir()
    script = write_script(tmp_path / "service.py", SERVICE)
    try:
        async with open_system(broker, root, tmp_path, procs) as system:
            await system.online("edge-svc")
            v1 = service_workflow(system, "1.0.0", [PY, str(script), str(out), "v1"])
            first = await system.deploy(v1, "edge-svc", "--wait")
            assert first.code == 0, str(first)
            dep1 = (await system.latest_deployment("edge-svc"))["id"]
            await wait_for_file(out / "v1.pid")
            assert alive(int((out / "v1.pid").read_text()))

            v2 = service_workflow(system, "2.0.0", [PY, "-c", "import sys; sys.exit(3)"])
            second = await system.deploy(v2, "edge-svc", "--wait")
            assert second.code != 0, str(second)
            dep2 = (await system.latest_deployment("edge-svc"))["id"]
            assert dep2 != dep1
            rolled = await system.wait_event("edge-svc", "rolled-back", dep=dep2)
            assert rolled["restored"] == dep1

            # version 1 runs again: its heartbeat file keeps changing, by a live process
            after_rollback = (out / "v1.beat").read_text()
            await wait_for_file(out / "v1.beat", check=lambda p: p.read_text() != after_rollback)
            pid = int((out / "v1.beat").read_text().split()[0])
            assert alive(pid)
            assert (await system.show_deployment(dep2))["state"] == "rolled-back"
            shown = await system.cli_json("env", "show", "edge-svc")
            assert dep1 in shown["running"]
            # and the operator who deployed version 2 is told version 1 is back
            assert "rolled back" in second.output, str(second)
    finally:
        for pid_file in out.glob("*.pid"):  # the services this test's workflows started
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow
async def test_a_new_healthy_version_replaces_the_running_service(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "service-out"
    out.mkdir()
    script = write_script(tmp_path / "service.py", SERVICE)
    try:
        async with open_system(broker, root, tmp_path, procs) as system:
            await system.online("edge-upgrade")
            v1 = service_workflow(system, "1.0.0", [PY, str(script), str(out), "v1"])
            assert (await system.deploy(v1, "edge-upgrade", "--wait")).code == 0
            dep1 = (await system.latest_deployment("edge-upgrade"))["id"]
            await wait_for_file(out / "v1.pid")
            v2 = service_workflow(system, "2.0.0", [PY, str(script), str(out), "v2"])
            upgraded = await system.deploy(v2, "edge-upgrade", "--wait")
            assert upgraded.code == 0, str(upgraded)
            dep2 = (await system.latest_deployment("edge-upgrade"))["id"]
            await wait_for_file(out / "v2.pid")
            assert alive(int((out / "v2.pid").read_text()))
            v1_pid = int((out / "v1.pid").read_text())
            await wait_until(lambda: not alive(v1_pid), "version 1 stopped")
            assert (await system.show_deployment(dep1))["state"] == "stopped"
            assert (await system.show_deployment(dep2))["state"] == "running"
            shown = await system.cli_json("env", "show", "edge-upgrade")
            assert shown["running"] == [dep2]
    finally:
        for pid_file in out.glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


CRASHABLE_SERVICE = """\
import os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
with (out / "pids").open("a") as pids:
    pids.write(f"{os.getpid()}\\n")
parent = os.getppid()
while os.getppid() == parent:  # orphaned (the agent killed): stop, leave nothing behind
    if (out / "crash").exists():
        (out / "crash").unlink()
        sys.exit(7)
    time.sleep(0.05)
"""


def pids(out: Path) -> list[int]:
    return [int(line) for line in (out / "pids").read_text().split()]


@pytest.mark.slow
async def test_a_service_is_restarted_when_it_exits_stopped_with_the_agent_and_resumed(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "service-out"
    out.mkdir()
    script = write_script(tmp_path / "crashable.py", CRASHABLE_SERVICE)
    try:
        async with open_system(broker, root, tmp_path, procs) as system:
            agent = await system.online("edge-daemon")
            workflow = service_workflow(system, "1.0.0", [PY, str(script), str(out)])
            deployed = await system.deploy(workflow, "edge-daemon", "--wait")
            assert deployed.code == 0, str(deployed)
            dep = (await system.latest_deployment("edge-daemon"))["id"]
            assert (await system.show_deployment(dep))["state"] == "running"

            # it exits on its own: started again, and the restart reported
            (out / "crash").touch()
            restarted = await system.wait_event("edge-daemon", "service-restarted", dep=dep)
            assert (restarted["exit_code"], restarted["restarts"]) == (7, 1)
            await wait_until(lambda: len(pids(out)) == 2, "the service started again")
            assert alive(pids(out)[1])

            # the agent stops cleanly: its service with it; started again: the service too
            assert await agent.proc.terminate() == 0
            await wait_until(lambda: not alive(pids(out)[1]), "the service stopped")
            mark = system.probe.mark()
            await system.start_agent("edge-daemon")
            await system.wait_event("edge-daemon", "running", dep=dep, after=mark)
            await wait_until(lambda: len(pids(out)) == 3, "the service resumed")
            assert alive(pids(out)[2])
            logged = {e["type"] for e in await system.logged_events("edge-daemon")}
            assert {"service-restarted", "stopped", "running"} <= logged
    finally:
        for pid in pids(out) if (out / "pids").exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# retire ------------------------------------------------------------------------------
@pytest.mark.slow
async def test_retire_stops_the_agent_clears_its_topics_and_keeps_the_history(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-bye")
        assert await retained_now(broker, root.status("edge-bye"), root.view("edge-bye"))

        retired = await system.cli("env", "retire", "edge-bye")
        assert retired.code == 0, str(retired)
        assert await agent.proc.wait(30) == 0
        await system.probe.wait_json(root.status("edge-bye"), status="offline", reason="retired")
        assert await retained_now(broker, root.status("edge-bye"), root.view("edge-bye")) == {}

        workflow = touch_workflow(system, "probe", tmp_path / "ran")
        refused = await system.deploy(workflow, "edge-bye", "--wait")
        assert refused.code != 0, str(refused)
        assert "retired" in refused.stderr, str(refused)

        # the same id and state dir once more: the agent refuses, saying why
        again = await system.start_agent("edge-bye", wait=None)
        assert await again.proc.wait(30) != 0
        assert "retired" in again.proc.output()

        shown = await system.cli_json("env", "show", "edge-bye")
        assert shown["retired"] is not None
        text = await system.cli("env", "show", "edge-bye")
        assert text.code == 0, str(text)
        assert "retired" in text.stdout, str(text)
        acks = [e for e in await system.logged_events("edge-bye") if e["type"] == "ack"]
        assert [(a["op"], a["ok"]) for a in acks] == [("retire", True)]
        assert not (tmp_path / "ran").exists()


@pytest.mark.slow
async def test_retire_stops_the_running_workflows_first(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "service-out"
    out.mkdir()
    # unlike SERVICE it outlives its agent (for a minute): only a real stop ends it
    script = write_script(tmp_path / "stubborn.py", STUBBORN_SERVICE)
    try:
        async with open_system(broker, root, tmp_path, procs) as system:
            agent = await system.online("edge-busy")
            workflow = service_workflow(system, "1.0.0", [PY, str(script), str(out)])
            deployed = await system.deploy(workflow, "edge-busy", "--wait")
            assert deployed.code == 0, str(deployed)
            dep = (await system.latest_deployment("edge-busy"))["id"]
            await wait_for_file(out / "svc.pid")
            pid = int((out / "svc.pid").read_text())
            assert alive(pid)

            retired = await system.cli("env", "retire", "edge-busy")
            assert retired.code == 0, str(retired)
            assert await agent.proc.wait(30) == 0
            await wait_until(lambda: not alive(pid), "the service stopped")
            stopped = [e for e in system.events("edge-busy", dep) if e["type"] == "stopped"]
            assert len(stopped) == 1
            assert (await system.show_deployment(dep))["state"] == "stopped"
    finally:
        for pid_file in out.glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
