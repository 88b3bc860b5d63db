"""The supervisor of ``edgeplane up`` and the demo, on small Python children: restarts with
backoff, status 2 (and a controller's 3) ends the run, the stop order, and SIGKILL for a
child that will not stop."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from edgeplane.controller.broker.supervisor import ChildFailed, ChildProcess, Supervisor
from edgeplane.controller.errors import AnotherController

# Exits 1 on its first run and 2 on its second (a run counter in argv[1]).
EXITS_1_THEN_2 = """
import sys
from pathlib import Path
runs = Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
sys.exit(1 if n == 1 else 2)
"""
# Writes its name to argv[1] on SIGTERM (or ignores SIGTERM when argv[2] says so).
STOPS_AND_SAYS = """
import signal, sys, time
name, ledger, mode = sys.argv[1], sys.argv[2], sys.argv[3]
def on_term(*_):
    with open(ledger, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def child(name: str, tmp_path: Path, script: str, *args: str) -> ChildProcess:
    argv = [sys.executable, "-c", script, *args]
    return ChildProcess(name, argv, dict(os.environ), tmp_path / f"{name}.log")


async def ready(*children: ChildProcess) -> None:
    """Each child has printed ``ready`` (its signal handler is in place)."""
    async with asyncio.timeout(15):
        for one in children:
            while "ready" not in one.tail():  # noqa: ASYNC110  # a log file has no event to wait on
                await asyncio.sleep(0.02)


async def test_a_child_that_exits_is_restarted_and_status_2_ends_it(tmp_path: Path) -> None:
    said: list[str] = []
    restarts: list[int] = []
    worker = child("worker", tmp_path, EXITS_1_THEN_2, str(tmp_path / "runs"))
    async with Supervisor(said.append) as supervisor:
        await supervisor.start(worker)
        with pytest.raises(ChildFailed, match="worker exited with status 2"):
            await asyncio.wait_for(supervisor.keep_running(lambda: restarts.append(1)), 15)
    assert (tmp_path / "runs").read_text() == "2"
    assert worker.restarts == 1
    assert restarts == [1]
    assert len(said) == 1
    assert "exited with status 1 unexpectedly: restarting it in" in said[0]


async def test_a_controller_that_found_another_one_active_is_not_restarted(
    tmp_path: Path,
) -> None:
    script = f"import sys; sys.exit({AnotherController.EXIT_STATUS})"
    refused = child("controller", tmp_path, script)
    async with Supervisor(lambda _: None) as supervisor:
        await supervisor.start(refused)
        with pytest.raises(ChildFailed, match="another controller is active") as failed:
            await asyncio.wait_for(supervisor.keep_running(), 15)
    assert "controller exited with status 3" in str(failed.value)
    assert refused.restarts == 0


async def test_children_stop_in_reverse_order_of_starting(tmp_path: Path) -> None:
    ledger = tmp_path / "stopped"
    first = child("first", tmp_path, STOPS_AND_SAYS, "first", str(ledger), "polite")
    second = child("second", tmp_path, STOPS_AND_SAYS, "second", str(ledger), "polite")
    async with Supervisor() as supervisor:
        await supervisor.start(first)
        await supervisor.start(second)
        await ready(first, second)
    assert ledger.read_text() == "second\nfirst\n"
    assert not first.running
    assert not second.running


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    said: list[str] = []
    stubborn = child(
        "stubborn", tmp_path, STOPS_AND_SAYS, "stubborn", str(tmp_path / "x"), "stubborn"
    )
    async with Supervisor(said.append, grace=0.5) as supervisor:
        await supervisor.start(stubborn)
        await ready(stubborn)
        process = stubborn.process
    assert process is not None
    assert process.returncode == -9
    assert said == ["stubborn did not stop within 0.5s: killed it"]
