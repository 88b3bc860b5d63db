"""How the operator commands print: tables and times for people, JSON for programs.

Exit status of every operator command: 0 on success; 1 when it failed (no broker, no
controller, a refusal, a failed deployment), with one line on stderr; 2 for usage errors
(bad flags or arguments, a bad workflow file), also one line on stderr; 3 for
``status`` and ``env show`` when the views they show are stale (the controller is not
online; ``board.STALE_EXIT``).

Every text that came off the wire (what an agent, or anyone who can publish, wrote) goes
through :func:`visible` before it reaches a terminal: control characters are shown, never
obeyed, so no event can clear an operator's screen, colour it, or start a line of its own
that looks like another environment's. ``--json`` output stays exact: JSON escapes C0
characters, and :func:`to_json` escapes the rest of what :func:`visible` shows (JSON
``\\u`` escapes, the same strings to any JSON reader).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

__all__ = ["ago", "json_safe", "print_json", "render_table", "to_json", "visible", "when"]

# What a terminal obeys rather than shows: C0 (tab and newline too: one field, one line),
# DEL, C1 (U+009B is CSI to some terminals), the bidirectional overrides, embeddings,
# isolates and marks (text that reads in another order than it is), and the Unicode line
# and paragraph separators.
_UNSAFE: Final = (
    *range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F,
    *range(0x2028, 0x202F), *range(0x2066, 0x206A),
)  # fmt: skip
_NAMED: Final = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_SHOWN: Final = {
    code: _NAMED.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _UNSAFE
}
# In JSON these can only be inside strings, where a \u escape is the same character.
_JSON_ESCAPED: Final = {code: f"\\u{code:04x}" for code in _UNSAFE if code >= 0x20}


def visible(text: str) -> str:
    """``text`` as one line a terminal shows and does not obey: every control character
    written out (``\\x1b``, ``\\n``, ``\\x00``, ``\\u202e``). Printable text, a
    backslash included, is left as it is; applying it twice changes nothing more."""
    return text.translate(_SHOWN)


def json_safe(text: str) -> str:
    """JSON text with DEL, C1, the bidirectional controls and the line separators written
    as ``\\u`` escapes (JSON encoders escape C0 already): the same JSON value."""
    return text.translate(_JSON_ESCAPED)


def to_json(value: Any) -> str:
    import msgspec

    return json_safe(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def print_json(value: Any) -> None:
    print(to_json(value))


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell; every cell shown by :func:`visible`."""
    lines = [tuple(header), *(tuple(visible(cell) for cell in row) for row in rows)]
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
