"""What ``status``, ``watch`` and ``env show`` show is true: stale views are marked (the
controller stopped, an agent killed behind it), ``watch`` is complete from its first frame
and outlives a broker restart, and heartbeat ages are right on both brokers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeplane.controller.broker.embedded import EmbeddedBroker, embedded_available
from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.operator.board import STALE_EXIT, collect_board
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import start_agent
from tests.support.board import first_frame, publish_controller, publish_heartbeat, publish_view
from tests.support.probe import open_probe
from tests.support.procs import Proc, start_proc
from tests.support.system import open_system

FLEET = 200  # retained views the watch starts against
STARTS = 50


async def wait_for_output(proc: Proc, text: str, timeout: float = 20.0) -> str:
    """Poll a process's output file for ``text`` (an event, with a timeout); the output."""
    async with asyncio.timeout(timeout):
        # a file has no change event to wait on: poll it
        while text not in proc.output():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return proc.output()


# --- stale views ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_stopped_controller_with_an_agent_killed_behind_it_shows_stale_views(
    stop: signal.Signals,
    broker: MosquittoProcess,
    root: TopicRoot,
    tmp_path: Path,
    procs: list[Proc],
) -> None:
    env = "edge-stale"
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online(env)
        fresh = await system.cli("status", "--json")
        assert fresh.code == 0, str(fresh)
        assert {row["env"]: row["stale"] for row in fresh.json()}[env] is False

        assert system.controller is not None
        mark = system.probe.mark()
        system.controller.signal(stop)
        await system.controller.wait()
        await system.probe.wait_json(root.controller_status(), after=mark, status="offline")
        await agent.proc.kill()  # its will: offline/connection-lost, retained
        await system.probe.wait_json(
            root.status(env), after=mark, status="offline", reason="connection-lost"
        )
        assert [json.loads(m.payload)["status"] for m in system.probe.on(root.view(env))][
            -1
        ] == "online", "the view still says online: nobody judges any more"

        result = await system.cli("status", "--json")
        assert result.code == STALE_EXIT, str(result)
        assert "controller offline" in result.stderr
        rows = {row["env"]: row for row in result.json()}
        assert all(row["stale"] for row in rows.values())
        assert rows[env]["status"] == "offline"  # the agent's own word, not the stale view's
        assert rows[env]["reason"] == "connection-lost"
        assert rows[env]["view_status"] == "online"

        table = await system.cli("status")
        assert table.code == STALE_EXIT, str(table)
        assert table.stderr.startswith("edgeplane: controller offline"), str(table)
        line = next(line for line in table.stdout.splitlines() if line.startswith(env))
        assert "offline (stale view: online)" in line
        assert "connection-lost" in line
        assert "default-cloud  unknown (stale)" in table.stdout

        shown = await system.cli("env", "show", env)
        assert shown.code == STALE_EXIT, str(shown)
        assert "controller offline" in shown.stderr
        assert "offline (stale view: online): connection-lost" in shown.stdout
        as_json = await system.cli("env", "show", env, "--json")
        assert as_json.code == STALE_EXIT, str(as_json)
        assert as_json.json()["stale"] is True
        assert as_json.json()["status"] == "offline"


# --- watch: the first frame -----------------------------------------------------------------
@pytest.fixture
async def fleet(broker: MosquittoProcess, root: TopicRoot) -> float:
    """``FLEET`` retained views of online environments, each with its retained heartbeat
    (2 s old by its expiry when published; the views' ``last_seen`` says long ago), and a
    controller that says it is online. Yields when the heartbeats were published."""
    envs = [f"edge-{index:03d}" for index in range(FLEET)]
    async with open_probe(broker.url) as probe:
        await publish_controller(probe, root)
        for env in envs:
            await publish_view(probe, root, env, last_seen=time.time() - 1000)
        published = time.time()
        for env in envs:
            await publish_heartbeat(probe, root, env, expiry=88)  # interval 30: 90 s in all
    return published


@pytest.mark.slow
async def test_watch_shows_every_view_and_its_heartbeat_age_from_its_first_frame(
    broker: MosquittoProcess, root: TopicRoot, fleet: float, tmp_path: Path, procs: list[Proc]
) -> None:
    for start in range(STARTS):
        rows = await first_frame(broker.url, root)
        assert len(rows) == FLEET, f"start {start}: the first frame showed {len(rows)} rows"
        truth = time.time() - fleet + 2
        ages = sorted(row.heartbeat_age or 0.0 for row in rows)
        shown = f"start {start}: ages {ages[0]}..{ages[-1]}, truth {truth:.1f}"
        assert truth - 1.5 <= ages[0], shown
        assert ages[-1] <= truth + 1.5, shown
        assert not any(row.stale for row in rows)

    # and as the user runs it (stdout not a terminal: one frame after another)
    args = ["watch", "--broker", broker.url, "--topic-root", str(root)]
    watcher = await start_proc("edgeplane.controller", args, tmp_path / "watch.log")
    procs.append(watcher)
    output = await wait_for_output(watcher, "\n\nENV")  # the second frame began
    first = output.split("\n\n")[0]
    assert len([line for line in first.splitlines() if line.startswith("edge-")]) == FLEET
    assert "17m ago" not in first, "heartbeat ages from the expiry, not the views' last_seen"
    watcher.signal(signal.SIGINT)
    assert await watcher.wait() == 0


# --- watch: a broker restart ----------------------------------------------------------------
@pytest.mark.slow
async def test_watch_outlives_a_broker_restart_and_shows_the_state_after_it(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_probe(private_broker.url) as probe:
        await publish_controller(probe, root)
        await publish_view(probe, root, "edge-before")
    args = ["watch", "--broker", private_broker.url, "--topic-root", str(root)]
    watcher = await start_proc("edgeplane.controller", args, tmp_path / "watch.log")
    procs.append(watcher)
    await wait_for_output(watcher, "edge-before")

    private_broker.stop()
    await wait_for_output(watcher, "broker lost")
    assert "reconnecting" in watcher.output()
    private_broker.start()
    async with open_probe(private_broker.url) as probe:
        await publish_view(probe, root, "edge-after", "offline")
    output = await wait_for_output(watcher, "edge-after")
    last = output.rsplit("\n\n", 1)[-1]
    assert "edge-before" in last, "the retained state, read again after the reconnect"
    assert watcher.process.returncode is None
    watcher.signal(signal.SIGINT)
    assert await watcher.wait() == 0


# --- heartbeat age on both brokers ----------------------------------------------------------
@pytest.fixture(params=["mosquitto", "embedded"])
async def any_broker(
    request: pytest.FixtureRequest, broker: MosquittoProcess, tmp_path: Path
) -> AsyncIterator[str]:
    """The session's mosquitto, or an embedded broker (rumqttd) of this test's own."""
    if request.param == "mosquitto":
        yield broker.url
        return
    if not embedded_available():
        pytest.skip("the embedded broker (iotcore) is not installed")
    embedded = EmbeddedBroker(tmp_path / "embedded")
    embedded.start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


@pytest.mark.slow
async def test_the_heartbeat_age_is_within_a_second_of_the_truth_on_both_brokers(
    any_broker: str, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """Read three times in one heartbeat interval, in three ways: the embedded broker
    (rumqttd) takes a retained message's age off its stored expiry for every filter any
    client subscribes, so the remaining expiry alone is seconds off by the second read."""
    env, interval = "edge-age", 10
    url = BrokerUrl.parse(any_broker)
    async with open_probe(any_broker, root.status(env)) as probe:
        await publish_controller(probe, root)
        await publish_view(probe, root, env)
        await start_agent(
            procs, tmp_path, any_broker, root, env, "--heartbeat-interval", str(interval)
        )
        await probe.wait_json(root.status(env), status="online", timeout=20)
        mark = probe.mark()
        await probe.wait_json(root.status(env), after=mark, status="online", timeout=20)
        heard = time.time()  # a heartbeat arrived just now (live): the truth is counted here

        async def until(phase: float) -> None:
            await asyncio.sleep(max(0.0, heard + phase - time.time()))

        readings: list[tuple[str, float, float, float]] = []  # way, age, truth from, truth to
        await until(1.2)
        board = await collect_board(url, root, env=env)
        (row,) = board.rows()
        readings.append(("status", row.heartbeat_age or -1, time.time() - heard, 0.0))
        await until(2.6)
        (row,) = await first_frame(any_broker, root)
        readings.append(("watch", row.heartbeat_age or -1, time.time() - heard, 0.0))
        await until(3.4)
        started = time.time() - heard
        args = ["status", "--json", "--broker", any_broker, "--topic-root", str(root)]
        cli = await start_proc("edgeplane.controller", args, tmp_path / "status.log")
        procs.append(cli)
        assert await cli.wait(timeout=30) == 0, cli.output()
        (shown,) = json.loads(cli.output())
        readings.append(("status --json", shown["heartbeat_age"], started, time.time() - heard))
        assert len(probe.messages) == mark + 1, "no heartbeat came in between"

    for way, age, truth, truth_to in readings:
        low, high = truth - 1.05, max(truth, truth_to) + 1.05
        assert low <= age <= high, f"{way}: heartbeat age {age}, truth {truth:.2f}..{truth_to:.2f}"
