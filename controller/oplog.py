"""Which events the operations log has already taken (pure): the dedupe by (env, src, seq).

Agents keep every event in an outbox until the broker acknowledges it, and send the backlog
again after a reconnect, so the controller sees some events twice. Per event stream
(``env``, ``src``) it keeps the highest ``seq`` seen and the numbers of the last
:data:`WINDOW` events: a number above the highest is new, one inside the window is new
unless seen, one below it is long stored (the database's unique index has the last word
anyway: an event is stored once, whatever this says).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["WINDOW", "SeenEvents"]

WINDOW: Final = 4096


@dataclass(slots=True)
class _Stream:
    high: int = -1
    recent: set[int] = field(default_factory=set)


class SeenEvents:
    def __init__(self, seen: Iterable[tuple[str, str, int]] = ()) -> None:
        self._streams: dict[tuple[str, str], _Stream] = {}
        self.duplicates = 0  # events seen again since start
        for env, src, seq in seen:
            self.first_time(env, src, seq)

    def first_time(self, env: str, src: str, seq: int) -> bool:
        """Whether (env, src, seq) is new; counts it as seen either way."""
        stream = self._streams.setdefault((env, src), _Stream())
        if seq > stream.high:
            stream.high = seq
        elif seq in stream.recent or seq <= stream.high - WINDOW:
            self.duplicates += 1
            return False
        stream.recent.add(seq)
        if len(stream.recent) > 2 * WINDOW:
            floor = stream.high - WINDOW
            stream.recent = {number for number in stream.recent if number > floor}
        return True

    def __len__(self) -> int:
        return len(self._streams)
