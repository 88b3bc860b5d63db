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
from edgeplane.controller.operator.board import (
    STALE_EXIT,
    Board,
    render_json,
    render_table,
    stale_note,
)
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
    note, shown = output.split("\n", 1)
    assert (code, json.loads(shown)) == (STALE_EXIT, [])
    assert note.startswith("edgeplane: no controller status under this topic root")
    code, output = await run_cli(tmp_path, procs, "status", *flags)
    assert code == STALE_EXIT  # nothing is stale, but no controller runs: scripts notice
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


# --- the board, as pure logic ---------------------------------------------------------------
ROOT = TopicRoot("edgeplane/v1")
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def view(env: str, status: str = "online", since: float = NOW - 600) -> bytes:
    return json.dumps({"env": env, "status": status, "since": since}).encode()


def controller(status: str, **fields: object) -> bytes:
    return json.dumps({"status": status, "since": NOW - 3600, **fields}).encode()


def test_with_the_controller_online_nothing_is_stale_and_the_view_is_what_is_shown() -> None:
    board = Board(ROOT, clock=Clock())
    board.take(ROOT.controller_status(), controller("online"), True, None)
    board.take(ROOT.view("e1"), view("e1"), True, None)
    board.take(ROOT.status("e1"), will_payload("e1"), True, None)  # the controller judges
    (row,) = board.rows()
    assert (row.status, row.stale, row.shown_status) == ("online", False, "online")
    assert stale_note(board) is None
    assert not board.stale


def test_stale_views_are_marked_and_the_agents_own_status_wins_over_them() -> None:
    clock = Clock()
    board = Board(ROOT, clock=clock)
    goodbye = controller("offline", reason="shutdown", at=NOW - 60)
    board.take(ROOT.controller_status(), goodbye, True, None)
    board.take(ROOT.view("dead"), view("dead"), True, None)
    board.take(ROOT.status("dead"), will_payload("dead"), True, None)
    board.take(ROOT.view("fine"), view("fine"), True, None)
    board.take(ROOT.status("fine"), status_payload("fine", interval=10), True, 28)
    board.take(ROOT.view("silent"), view("silent"), True, None)
    board.take(ROOT.status("silent"), status_payload("silent", interval=10), False, 30)
    board.take(ROOT.view("back"), view("back", "offline"), True, None)
    board.take(ROOT.status("back"), status_payload("back", interval=10), False, 30)
    board.take(ROOT.view("never"), view("never", "unknown"), True, None)
    clock.now += 5
    rows = {row.env: row for row in board.rows()}
    assert all(row.stale and row.stale_since == NOW - 60 for row in rows.values())
    assert (rows["dead"].status, rows["dead"].reason, rows["dead"].since) == (
        "offline", "connection-lost", None
    )  # fmt: skip
    assert rows["dead"].shown_status == "offline (stale view: online)"
    assert (rows["fine"].status, rows["fine"].shown_status) == ("online", "online (stale)")
    assert rows["fine"].heartbeat_age == 7.0  # 2 s old by its expiry, 5 s ago
    assert rows["back"].status == "online"  # heard 5 s ago: the agent came back
    assert rows["never"].shown_status == "unknown (stale)"
    clock.now += 30  # "silent" heard 35 s ago, at a 10 s interval
    assert {row.env: row.status for row in board.rows()}["silent"] == "offline"
    shown = json.loads(render_json(board.rows()))[0]
    assert {k: shown[k] for k in ("env", "status", "stale", "view_status", "stale_since")} == {
        "env": "back", "status": "offline", "stale": True, "view_status": "offline",
        "stale_since": NOW - 60,
    }  # fmt: skip
    table = render_table(board.rows(), now=clock.now)
    assert "dead    offline (stale view: online)  -" in table


def test_the_note_on_top_of_stale_views_says_what_is_known_of_the_controller() -> None:
    board = Board(ROOT, clock=Clock())
    assert "no controller status under this topic root" in (stale_note(board) or "")
    goodbye = controller("offline", reason="shutdown", at=NOW - 10)
    board.take(ROOT.controller_status(), goodbye, True, None)
    note = stale_note(board, clock=lambda: NOW) or ""
    assert note.startswith("controller offline since ")
    assert note.endswith("(10s ago) (shutdown): views are as of then")
    will = controller("offline", reason="connection-lost", at=NOW - 99)
    board.take(ROOT.controller_status(), will, True, None)
    note = stale_note(board, clock=lambda: NOW) or ""
    assert note.startswith("controller offline: its connection was lost (connected at ")
    assert "it was up since" in note
    assert [board.stale_since] == [None]  # a retained will: when it was lost is not known
    live_will = controller("offline", reason="connection-lost")
    board.take(ROOT.controller_status(), live_will, False, None)
    assert board.stale_since == NOW  # the will arrived just now
    older = controller("offline")  # an older controller's: no reason, no time
    board.take(ROOT.controller_status(), older, True, None)
    assert (stale_note(board, clock=lambda: NOW) or "").endswith("views may be stale")
    board.take(ROOT.controller_status(), controller("online"), False, None)
    assert stale_note(board) is None


def test_two_copies_of_a_retained_status_tell_a_broker_that_consumes_its_expiry() -> None:
    clock = Clock()
    board = Board(ROOT, clock=clock)
    board.take(ROOT.controller_status(), controller("online"), True, None)
    for env in ("e1", "e2", "e3"):
        board.take(ROOT.view(env), view(env), True, None)
    # mosquitto: the same remaining expiry twice; the age from it
    board.take(ROOT.status("e1"), status_payload("e1", interval=10), True, 26)
    board.take(ROOT.status("e1"), status_payload("e1", interval=10), True, 26)
    assert [board.consumes_expiry] == [False]
    assert next(row.heartbeat_age for row in board.rows()) == 4.0
    # rumqttd: the second copy 7 s shorter, from an age of 7 s (the expiry had said 12)
    board.take(ROOT.status("e2"), status_payload("e2", interval=10), True, 18)
    board.take(ROOT.status("e2"), status_payload("e2", interval=10), True, 11)
    board.take(ROOT.status("e3"), status_payload("e3", interval=10), True, 25)
    board.take(ROOT.status("e3"), status_payload("e3", interval=10), True, 25)
    assert board.consumes_expiry
    ages = {row.env: row.heartbeat_age for row in board.rows()}
    assert ages == {"e1": 0.5, "e2": 7.5, "e3": 0.5}
    # a live heartbeat is 0 s old when it arrives, whatever the broker
    board.take(ROOT.status("e2"), status_payload("e2", interval=10, seq=1), False, 30)
    clock.now += 2
    assert {row.env: row.heartbeat_age for row in board.rows()}["e2"] == 2.0
