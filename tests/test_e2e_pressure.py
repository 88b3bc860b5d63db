"""Resource pressure and link quality through the real controller, with heartbeats made by
hand (a probe publishing an agent's retained status): what ``R/alerts/{env}``, the retained
view, ``status`` and ``env show`` say."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc, start_proc
from tests.support.system import System, open_system

ENV = "edge-disk"


async def beat(system: System, env: str, seq: int, *, bdseq: int = 1, **figures: Any) -> None:
    payload = {"status": "online", "env": env, "bdseq": bdseq, "seq": seq, "interval": 30,
               "boot": "boot-a", **figures}  # fmt: skip
    await system.probe.publish(system.root.status(env), json.dumps(payload), retain=True)


def pressure_alerts(system: System, env: str) -> list[tuple[str, str, str]]:
    found = [json.loads(m.payload) for m in system.messages if m.topic == system.root.alerts(env)]
    return [(a["kind"], a["state"], a["detail"]) for a in found if a["kind"].endswith("pressure")]


def status_rows(text: str) -> dict[str, list[str]]:
    lines = [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]
    return {row[0]: row for row in lines}


@pytest.mark.slow
async def test_full_disk_three_times_raises_one_alert_and_back_to_half_clears_it(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env(ENV)
        probe = system.probe
        for seq in range(2):
            await beat(system, ENV, seq, disk=97.0)
        await probe.wait_json(root.view(ENV), status="online")
        mark = probe.mark()
        await beat(system, ENV, 2, disk=97.0)
        raised = await probe.wait_json(root.alerts(ENV), kind="disk-pressure", after=mark)
        assert (raised["state"], raised["detail"]) == ("raised", "disk 97 % >= 90 %")
        view = await probe.wait_json(root.view(ENV), pressure=["disk"], after=mark)
        assert view["status"] == "online"
        for seq in range(3, 6):  # still full: the same episode, no second alert
            await beat(system, ENV, seq, disk=98.0)

        shown = await system.cli_json("status")
        assert {row["env"]: row["pressure"] for row in shown}[ENV] == ["disk"]
        table = await system.cli("status")
        header = ["ENV", "STATUS", "SINCE", "FLAPPING", "INCIDENTS", "LAST HEARTBEAT", "LINK"]
        assert re.split(r"\s{2,}", table.stdout.splitlines()[0].strip())[:8] == [
            *header,
            "PRESSURE",
        ]
        assert status_rows(table.stdout)[ENV][7] == "disk"
        info = await system.cli_json("env", "show", ENV)
        assert info["pressure"] == ["disk"]
        text = await system.cli("env", "show", ENV)
        assert "pressure:  disk over threshold" in text.stdout

        mark = probe.mark()
        for seq in range(6, 9):
            await beat(system, ENV, seq, disk=50.0)
        cleared = await probe.wait_json(root.alerts(ENV), kind="disk-pressure", after=mark)
        assert (cleared["state"], cleared["detail"]) == ("cleared", "disk 50 % < 85 %")
        await probe.wait_json(root.view(ENV), pressure=[], after=mark)
        await system.barrier()
        assert pressure_alerts(system, ENV) == [
            ("disk-pressure", "raised", "disk 97 % >= 90 %"),
            ("disk-pressure", "cleared", "disk 50 % < 85 %"),
        ]
    with sqlite3.connect(system.db) as conn:
        stored = conn.execute("SELECT kind, state FROM alerts WHERE env = ?", (ENV,)).fetchall()
    assert stored == [("disk-pressure", "raised"), ("disk-pressure", "cleared")]


@pytest.mark.slow
async def test_an_open_episode_survives_a_restart_without_being_raised_twice(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        controller = await system.start_controller("--memory-threshold", "80")
        probe = system.probe
        for seq in range(3):
            await beat(system, ENV, seq, mem=85.5)
        raised = await probe.wait_json(root.alerts(ENV), kind="memory-pressure")
        assert (raised["state"], raised["detail"]) == ("raised", "mem 85.5 % >= 80 %")
        await probe.wait_json(root.view(ENV), pressure=["mem"])
        assert await controller.terminate() == 0

        mark = probe.mark()
        await system.start_controller("--memory-threshold", "80")
        for seq in range(3, 6):
            await beat(system, ENV, seq, mem=90.0)
        for seq in range(6, 9):
            await beat(system, ENV, seq, mem=10.0)
        cleared = await probe.wait_json(root.alerts(ENV), kind="memory-pressure", after=mark)
        assert cleared["state"] == "cleared"  # the first edge after the restart
        # the restored episode needed no new view until it cleared
        views = [json.loads(m.payload) for m in system.messages[mark:] if m.topic == root.view(ENV)]
        assert [v["pressure"] for v in views] == [[]]
        assert [state for _, state, _ in pressure_alerts(system, ENV)] == ["raised", "cleared"]


@pytest.mark.slow
async def test_gaps_in_seq_show_as_the_share_of_heartbeats_missed(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        probe = system.probe
        await beat(system, "edge-link", 0)
        first = await probe.wait_json(root.view("edge-link"), status="online")
        assert (first["missed_pct"], first["reconnects_1h"]) == (0.0, 0)
        await beat(system, "edge-link", 1)
        await beat(system, "edge-link", 5)  # 2, 3 and 4 never came: 3 of 6
        view = await probe.wait_json(root.view("edge-link"), missed_pct=50.0)
        assert view["reconnects_1h"] == 0

        rows = {row["env"]: row for row in await system.cli_json("status")}
        assert (rows["edge-link"]["missed_pct"], rows["edge-link"]["reconnects_1h"]) == (50.0, 0)
        table = await system.cli("status")
        assert status_rows(table.stdout)["edge-link"][6] == "50%, 0 reconn."
        info = await system.cli_json("env", "show", "edge-link")
        assert (info["missed_pct"], info["reconnects_1h"]) == (50.0, 0)
        text = await system.cli("env", "show", "edge-link")
        assert "50% of heartbeats missed, 0 reconnects in the last hour" in text.stdout


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--disk-threshold", "0"), ("--cpu-threshold", "101"), ("--memory-threshold", "lots")],
)
async def test_a_bad_threshold_is_one_line_and_exit_2(
    tmp_path: Path, procs: list[Proc], flag: str, value: str
) -> None:
    args = ["controller", "run", "--db", str(tmp_path / "c.db"), flag, value]
    proc = await start_proc("edgeplane.controller", args, tmp_path / "controller.log")
    procs.append(proc)
    assert await proc.wait(timeout=30) == 2
    lines = proc.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert flag in lines[0]
    assert "percentage above 0 and at most 100" in lines[0]
