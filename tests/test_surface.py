"""A minimal management surface: the agent and the controller listen on nothing, and the
only connection either keeps is to the broker (the source document's "minimal management
surface on edge nodes")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.system import open_system

pytestmark = pytest.mark.slow


def _sockets(pid: int) -> list[Any]:
    """The internet sockets of ``pid`` and of its children (a step, a service)."""
    process = psutil.Process(pid)
    found = list(process.net_connections(kind="inet"))
    for child in process.children(recursive=True):
        try:
            found += child.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
    return found


def _listening(pid: int) -> list[str]:
    return [f"{c.laddr}" for c in _sockets(pid) if c.status == psutil.CONN_LISTEN]


def _peers(pid: int) -> set[int]:
    return {c.raddr.port for c in _sockets(pid) if c.raddr}


async def test_the_agent_and_the_controller_listen_on_nothing_and_talk_only_to_the_broker(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-a")
        assert system.controller is not None
        marker = tmp_path / "ran"
        script = system.script("touch", "import pathlib, sys\npathlib.Path(sys.argv[1]).touch()\n")
        workflow = system.workflow(
            "touch",
            {
                "name": "touch",
                "version": "1.0.0",
                "steps": [{"name": "t", "run": [sys.executable, str(script), str(marker)]}],
            },
        )
        result = await system.deploy(workflow, "edge-a", "--wait")
        assert result.code == 0, str(result)
        for name, pid in (("agent", agent.proc.pid), ("controller", system.controller.pid)):
            assert _listening(pid) == [], f"the {name} listens on {_listening(pid)}"
            assert _peers(pid) <= {broker.port}, f"the {name} talks to ports {_peers(pid)}"
            assert broker.port in _peers(pid), f"the {name} has no connection to the broker"
