"""Faults end to end: duplicate and expired commands, a broker restart and an agent kill -9
in the middle of a running job, a controller kill -9 mid-deployment. Nothing is lost,
nothing is doubled, and every deployment reaches an end state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.messages import Deploy, Ping
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Step, Workflow
from tests.support.command_key import signed
from tests.support.procs import Proc
from tests.support.system import (
    END_STATES,
    System,
    alive,
    open_link_proxy,
    open_system,
    retained_now,
    wait_for_file,
    wait_until,
)

PY = sys.executable

APPEND = """\
import pathlib, sys
with pathlib.Path(sys.argv[1]).open("a") as out:
    out.write("run\\n")
"""

# Waits for a gate file the test creates (not a sleep: the test decides when it ends).
# Orphaned when its agent is killed, it gives up, so nothing outlives the test.
WAIT_FOR_GATE = """\
import os, pathlib, sys, time
gate, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
pathlib.Path(f"{out}.started").write_text("")
parent, deadline = os.getppid(), time.monotonic() + 60
while not gate.exists():
    if os.getppid() != parent or time.monotonic() > deadline:
        sys.exit(5)
    time.sleep(0.05)
out.write_text("done")
"""


async def ping(system: System, env: str, cmd_id: str) -> None:
    """A round trip through the agent's command path: every command published before
    this one has been taken when its pong is in."""
    await system.probe.publish(system.root.cmd(env), signed(Ping(id=cmd_id), env))
    await system.wait_event(env, "pong", cmd=cmd_id)


def append_workflow(system: System, counter: Path) -> Workflow:
    script = system.script("append", APPEND)
    return Workflow(
        name="append",
        version="1",
        steps=[Step(name="append", run=[PY, str(script), str(counter)], timeout=30)],
    )


# duplicate and expired commands ------------------------------------------------------
@pytest.mark.slow
async def test_a_deploy_command_delivered_twice_runs_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-dup")
        command = Deploy(id="cmd-dup-1", dep="dep-dup-1", workflow=append_workflow(system, counter))
        await system.probe.publish(root.cmd("edge-dup"), signed(command, "edge-dup"))
        await system.probe.publish(root.cmd("edge-dup"), signed(command, "edge-dup"))
        await system.wait_event("edge-dup", "succeeded", dep="dep-dup-1")
        await ping(system, "edge-dup", "ping-after-dup")
        types = Counter(e["type"] for e in system.events("edge-dup", dep="dep-dup-1"))
        assert (types["accepted"], types["started"], types["succeeded"]) == (1, 1, 1)
        assert counter.read_text() == "run\n"


@pytest.mark.slow
async def test_a_deploy_command_delivered_again_after_an_agent_kill_does_not_run_again(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-redo")
        command = Deploy(
            id="cmd-redo-1", dep="dep-redo-1", workflow=append_workflow(system, counter)
        )
        await system.probe.publish(root.cmd("edge-redo"), signed(command, "edge-redo"))
        await system.wait_event("edge-redo", "succeeded", dep="dep-redo-1")
        await agent.proc.kill()
        await system.start_agent("edge-redo")  # same state dir: it remembers the command
        await system.probe.publish(root.cmd("edge-redo"), signed(command, "edge-redo"))
        await ping(system, "edge-redo", "ping-after-redo")
        types = Counter(e["type"] for e in system.events("edge-redo", dep="dep-redo-1"))
        assert (types["accepted"], types["succeeded"]) == (1, 1)
        assert counter.read_text() == "run\n"


@pytest.mark.slow
async def test_a_command_past_its_expiry_is_reported_and_not_run(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-late")
        command = Deploy(
            id="cmd-old",
            dep="dep-old",
            expires=time.time() - 60,
            workflow=append_workflow(system, counter),
        )
        await system.probe.publish(root.cmd("edge-late"), signed(command, "edge-late"))
        await system.wait_event("edge-late", "expired", cmd="cmd-old")
        await ping(system, "edge-late", "ping-after-expired")
        types = [e["type"] for e in system.events("edge-late") if e["cmd"] == "cmd-old"]
        assert types == ["expired"]
        assert not counter.exists()


@pytest.mark.slow
async def test_a_deploy_the_agent_takes_only_after_its_expiry_is_expired_and_not_run(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        # heartbeats every 5 s: a frozen agent stays judged online for 15 s
        agent = await system.online("edge-frozen", "--command-ttl", "2", interval=5)
        workflow = system.workflow("append", msgspec.to_builtins(append_workflow(system, counter)))
        agent.proc.freeze()
        deployed = await system.deploy(workflow, "edge-frozen")
        assert deployed.code == 0, str(deployed)
        dep = (await system.latest_deployment("edge-frozen"))["id"]
        [command] = [c for c in system.commands("edge-frozen") if c.get("dep") == dep]
        # what the test waits for is a moment: the command's expiry (one clock, one machine)
        await wait_until(lambda: time.time() > command["expires"] + 0.5, "the command expired")

        agent.proc.thaw()
        await system.wait_event("edge-frozen", "expired", cmd=command["id"])
        end = await system.wait_deployment(dep, END_STATES)
        assert end["state"] == "expired", end
        await ping(system, "edge-frozen", "ping-after-thaw")
        assert not counter.exists()
        assert [e["type"] for e in system.events("edge-frozen", dep)] == ["expired"]


# A step that starts a child of its own, then both wait far longer than the step's timeout.
SPAWNER = """\
import os, pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(90)"])
pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
time.sleep(90)
"""


@pytest.mark.slow
async def test_a_step_over_its_timeout_is_killed_with_its_children_and_fails(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    pids_file = tmp_path / "pids"
    try:
        async with open_system(broker, root, tmp_path, procs) as system:
            await system.online("edge-slow")
            spawner = system.script("spawner", SPAWNER)
            steps = [{"name": "hang", "run": [PY, str(spawner), str(pids_file)], "timeout": 1.5}]
            workflow = system.workflow("hang", {"name": "hang", "version": "1", "steps": steps})
            result = await system.deploy(workflow, "edge-slow", "--wait")
            assert result.code != 0, str(result)
            assert "hang" in result.stderr, str(result)
            assert re.search(r"timed out|timeout", result.output), str(result)
            [finished] = [e for e in system.events("edge-slow") if e["type"] == "step-finished"]
            assert (finished["timed_out"], finished["ok"]) == (True, False)
            dep = await system.latest_deployment("edge-slow")
            assert dep["state"] == "failed"
            pids = [int(pid) for pid in pids_file.read_text().split()]
            await wait_until(lambda: not any(map(alive, pids)), "the step and its child killed")
    finally:
        for pid in [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# Megabytes of output on both streams, some of it not UTF-8, then a last line.
FLOOD = """\
import sys
for stream in (sys.stdout.buffer, sys.stderr.buffer):
    for _ in range(20_000):
        stream.write(b"noise \\xff\\xfe " + b"x" * 100 + b"\\n")
    stream.write(b"the end\\n")
    stream.flush()
"""


@pytest.mark.slow
async def test_a_flood_of_output_leaves_a_short_readable_tail(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-loud")
        flood = system.script("flood", FLOOD)
        steps = [{"name": "flood", "run": [PY, str(flood)], "timeout": 60}]
        workflow = system.workflow("loud", {"name": "loud", "version": "1", "steps": steps})
        result = await system.deploy(workflow, "edge-loud", "--wait")
        assert result.code == 0, str(result)
        [finished] = [e for e in system.events("edge-loud") if e["type"] == "step-finished"]
        for stream in ("stdout", "stderr"):
            assert finished[stream].rstrip().endswith("the end"), finished[stream][-200:]
            assert len(finished[stream]) <= 4096


@pytest.mark.slow
async def test_a_step_that_cannot_start_fails_naming_the_program(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-typo")
        steps = [{"name": "typo", "run": ["no-such-program-7f3a", "--once"], "timeout": 30}]
        workflow = system.workflow("typo", {"name": "typo", "version": "1", "steps": steps})
        result = await system.deploy(workflow, "edge-typo", "--wait")
        assert result.code != 0, str(result)
        assert "no-such-program-7f3a" in result.output, str(result)
        dep = await system.latest_deployment("edge-typo")
        assert dep["state"] == "failed"
        [finished] = [e for e in system.events("edge-typo") if e["type"] == "step-finished"]
        assert (finished["exit_code"], finished["ok"]) == (None, False)


# nothing lost, nothing doubled -------------------------------------------------------
# The events of a whole run of long_job(gates=["a"]), in order.
FULL_RUN = [
    ("accepted", None),
    ("preflight", None),
    ("started", None),
    ("step-started", 0),
    ("step-finished", 0),
    ("step-started", 1),
    ("step-finished", 1),
    ("step-started", 2),
    ("step-finished", 2),
    ("succeeded", None),
]


def long_job(system: System, out: Path, gates: list[str]) -> Path:
    """A job: one quick step, then one step per gate that waits for ``out/gate``, then a
    last quick step."""
    append = system.script("append", APPEND)
    wait = system.script("wait_for_gate", WAIT_FOR_GATE)
    steps: list[dict[str, Any]] = [
        {"name": "prepare", "run": [PY, str(append), str(out / "prepare")], "timeout": 30}
    ]
    for gate in gates:
        run = [PY, str(wait), str(out / gate), str(out / f"step-{gate}")]
        steps.append({"name": f"wait-{gate}", "run": run, "timeout": 90})
    steps += [{"name": "finish", "run": [PY, str(append), str(out / "finish")], "timeout": 30}]
    return system.workflow("long-job", {"name": "long-job", "version": "1.0.0", "steps": steps})


def assert_each_event_once(logged: list[dict[str, Any]], published: list[dict[str, Any]]) -> None:
    """The operations log holds every event the agent published, each once, with no gap
    in any stream's sequence."""
    by_src: defaultdict[str, list[int]] = defaultdict(list)
    for event in logged:
        by_src[event["src"]].append(event["seq"])
    for src, seqs in by_src.items():
        assert len(seqs) == len(set(seqs)), f"a seq of {src} logged twice: {sorted(seqs)}"
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), f"gap in {src}: {seqs}"
    stored = {(e["src"], e["seq"]): e for e in logged}
    for event in published:
        key = (event["src"], event["seq"])
        assert key in stored, f"published but not in the operations log: {event}"
        assert stored[key]["type"] == event["type"]


def assert_phases_once(events: list[dict[str, Any]]) -> None:
    """Per deployment: one accepted, one preflight, one started, each step started and
    finished at most once, one end."""
    phases = Counter((e["type"], e.get("index")) for e in events)
    doubled = {phase: n for phase, n in phases.items() if n > 1}
    assert doubled == {}, f"events doubled: {doubled}"
    ends = [e["type"] for e in events if e["type"] in {"succeeded", "failed", "stopped"}]
    assert len(ends) == 1, f"not exactly one end: {ends}"


@pytest.mark.slow
async def test_broker_restart_and_agent_kill_mid_job_lose_and_double_nothing(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "job"
    out.mkdir()
    async with open_system(private_broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-long")
        workflow = long_job(system, out, ["a", "b"])
        deployed = await system.deploy(workflow, "edge-long")
        assert deployed.code == 0, str(deployed)
        dep = (await system.latest_deployment("edge-long"))["id"]
        await wait_for_file(out / "step-a.started")

        # the broker goes away; meanwhile the job moves on: its events wait in the outbox
        await system.stop_broker()
        (out / "a").touch()
        await wait_for_file(out / "step-b.started")
        await system.start_broker()
        # a live heartbeat (not the retained one kept across the restart): it is back
        await system.probe.wait_for(
            lambda m: (
                m.topic == root.status("edge-long") and not m.retain and b"online" in m.payload
            ),
            timeout=30,
            what="a live heartbeat of edge-long",
        )

        # and the agent dies hard while step b runs
        await agent.proc.kill()
        await system.start_agent("edge-long")
        (out / "b").touch()

        end = await system.wait_deployment(dep, END_STATES, timeout=60)
        # the step the agent died in cannot be carried on: the job is reported interrupted
        assert end["state"] == "failed", end
        assert "interrupted" in end["reason"], end
        assert "wait-b" in end["reason"], end
        logged = await system.logged_events("edge-long")
        assert_each_event_once(logged, system.events("edge-long"))
        mine = [e for e in logged if e["dep"] == dep]
        assert_phases_once(mine)
        # the last two were emitted while the broker was away: kept, and sent after
        before_the_kill = [(e["type"], e.get("index")) for e in mine[:8]]
        assert before_the_kill == [
            ("accepted", None),
            ("preflight", None),
            ("started", None),
            ("step-started", 0),
            ("step-finished", 0),
            ("step-started", 1),
            ("step-finished", 1),
            ("step-started", 2),
        ]
        assert (out / "step-a").read_text() == "done"


@pytest.mark.slow
async def test_a_cut_link_mid_job_loses_and_doubles_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "job"
    out.mkdir()
    async with (
        open_system(broker, root, tmp_path, procs) as system,
        open_link_proxy(broker) as link,
    ):
        await system.start_controller()
        await system.create_env("edge-cut")
        await system.start_agent("edge-cut", broker_url=link.url)
        deployed = await system.deploy(long_job(system, out, ["a"]), "edge-cut")
        assert deployed.code == 0, str(deployed)
        dep = (await system.latest_deployment("edge-cut"))["id"]
        await wait_for_file(out / "step-a.started")

        # the link breaks; the job finishes meanwhile, its events kept in the outbox
        mark = system.probe.mark()
        await link.cut()
        await system.probe.wait_json(root.view("edge-cut"), after=mark, status="offline")
        (out / "a").touch()
        await wait_for_file(out / "finish")
        await link.restore()

        end = await system.wait_deployment(dep, END_STATES)
        assert end["state"] == "succeeded", end
        logged = await system.logged_events("edge-cut")
        assert_each_event_once(logged, system.events("edge-cut"))
        assert [(e["type"], e.get("index")) for e in logged if e["dep"] == dep] == FULL_RUN


@pytest.mark.slow
async def test_events_whose_acks_are_lost_are_sent_again_and_stored_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "job"
    out.mkdir()
    events_topic = root.events("edge-link")
    async with (
        open_system(broker, root, tmp_path, procs) as system,
        open_link_proxy(broker) as link,
    ):
        await system.start_controller()
        await system.create_env("edge-link")
        await system.start_agent("edge-link", broker_url=link.url, extra=["--keepalive", "2"])
        deployed = await system.deploy(long_job(system, out, ["a"]), "edge-link")
        assert deployed.code == 0, str(deployed)
        dep = (await system.latest_deployment("edge-link"))["id"]
        await wait_for_file(out / "step-a.started")

        # the link turns one-way: the agent's events reach the broker, its acks never come
        link.blackhole()
        (out / "a").touch()
        await system.wait_event("edge-link", "succeeded", dep=dep)
        mark = system.probe.mark()
        # the agent gives the link up, connects again, and sends what was never acked
        await system.probe.wait_for(
            lambda m: m.topic == events_topic and b'"succeeded"' in m.payload,
            after=mark,
            timeout=30,
            what="the succeeded event sent again",
        )
        end = await system.wait_deployment(dep, END_STATES)
        assert end["state"] == "succeeded", end

        sent = Counter(
            (data["src"], data["seq"])
            for data in (json.loads(m.payload) for m in system.messages if m.topic == events_topic)
        )
        assert max(sent.values()) > 1, "the duplicates really went over the wire"
        logged = await system.logged_events("edge-link")
        assert_each_event_once(logged, system.events("edge-link"))
        assert [(e["type"], e.get("index")) for e in logged if e["dep"] == dep] == FULL_RUN


@pytest.mark.slow
async def test_a_queued_deployment_survives_a_controller_kill(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-queue")
        workflow = system.workflow("append", msgspec.to_builtins(append_workflow(system, counter)))
        queued = await system.deploy(workflow, "edge-queue", "--when-online")
        assert queued.code == 0, str(queued)
        dep = (await system.latest_deployment("edge-queue"))["id"]
        assert system.controller is not None
        await system.controller.kill()
        await system.start_controller()
        assert (await system.show_deployment(dep))["state"] == "queued"
        await system.start_agent("edge-queue")
        end = await system.wait_deployment(dep, END_STATES)
        assert end["state"] == "succeeded", end
        assert counter.read_text() == "run\n"


@pytest.mark.slow
async def test_a_queued_deployment_expires_on_time_across_a_controller_kill(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    counter = tmp_path / "runs.txt"
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-ttl")
        workflow = system.workflow("append", msgspec.to_builtins(append_workflow(system, counter)))
        queued = await system.deploy(workflow, "edge-ttl", "--when-online", "--ttl", "3")
        assert queued.code == 0, str(queued)
        dep = (await system.latest_deployment("edge-ttl"))["id"]
        assert system.controller is not None
        await system.controller.kill()
        await system.start_controller()
        back = time.time()  # the new controller is up: from here on, expiry is its job
        end = await system.wait_deployment(dep, END_STATES)
        assert end["state"] == "expired", end
        # On time: at its deadline (created + ttl), or as soon as the new controller is up
        # if that came later; never before it.
        assert end["expires"] == pytest.approx(end["created"] + 3, abs=0.01), end
        assert end["expires"] <= end["updated"] <= max(end["expires"], back) + 1.5, end
        # the agent that comes afterwards gets nothing to run
        await system.start_agent("edge-ttl")
        await system.barrier()
        assert not any(c.get("type") == "deploy" for c in system.commands("edge-ttl"))
        assert not counter.exists()


@pytest.mark.slow
async def test_a_retired_environment_stays_retired_across_a_controller_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-gone")
        retired = await system.cli("env", "retire", "edge-gone")
        assert retired.code == 0, str(retired)
        assert await agent.proc.wait(30) == 0
        assert system.controller is not None
        await system.controller.kill()
        await system.start_controller()
        status = await system.cli("status")
        assert status.code == 0, str(status)
        assert "edge-gone" not in status.stdout, str(status)
        assert await retained_now(broker, root.view("edge-gone"), root.status("edge-gone")) == {}
        workflow = system.workflow(
            "append", msgspec.to_builtins(append_workflow(system, tmp_path / "n"))
        )
        refused = await system.deploy(workflow, "edge-gone", "--when-online")
        assert refused.code != 0, str(refused)
        assert "retired" in refused.stderr, str(refused)


@pytest.mark.slow
@pytest.mark.parametrize("finish_while_down", [False, True], ids=["after-restart", "while-down"])
async def test_controller_kill_mid_deployment_still_follows_it_to_the_end(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    finish_while_down: bool,
) -> None:
    out = tmp_path / "job"
    out.mkdir()
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-ctl")
        deployed = await system.deploy(long_job(system, out, ["a"]), "edge-ctl")
        assert deployed.code == 0, str(deployed)
        dep = (await system.latest_deployment("edge-ctl"))["id"]
        await wait_for_file(out / "step-a.started")

        assert system.controller is not None
        await system.controller.kill()
        if finish_while_down:
            (out / "a").touch()
            await system.wait_event("edge-ctl", "succeeded", dep=dep)
        await system.start_controller()
        (out / "a").touch()

        end = await system.wait_deployment(dep, END_STATES, timeout=40)
        assert end["state"] == "succeeded", end
        logged = await system.logged_events("edge-ctl")
        assert_each_event_once(logged, system.events("edge-ctl"))
        assert [(e["type"], e.get("index")) for e in logged if e["dep"] == dep] == FULL_RUN
