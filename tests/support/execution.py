"""Building blocks for tests of the agent's executor: workflows of real Python steps, and
executors on a temporary state directory that are closed at the end of the test."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from edgeplane.edge_agent.execution.executor import Executor, ExecutorOptions
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.messages import Deploy
from edgeplane.shared.workflow import Requires, Step, Workflow, WorkflowKind
from tests.support.sink import MemorySink

__all__ = [
    "SERVICE",
    "Executors",
    "alive",
    "deploy",
    "py",
    "service_step",
    "wait_for_file",
    "workflow",
]


def py(name: str, code: str, *, timeout: float = 60.0, env: dict[str, str] | None = None) -> Step:
    """A step that runs ``code`` with this interpreter."""
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    return Step(name=name, run=argv, timeout=timeout, env=env or {})


def workflow(
    *steps: Step,
    name: str = "inspect",
    version: str = "1.0",
    kind: WorkflowKind = "job",
    requires: Requires | None = None,
) -> Workflow:
    return Workflow(
        name=name, version=version, steps=list(steps), kind=kind, requires=requires or Requires()
    )


def deploy(wf: Workflow, dep: str | None = None, **fields: Any) -> Deploy:
    dep = dep or f"d-{uuid.uuid4().hex[:8]}"
    return Deploy(id=f"c-{dep}", dep=dep, workflow=wf, **fields)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ExecutorOptions))


class Executors:
    """Makes started executors sharing one state dir and sink; closes them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.sink = MemorySink()
        self.made: list[Executor] = []

    def __call__(self, **overrides: Any) -> Executor:
        """An executor with short waits; ``overrides`` of its constructor's arguments or
        of :class:`ExecutorOptions` fields."""
        options: dict[str, Any] = {
            "check_timeout": 1.0,
            "service_grace": 0.5,
            "kill_grace": 0.5,
            "backoff": lambda: Backoff(initial=0.05, cap=0.2),
        }
        settings: dict[str, Any] = {
            "state_dir": self.state_dir,
            "models_dir": None,
            "secrets": None,
            "endpoints": {},
            "sink": self.sink,
        }
        for name, value in overrides.items():
            (options if name in OPTION_NAMES else settings)[name] = value
        executor = Executor(self.sink.env, **settings, options=ExecutorOptions(**options))
        executor.start()
        self.made.append(executor)
        return executor


def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    """The content of ``path`` once a step has written it (polled: no event says so)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was not written within {timeout} s")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """The process runs (is not gone, nor a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


# A service step: appends its pid to ``starts`` in its working directory, then runs until
# stopped; ``{fail}`` is Python run after that (e.g. exit early on some starts).
SERVICE = """
import os, sys, time
with open("starts", "a") as f:
    f.write(f"{{os.getpid()}}\\n")
starts = len(open("starts").read().split())
{fail}
time.sleep(600)
"""


def service_step(name: str = "serve", fail: str = "") -> Step:
    return py(name, SERVICE.format(fail=fail))
