"""Retention through a real controller: a flood of rejected garbage commands' events is
pruned to the newest per environment, and after a restart an old event sent again is not
taken as new."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import start_controller
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc
from tests.support.system import wait_until

KEEP = 50


def seqs(db: Path, env: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT seq FROM oplog WHERE env = ? ORDER BY seq", (env,))
        return [int(row[0]) for row in found.fetchall()]


async def rejected(probe: Probe, root: TopicRoot, env: str, seq: int, reason: str) -> None:
    event = {"type": "rejected", "env": env, "seq": seq, "src": "agent", "reason": reason}
    await probe.publish(root.events(env), json.dumps(event).encode())


@pytest.mark.slow
async def test_a_flood_of_rejected_commands_is_pruned_and_stays_pruned_after_a_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    flags = ("--retention-per-env", str(KEEP), "--retention-every", "0.5")
    async with open_probe(broker.url, root.controller_status()) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe, *flags)
        for seq in range(400):
            await rejected(probe, root, "noisy", seq, "not a command: garbage")
        for seq in range(5):
            await rejected(probe, root, "calm", seq, "bad signature")
        db = controller.db
        await wait_until(
            lambda: seqs(db, "noisy") == list(range(400 - KEEP, 400)), "the flood pruned"
        )
        assert seqs(db, "calm") == list(range(5))  # nothing else lost
        assert await controller.proc.terminate() == 0
        assert "history pruned" in controller.proc.output()

        again = await start_controller(broker, root, tmp_path, procs, probe, *flags, db=db)
        await rejected(probe, root, "noisy", 10, "sent again")  # its row was pruned
        await rejected(probe, root, "noisy", 400, "new")
        await wait_until(lambda: 400 in seqs(db, "noisy"), "the new event stored")
        assert 10 not in seqs(db, "noisy")  # the old one was not taken again
        assert len(seqs(db, "noisy")) <= KEEP + 1
        assert await again.proc.terminate() == 0
