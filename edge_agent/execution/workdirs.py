"""The deployments' working directories: ``{state_dir}/deployments/{dep}/``, each with its
steps' output files and a ``deployment.json`` saying which workflow it belongs to. The
newest :data:`KEEP_PER_WORKFLOW` of each workflow are kept (and any still in use).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Final

import msgspec

from edgeplane.edge_agent.errors import ExecutionError
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import Deploy

__all__ = ["KEEP_PER_WORKFLOW", "WorkdirRecord", "Workdirs"]

KEEP_PER_WORKFLOW: Final = 5


class WorkdirRecord(msgspec.Struct, frozen=True):
    """``deployment.json`` in a working directory: which workflow it belongs to."""

    workflow: str
    version: str
    created: float


class Workdirs:
    def __init__(self, state_dir: Path, clock: Clock, keep: int = KEEP_PER_WORKFLOW) -> None:
        self.root = state_dir / "deployments"
        self.keep = keep
        self._clock = clock

    def of(self, dep: str) -> Path:
        return self.root / dep

    def make(self, cmd: Deploy, in_use: Callable[[], Collection[str]]) -> Path:
        """The working directory of ``cmd``'s deployment, made; older ones of its workflow
        pruned (except those of the deployments ``in_use()`` names)."""
        workdir = self.of(cmd.dep)
        try:
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = WorkdirRecord(cmd.workflow.name, cmd.workflow.version, self._clock.time())
            (workdir / "deployment.json").write_bytes(msgspec.json.encode(info))
        except OSError as exc:
            raise ExecutionError(f"cannot create {str(workdir)!r}: {exc.strerror}") from exc
        self.prune(cmd.workflow.name, in_use())
        return workdir

    def prune(self, workflow: str, in_use: Collection[str]) -> None:
        """Keep the newest ``keep`` working directories of ``workflow`` (and any in use)."""
        mine = []
        for directory in self.root.iterdir():
            try:
                info = msgspec.json.decode(
                    (directory / "deployment.json").read_bytes(), type=WorkdirRecord
                )
            except (OSError, msgspec.DecodeError):
                continue
            if info.workflow == workflow:
                mine.append((info.created, directory.name, directory))
        mine.sort(reverse=True)
        for _, name, directory in mine[self.keep :]:
            if name not in in_use:
                shutil.rmtree(directory, ignore_errors=True)
