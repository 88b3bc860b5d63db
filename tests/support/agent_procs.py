"""Real agent processes for end-to-end tests: started with a short heartbeat interval and
JSON logs, waited for until online."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY
from tests.support.probe import Probe
from tests.support.procs import PipedProc, Proc, start_piped_proc, start_proc

__all__ = ["INTERVAL", "start_agent", "start_piped_agent", "wait_online"]

INTERVAL = 0.5


async def start_agent(
    procs: list[Proc],
    tmp_path: Path,
    broker: str,
    root: TopicRoot,
    env: str = "dev-lab-presence",
    *extra: str,
    state_dir: Path | None = None,
    name: str = "agent",
    command_key: str | None = PUBLIC_KEY,
) -> Proc:
    """``edge-agent run``; ``command_key``: the key it trusts (None: none, an agent never
    enrolled)."""
    args = _run_args(tmp_path, broker, root, env, extra, state_dir, name, command_key)
    proc = await start_proc("edgeplane.edge_agent", args, tmp_path / f"{name}.log")
    procs.append(proc)
    return proc


async def start_piped_agent(
    procs: list[Proc],
    tmp_path: Path,
    broker: str,
    root: TopicRoot,
    env: str,
    *extra: str,
    name: str = "agent",
) -> PipedProc:
    """``edge-agent run 2>&1 | ...``: its output into a pipe the test reads and may close."""
    args = _run_args(tmp_path, broker, root, env, extra, None, name, PUBLIC_KEY)
    proc = await start_piped_proc("edgeplane.edge_agent", args, tmp_path / f"{name}.log")
    procs.append(proc)
    return proc


def _run_args(
    tmp_path: Path,
    broker: str,
    root: TopicRoot,
    env: str,
    extra: tuple[str, ...],
    state_dir: Path | None,
    name: str,
    command_key: str | None,
) -> list[str]:
    key = [] if command_key is None else ["--command-key", command_key]
    return [
        "run",
        "--env-id",
        env,
        "--broker",
        broker,
        "--state-dir",
        str(state_dir or tmp_path / f"{name}-state"),
        "--heartbeat-interval",
        str(INTERVAL),
        "--topic-root",
        root.value,
        "--log-format",
        "json",
        *key,
        *extra,
    ]


async def wait_online(
    probe: Probe, topic: str, *, after: int = 0, timeout: float = 15.0, **fields: Any
) -> dict[str, Any]:
    return await probe.wait_json(topic, after=after, timeout=timeout, status="online", **fields)
