"""How the operator commands print: tables and times for people, JSON for programs.

Exit status of every operator command: 0 on success; 1 when it failed (no broker, no
controller, a refusal, a failed deployment), with one line on stderr; 2 for usage errors
(bad flags or arguments, a bad workflow file), also one line on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["ago", "print_json", "render_table", "to_json", "when"]


def to_json(value: Any) -> str:
    import msgspec

    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def print_json(value: Any) -> None:
    print(to_json(value))


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def when(ts: float | None, *, clock: Callable[[], float] = time.time) -> str:
    """A timestamp for people: local time and how long ago, ``-`` for none."""
    if ts is None:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({ago(clock() - ts)})"


def ago(seconds: float) -> str:
    """``12s ago`` for a past moment, ``in 5m`` for a future one (negative ``seconds``)."""
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86_400:.0f}d"
