"""The agent's state directory: the ``bdseq``, the controller's overrides, the retired
marker (the event outbox lives there too: :mod:`edge_agent.outbox`).

``bdseq`` numbers connections: a new one is taken for every connection attempt and put in
that connection's will and online messages, so a reader can tell a stale will from the
current one. It must never repeat, across reconnects or restarts, so every take is written
to disk (temporary file, fsync, rename, fsync of the directory) before it is used.

``overrides.json`` keeps the settings an ``update`` command changed, so they survive
restarts. ``retired`` marks a state directory whose environment was retired: the agent
refuses to run with it, and everything else in the directory has been wiped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Final

from edgeplane.edge_agent.config import Overrides, default_state_dir
from edgeplane.edge_agent.errors import EnvironmentRetired, StateDirError
from edgeplane.edge_agent.instance_lock import LOCK_FILE

__all__ = [
    "BDSEQ_FILE",
    "OVERRIDES_FILE",
    "RECENT_LOG",
    "RETIRED_FILE",
    "BdseqStore",
    "OverridesStore",
    "check_not_retired",
    "default_state_dir",
    "retire_state_dir",
]

BDSEQ_FILE: Final = "bdseq"
OVERRIDES_FILE: Final = "overrides.json"
RETIRED_FILE: Final = "retired"
RECENT_LOG: Final = "agent.log"  # the latest log lines (and agent.log.1), for support


class BdseqStore:
    """The last ``bdseq`` taken, in ``{state_dir}/bdseq`` as a decimal number."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / BDSEQ_FILE
        self._last = self._open()

    @property
    def last(self) -> int:
        """The bdseq most recently taken (0 when none ever was)."""
        return self._last

    def take(self) -> int:
        """A new bdseq, written durably before it is returned."""
        value = self._last + 1
        self._write(value)
        self._last = value
        return value

    def _open(self) -> int:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                f"state directory {str(self.state_dir)!r} cannot be created: {exc.strerror}"
            ) from exc
        if not self.state_dir.is_dir():
            raise StateDirError(f"state directory {str(self.state_dir)!r} is not a directory")
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StateDirError(f"state directory {str(self.state_dir)!r} is not writable")
        return self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise StateDirError(f"cannot read {str(self.path)!r}: {exc}") from exc
        value = text.strip()
        if not value.isdigit():
            raise StateDirError(
                f"{str(self.path)!r} is corrupt (expected a whole number, found {value[:40]!r});"
                " remove it to start counting connections afresh"
            )
        return int(value)

    def _write(self, value: int) -> None:
        write_atomically(self.path, f"{value}\n".encode("ascii"))


class OverridesStore:
    """The controller's changes to the settings, in ``{state_dir}/overrides.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / OVERRIDES_FILE

    def load(self) -> Overrides:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Overrides()
        except (OSError, ValueError) as exc:
            raise StateDirError(
                f"cannot read {str(self.path)!r}: {exc}; remove it to drop the settings the "
                "controller changed"
            ) from exc
        try:
            return _overrides_from(data)
        except (TypeError, ValueError) as exc:
            raise StateDirError(
                f"{str(self.path)!r} is corrupt ({exc}); remove it to drop the settings the "
                "controller changed"
            ) from exc

    def save(self, overrides: Overrides) -> None:
        data = {
            "heartbeat_interval": overrides.heartbeat_interval,
            "log_level": overrides.log_level,
            "endpoints": dict(overrides.endpoints),
            "labels": dict(overrides.labels),
        }
        write_atomically(self.path, json.dumps(data, indent=1).encode("utf-8") + b"\n")


def _overrides_from(data: Any) -> Overrides:
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    interval = data.get("heartbeat_interval")
    level = data.get("log_level")
    if interval is not None and (not isinstance(interval, int | float) or interval <= 0):
        raise ValueError(f"heartbeat_interval: {interval!r}")
    if level is not None and not isinstance(level, str):
        raise ValueError(f"log_level: {level!r}")
    return Overrides(
        heartbeat_interval=None if interval is None else float(interval),
        log_level=level,
        endpoints=_text_map(data.get("endpoints", {}), "endpoints"),
        labels=_text_map(data.get("labels", {}), "labels"),
    )


def _text_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{what}: expected an object of strings")
    return dict(value)


# --- retirement ------------------------------------------------------------------------------
def check_not_retired(state_dir: Path) -> None:
    """Raise :class:`EnvironmentRetired` if ``state_dir`` belongs to a retired environment."""
    marker = state_dir / RETIRED_FILE
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return
    except (OSError, ValueError):
        data = {}
    env = data.get("env", "?") if isinstance(data, dict) else "?"
    when = data.get("retired_at", "an unknown date") if isinstance(data, dict) else "?"
    raise EnvironmentRetired(
        f"environment {env} was retired on {when}; remove {marker} to reuse this state dir"
    )


def retire_state_dir(state_dir: Path, env: str, paths: list[Path], now: float) -> Path:
    """Write the retired marker, then delete the bdseq, the overrides, the agent's lock and
    ``paths`` (files or directories: the outbox, the executor's record and working
    directories). The recent log (masked) stays, for whoever looks into it later."""
    marker = state_dir / RETIRED_FILE
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    data = {"env": env, "retired_at": stamp, "ts": now}
    write_atomically(marker, json.dumps(data).encode("utf-8") + b"\n")
    # The lock goes too: the process holding it keeps its hold until it exits.
    own = [state_dir / BDSEQ_FILE, state_dir / OVERRIDES_FILE, state_dir / LOCK_FILE]
    for path in [*own, *paths]:
        if path.is_dir() and not path.is_symlink():
            import shutil  # once, at the end of an environment's life

            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    _fsync_dir(state_dir)
    return marker


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader (or a crash) sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StateDirError(f"cannot write {str(path)!r}: {exc.strerror}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
