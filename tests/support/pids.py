"""The processes a test's workflows start: each writes its pid into ``DIR/pids``, and
whatever is left of them is killed when the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

__all__ = ["pid_dir", "pids"]


def pids(out: Path) -> list[int]:
    found = out / "pids"
    return [int(line) for line in found.read_text().split()] if found.exists() else []


@contextlib.contextmanager
def pid_dir(tmp_path: Path, name: str = "out") -> Iterator[Path]:
    """Where the test's processes write their pids; whatever is left is killed at the end."""
    out = tmp_path / name
    out.mkdir()
    try:
        yield out
    finally:
        for pid in pids(out):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
