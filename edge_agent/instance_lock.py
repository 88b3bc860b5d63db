"""The lock that says an agent runs on a state directory: ``{state_dir}/agent.lock``.

``edge-agent run`` holds an exclusive ``flock`` on it for as long as it runs, with its pid
and environment id written inside; the kernel lets go when the process ends, however it
ends. A second agent on the same state directory is refused (two would share the bdseq and
the outbox), and ``edge-agent doctor`` reads who holds it without taking it away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Final, NamedTuple

from edgeplane.edge_agent.errors import StateDirError

__all__ = ["LOCK_FILE", "AgentLock", "LockHolder", "hold_agent_lock", "lock_holder"]

LOCK_FILE: Final = "agent.lock"
MAX_LOCK_TEXT: Final = 4096
TRIES: Final = 3
RETRY_GAP: Final = 0.05  # seconds


class LockHolder(NamedTuple):
    """The process holding the lock, as it wrote itself down (pid 0, env "": unreadable)."""

    pid: int
    env: str


class AgentLock:
    """A held lock; :meth:`release` (or the process's end) lets go of it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def hold_agent_lock(state_dir: Path, env: str) -> AgentLock:
    """Take the state directory's lock for this process; :class:`StateDirError` naming the
    holder when another process has it."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateDirError(f"cannot open {str(path)!r}: {exc.strerror}") from exc
    try:
        _take(fd)
    except OSError as exc:
        holder = _read(fd)
        os.close(fd)
        raise StateDirError(
            f"state directory {str(state_dir)!r} is in use by another agent "
            f"(pid {holder.pid or '?'}, environment {holder.env or '?'})"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "env": env}).encode("utf-8"), 0)
    return AgentLock(fd, path)


def _take(fd: int) -> None:
    """The exclusive lock, tried a few times: a doctor looking holds it for an instant."""
    for attempt in range(TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if attempt == TRIES - 1:
                raise
            time.sleep(RETRY_GAP)


def lock_holder(state_dir: Path) -> LockHolder | None:
    """Who holds the state directory's lock now, None when nobody does. Only looks: the
    lock is taken for an instant when free, and never when held. :class:`StateDirError`
    when the lock file cannot be opened."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateDirError(f"cannot open {str(path)!r}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> LockHolder:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(os.pread(fd, MAX_LOCK_TEXT, 0))
        if isinstance(data, dict):
            pid, env = data.get("pid"), data.get("env")
            return LockHolder(
                pid if isinstance(pid, int) else 0, env if isinstance(env, str) else ""
            )
    return LockHolder(0, "")
