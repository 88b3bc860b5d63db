"""The state directory of ``edgeplane up``: its lock, its status file, and what an earlier
``up`` that was killed outright left running there.

While ``up`` runs, ``STATE_DIR/up.json`` names the broker URL and the pid of every process it
runs (removed on exit), and ``STATE_DIR/up.lock`` keeps a second ``up`` off the directory.
An ``up`` killed outright (SIGKILL) cannot stop its children; the embedded broker exits by
itself, and the next ``up`` on the same state dir stops whatever else up.json names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

from edgeplane.controller.errors import ControllerError

__all__ = ["StateDir", "default_state_dir"]

LEFTOVER_GRACE: Final = 10.0  # seconds a leftover process gets to stop before SIGKILL
LEFTOVERS: Final = ("agent", "controller", "broker")  # stopped in this order


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/edgeplane``, or ``~/.local/state/edgeplane``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeplane"


class StateDir:
    """``up``'s directory: ``up.lock``, ``up.json``, and the data of what it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def status_file(self) -> Path:
        return self.path / "up.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``up.lock``; a :class:`ControllerError` if another ``up`` holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle: IO[str] = (self.path / "up.lock").open("a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ControllerError(
                    f"another `edgeplane up` is running with state dir {self.path}"
                ) from None
            yield
        finally:
            handle.close()

    def write_status(self, status: Mapping[str, Any]) -> None:
        tmp = self.status_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(status, indent=2) + "\n")
        tmp.replace(self.status_file)

    def remove_status(self) -> None:
        self.status_file.unlink(missing_ok=True)

    def stop_leftovers(self, say: Callable[[str], None]) -> None:
        """Stop what an earlier ``up`` that was killed outright left running here.

        Call it with the lock held, so that no live ``up`` owns them. Without this, a second
        agent with the same identity would fight the leftover one for its session.
        """
        try:
            earlier = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return
        for name in LEFTOVERS:
            pid = earlier.get(f"{name}_pid")
            if isinstance(pid, int) and self._runs(pid):
                say(f"stopping the {name} (pid {pid}) left running by an earlier edgeplane up")
                self._stop(pid)
        self.remove_status()

    def _runs(self, pid: int) -> bool:
        """Whether ``pid`` is alive and one of the processes of an ``up`` on this directory
        (its command line names the directory: a recycled pid does not)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.path).encode() in cmdline

    def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while self._runs(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # not our child: there is no exit to wait on
        if self._runs(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
