"""Which events the operations log has already taken (pure): the dedupe by (env, src, seq).

Agents keep every event in an outbox until the broker acknowledges it, and send the backlog
again after a reconnect, so the controller sees some events twice. An agent's stream comes
in order (one publisher, one topic, QoS 1), re-sent events included, so per stream
(``env``, ``src``) it is enough to keep the highest ``seq`` seen and which of the
:data:`WINDOW` numbers below it were seen (for a gap filled late): a number above the
highest is new, one inside the window is new unless seen, one below it is long stored.
The window is one bit per number (an int), so a stream costs at most ~0.6 KB however many
events it brought: 10,000 agents' streams stay a few MB (a set of the numbers grew to
~0.7 MB per stream). After a restart only each stream's highest stored ``seq`` is known,
and everything up to it counts as seen.
The database's unique index has the last word anyway: an event is stored once, whatever
this says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["WINDOW", "SeenEvents"]

WINDOW: Final = 4096
_MASK: Final = (1 << WINDOW) - 1


@dataclass(slots=True)
class _Stream:
    high: int = -1
    floor: int = -1  # everything up to here is stored (restored at start)
    seen: int = 0  # bit i: high - i was seen, for i < WINDOW


class SeenEvents:
    def __init__(self, heads: Iterable[tuple[str, str, int]] = ()) -> None:
        """``heads``: (env, src, highest stored seq) of each stream, from the database."""
        self._streams: dict[tuple[str, str], _Stream] = {
            (env, src): _Stream(high=seq, floor=seq) for env, src, seq in heads
        }
        self.duplicates = 0  # events seen again since start

    def first_time(self, env: str, src: str, seq: int) -> bool:
        """Whether (env, src, seq) is new; counts it as seen either way."""
        stream = self._streams.get((env, src))
        if stream is None:
            stream = self._streams[(env, src)] = _Stream()
        if seq > stream.high:
            shift = seq - stream.high
            stream.seen = (stream.seen << shift | 1) & _MASK if shift < WINDOW else 1
            stream.high = seq
            return True
        below = stream.high - seq
        if seq <= stream.floor or below >= WINDOW or stream.seen >> below & 1:
            self.duplicates += 1
            return False
        stream.seen |= 1 << below
        return True

    def forget(self, env: str) -> None:
        """Drop every stream of ``env`` (its events are deleted from the log too)."""
        for key in [key for key in self._streams if key[0] == env]:
            del self._streams[key]

    def __len__(self) -> int:
        return len(self._streams)
