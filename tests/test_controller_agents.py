"""The controller judging real edge agents (``python -m edge_agent run``), as processes."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY
from tests.support.controller import alerts, start_controller, stored_transitions, views
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc, start_proc


async def start_agent(
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
    env: str,
    *extra: str,
    interval: float = 0.5,
    state: str | None = None,
) -> Proc:
    args = ["run", "--env-id", env, "--broker", broker.url, "--topic-root", str(root)]
    args += ["--state-dir", str(tmp_path / (state or f"state-{env}"))]
    args += ["--heartbeat-interval", str(interval), "--log-format", "json"]
    args += ["--command-key", PUBLIC_KEY, *extra]
    proc = await start_proc(
        "edgeplane.edge_agent", args, tmp_path / f"agent-{env}-{len(procs)}.log"
    )
    procs.append(proc)
    return proc


def watching(broker: MosquittoProcess, root: TopicRoot) -> AbstractAsyncContextManager[Probe]:
    return open_probe(broker.url, root.all_views(), root.all_alerts(), root.controller_status())


@pytest.mark.slow
async def test_agent_online_then_clean_stop(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        agent = await start_agent(broker, root, tmp_path, procs, "edge-clean")
        await probe.wait_json(root.view("edge-clean"), status="online", timeout=20)
        assert await agent.terminate() == 0
        view = await probe.wait_json(root.view("edge-clean"), status="offline")
        assert view["reason"] == "shutdown"
        assert await controller.proc.terminate() == 0
    assert [t[2] for t in stored_transitions(controller.db, "edge-clean")] == [
        "heartbeat",
        "shutdown",
    ]


@pytest.mark.slow
async def test_killed_agent_is_offline_by_its_will(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        agent = await start_agent(broker, root, tmp_path, procs, "edge-killed", interval=10)
        await probe.wait_json(root.view("edge-killed"), status="online", timeout=20)
        await agent.kill()
        view = await probe.wait_json(root.view("edge-killed"), status="offline")
        assert view["reason"] == "connection-lost"


@pytest.mark.slow
async def test_frozen_agent_times_out_and_comes_back_when_thawed(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        agent = await start_agent(broker, root, tmp_path, procs, "edge-frozen", interval=0.5)
        await probe.wait_json(root.view("edge-frozen"), status="online", timeout=20)
        agent.freeze()
        view = await probe.wait_json(root.view("edge-frozen"), status="offline")
        assert view["reason"] == "heartbeat-timeout"
        mark = probe.mark()
        agent.thaw()
        back = await probe.wait_json(root.view("edge-frozen"), after=mark, status="online")
        assert back["reason"] == "heartbeat"


@pytest.mark.slow
async def test_controller_kill_and_restart_with_live_agents_changes_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    envs = ["edge-r1", "edge-r2", "edge-r3"]
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        for env in envs:
            await start_agent(broker, root, tmp_path, procs, env, interval=2)
            await probe.wait_json(root.view(env), status="online", timeout=20)
        await first.proc.kill()
        mark = probe.mark()
        await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        # the re-judging of the retained statuses would show at once; heartbeats keep coming
        await expect_quiet(probe, root, envs, after=mark)
        assert alerts(probe, root) == []
    for env in envs:
        assert [t[:3] for t in stored_transitions(first.db, env)] == [
            ("unknown", "online", "heartbeat")
        ]


async def expect_quiet(probe: Probe, root: TopicRoot, envs: list[str], *, after: int) -> None:
    """Nothing on the views for envs for 4 s: waiting for a message that must not come."""
    with pytest.raises(AssertionError, match="timed out"):
        await probe.wait_for(
            lambda m: m.topic in {root.view(env) for env in envs},
            after=after,
            timeout=4.0,
            what="no view message",
        )
    for env in envs:
        assert views(probe, root, env, after=after) == []


@pytest.mark.slow
async def test_broker_restart_agents_reconnect_and_views_converge(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    envs = ["edge-b1", "edge-b2"]
    async with watching(private_broker, root) as probe:
        controller = await start_controller(private_broker, root, tmp_path, procs, probe)
        for env in envs:
            await start_agent(private_broker, root, tmp_path, procs, env, interval=2)
            await probe.wait_json(root.view(env), status="online", timeout=20)
    private_broker.stop()
    private_broker.start()
    async with watching(private_broker, root) as probe:
        await probe.wait_json(
            root.controller_status(), status="online", boot=controller.boot, timeout=40
        )
        # the views converge: every agent online again, as the controller judges it
        for env in envs:
            await probe.wait_json(root.view(env), status="online", timeout=40)
    code_proc = await start_proc(
        "edgeplane.controller",
        ["status", "--json", "--broker", private_broker.url, "--topic-root", str(root)],
        tmp_path / "status.log",
    )
    procs.append(code_proc)
    assert await code_proc.wait(30) == 0
    rows = json.loads(code_proc.output())
    # beside the agents, the default cloud environment that every controller makes sure of
    expected = {(env, "online") for env in envs} | {("default-cloud", "unknown")}
    assert {(r["env"], r["status"]) for r in rows} == expected


@pytest.mark.slow
async def test_a_second_runtime_on_one_identity_raises_the_conflict_within_10_s_by_default(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """A cloned disk: the agent running there is taken over, takes its session back at
    once and says so; every setting at its default (heartbeats every 10 s, the takeover
    backoff of 60 s, the identity window)."""
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        await start_agent(broker, root, tmp_path, procs, "edge-clone", interval=10, state="a")
        await probe.wait_json(root.view("edge-clone"), status="online", timeout=20)
        mark = probe.mark()
        await start_agent(broker, root, tmp_path, procs, "edge-clone", interval=10, state="b")
        # the requirement is the number: the wait's timeout is the assertion
        raised = await probe.wait_json(
            root.alerts("edge-clone"),
            after=mark,
            kind="identity-conflict",
            state="raised",
            timeout=10,
        )
        assert raised["env"] == "edge-clone"


@pytest.mark.slow
async def test_two_agents_on_one_identity_raise_one_conflict(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        for state in ("twin-a", "twin-b"):
            await start_agent(
                broker, root, tmp_path, procs, "edge-twin", "--takeover-backoff", "0.5",
                interval=0.5, state=state,
            )  # fmt: skip
        raised = await probe.wait_json(
            root.alerts("edge-twin"), kind="identity-conflict", state="raised", timeout=30
        )
        assert raised["env"] == "edge-twin"
        # they keep fighting over the identity: still one raise, never a stream
        mark = probe.mark()
        with pytest.raises(AssertionError, match="timed out"):
            await probe.wait_json(
                root.alerts("edge-twin"),
                after=mark,
                kind="identity-conflict",
                state="raised",
                timeout=4.0,
            )
