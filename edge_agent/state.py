"""The agent's state directory and the ``bdseq`` kept in it.

``bdseq`` numbers connections: a new one is taken for every connection attempt and put in
that connection's will and online messages, so a reader can tell a stale will from the
current one. It must never repeat, across reconnects or restarts, so every take is written
to disk (temporary file, fsync, rename, fsync of the directory) before it is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from edge_agent.errors import StateDirError

__all__ = ["BDSEQ_FILE", "BdseqStore", "default_state_dir"]

BDSEQ_FILE: Final = "bdseq"


def default_state_dir(env_id: str, environ: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/edgeplane-agent/{env}``, or ``~/.local/state/edgeplane-agent/{env}``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeplane-agent" / env_id


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
        tmp = self.path.with_name(f".{BDSEQ_FILE}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.state_dir)
        except OSError as exc:
            raise StateDirError(f"cannot write {str(self.path)!r}: {exc.strerror}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
