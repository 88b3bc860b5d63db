"""``edgeplane status`` and ``edgeplane watch`` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.controller.operator.board import Board, render_table
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import start_controller, status_payload, will_payload
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc, start_proc


async def publish_heartbeat(probe: Probe, root: TopicRoot, env: str, expiry: int) -> None:
    """As the agent does: retained, with a message expiry of about three intervals."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = expiry
    await probe.client.publish(
        root.status(env), status_payload(env), qos=1, retain=True, properties=properties
    )


async def run_cli(tmp_path: Path, procs: list[Proc], *args: str) -> tuple[int, str]:
    proc = await start_proc("edgeplane.controller", list(args), tmp_path / f"cli-{len(procs)}.log")
    procs.append(proc)
    code = await proc.wait(timeout=30)
    return code, proc.output()


@pytest.mark.slow
async def test_status_json_lists_every_environment_with_its_heartbeat_age(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_probe(broker.url, root.all_views(), root.controller_status()) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        await publish_heartbeat(probe, root, "edge-a", expiry=90)
        await probe.publish(root.status("edge-b"), status_payload("edge-b"), retain=True)
        await probe.wait_json(root.view("edge-b"), status="online")
        await probe.publish(root.status("edge-b"), will_payload("edge-b"), retain=True)
        await probe.wait_json(root.view("edge-b"), status="offline")
        await probe.wait_json(root.view("edge-a"), status="online")

    flags = ["--broker", broker.url, "--topic-root", str(root)]
    code, output = await run_cli(tmp_path, procs, "status", "--json", *flags)
    assert code == 0, output
    rows = {row["env"]: row for row in json.loads(output)}
    # beside the agents, the default cloud environment every controller makes sure of
    assert sorted(rows) == ["default-cloud", "edge-a", "edge-b"]
    assert rows["default-cloud"]["status"] == "unknown"
    assert rows["edge-a"]["status"] == "online"
    assert rows["edge-a"]["flapping"] is False
    assert 0 <= rows["edge-a"]["heartbeat_age"] < 5
    assert rows["edge-b"]["status"] == "offline"
    assert rows["edge-b"]["reason"] == "connection-lost"
    assert rows["edge-b"]["since"] >= rows["edge-a"]["since"]

    code, table = await run_cli(tmp_path, procs, "status", *flags)
    assert code == 0, table
    lines = table.strip().splitlines()
    assert lines[0].split()[:4] == ["ENV", "STATUS", "SINCE", "FLAPPING"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["default-cloud", "unknown"], ["edge-a", "online"], ["edge-b", "offline"],
    ]  # fmt: skip


@pytest.mark.slow
async def test_status_with_no_views_says_so(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    flags = ["--broker", broker.url, "--topic-root", str(root)]
    code, output = await run_cli(tmp_path, procs, "status", "--json", *flags)
    assert (code, json.loads(output)) == (0, [])
    code, output = await run_cli(tmp_path, procs, "status", *flags)
    assert code == 0
    assert "no environments" in output


async def test_status_without_a_broker_is_one_line_and_non_zero(
    tmp_path: Path, procs: list[Proc]
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    code, output = await run_cli(tmp_path, procs, "status", "--broker", url, "--timeout", "2")
    assert code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert url in lines[0]


@pytest.mark.slow
async def test_watch_redraws_as_views_change_and_stops_on_ctrl_c(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_probe(broker.url, root.all_views(), root.controller_status()) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        args = ["watch", "--broker", broker.url, "--topic-root", str(root)]
        watcher = await start_proc("edgeplane.controller", args, tmp_path / "watch.log")
        procs.append(watcher)
        await wait_for_output(watcher, "default-cloud  unknown")  # made sure of at start
        await probe.publish(root.status("edge-w"), status_payload("edge-w"), retain=True)
        await wait_for_output(watcher, "edge-w         online")
        await probe.publish(root.status("edge-w"), will_payload("edge-w"), retain=True)
        await wait_for_output(watcher, "edge-w         offline")
        watcher.signal(signal.SIGINT)
        assert await watcher.wait() == 0


async def wait_for_output(proc: Proc, text: str, timeout: float = 15.0) -> None:
    """Poll a process's output file for ``text`` (an event, with a timeout)."""
    async with asyncio.timeout(timeout):
        # a file has no change event to wait on: poll it
        while text not in proc.output():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def test_board_ages_come_from_the_remaining_message_expiry() -> None:
    root = TopicRoot("edgeplane/v1")
    board = Board(root, clock=lambda: 1000.0)
    view = b'{"env":"e1","status":"online","since":900.0,"last_seen":950.0}'
    assert board.take(root.view("e1"), view, True, None)
    # interval 30: retained with 90 s expiry, 84 s left -> heard 6 s ago
    assert board.take(root.status("e1"), status_payload("e1"), True, 84)
    assert [r.heartbeat_age for r in board.rows()] == [6.0]
    # a live heartbeat is fresh
    assert board.take(root.status("e1"), status_payload("e1"), False, 90)
    assert [r.heartbeat_age for r in board.rows()] == [0.0]
    # garbage and cleared views
    assert not board.take(root.status("e1"), b"nonsense", True, None)
    assert board.take(root.view("e1"), b"", True, None)
    assert board.rows() == []


def test_board_without_expiry_falls_back_to_the_views_last_seen() -> None:
    root = TopicRoot("edgeplane/v1")
    board = Board(root, clock=lambda: 1000.0)
    board.take(root.view("e1"), b'{"env":"e1","status":"offline","since":990.0}', True, None)
    board.take(root.view("e2"), b'{"env":"e2","status":"online","since":1.0,"last_seen":940.0}',
               True, None)  # fmt: skip
    rows = board.rows()
    assert [(r.env, r.heartbeat_age) for r in rows] == [("e1", None), ("e2", 60.0)]
    table = render_table(rows, now=1000.0)
    assert "never" in table.splitlines()[1]
    assert "10s ago" in table.splitlines()[1]
