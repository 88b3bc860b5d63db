"""Which events the operations log has already taken (pure): the dedupe by (env, src, seq).

Agents keep every event in an outbox until the broker acknowledges it, and send the backlog
again after a reconnect, so the controller sees some events twice. An agent's stream comes
in order (one publisher, one topic, QoS 1), re-sent events included, so per stream
(``env``, ``src``) it is enough to keep the highest ``seq`` seen and the numbers of the
last :data:`WINDOW` events (for a gap filled late): a number above the highest is new, one
inside the window is new unless seen, one below it is long stored. After a restart only
each stream's highest stored ``seq`` is known, and everything up to it counts as seen.
The database's unique index has the last word anyway: an event is stored once, whatever
this says.
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
    floor: int = -1  # everything up to here is stored (restored at start)
    recent: set[int] = field(default_factory=set)


class SeenEvents:
    def __init__(self, heads: Iterable[tuple[str, str, int]] = ()) -> None:
        """``heads``: (env, src, highest stored seq) of each stream, from the database."""
        self._streams: dict[tuple[str, str], _Stream] = {
            (env, src): _Stream(high=seq, floor=seq) for env, src, seq in heads
        }
        self.duplicates = 0  # events seen again since start

    def first_time(self, env: str, src: str, seq: int) -> bool:
        """Whether (env, src, seq) is new; counts it as seen either way."""
        stream = self._streams.setdefault((env, src), _Stream())
        if seq > stream.high:
            stream.high = seq
        elif seq <= stream.floor or seq in stream.recent or seq <= stream.high - WINDOW:
            self.duplicates += 1
            return False
        stream.recent.add(seq)
        if len(stream.recent) > 2 * WINDOW:
            floor = stream.high - WINDOW
            stream.recent = {number for number in stream.recent if number > floor}
        return True

    def forget(self, env: str) -> None:
        """Drop every stream of ``env`` (its events are deleted from the log too)."""
        for key in [key for key in self._streams if key[0] == env]:
            del self._streams[key]

    def __len__(self) -> int:
        return len(self._streams)
