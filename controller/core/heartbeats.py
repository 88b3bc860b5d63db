"""How steady each environment's heartbeat is: the heartbeats missed lately (pure).

The log keeps, per environment, the last few heartbeats received (their connection's
``bdseq``, ``seq``, declared ``interval`` and the controller's receipt time) and says how
many were missed in the last :data:`WINDOW_INTERVALS` intervals:

- within one connection, a gap in ``seq`` (``seq`` counts the connection's heartbeats): each
  missing one is placed evenly between the two received around it, and counts when it falls
  inside the window;
- across connections (a reconnect, a new boot: ``seq`` starts again with each ``bdseq``),
  the heartbeats the silence between the two connections held, by time: one per interval
  past the first, with half an interval of slack;
- since the last one, the silence the same way (heartbeats that should have come by now).

A heartbeat of the same connection whose ``seq`` is not above the last one is a duplicate
(a retained one delivered again) and changes nothing. After the controller could not
listen (a restart, a lost broker connection) the log starts afresh: silence while it was
away proves nothing, and neither does the jump in ``seq`` it finds when it is back.

Times are what the caller passes: the controller's clock at receipt.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["KEPT", "WINDOW_INTERVALS", "Beat", "HeartbeatLog", "missed_in_window"]

WINDOW_INTERVALS: Final = 5
KEPT: Final = 32  # heartbeats kept per environment (a window holds about 6)
SLACK: Final = 0.5  # of an interval: a heartbeat this late is not missed yet


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat as received."""

    bdseq: int
    seq: int
    interval: float
    at: float


class HeartbeatLog:
    def __init__(self) -> None:
        self._beats: dict[str, deque[Beat]] = {}

    def observe(self, env: str, bdseq: int, seq: int, interval: float, at: float) -> bool:
        """Note one heartbeat; False for a duplicate (same connection, ``seq`` not above
        the last one), which is not kept, unless it follows on the one before the last:
        then the last had jumped ahead (forged), and is dropped with the gap it made."""
        beats = self._beats.get(env)
        if beats is None:
            beats = self._beats[env] = deque(maxlen=KEPT)
        elif beats:
            last = beats[-1]
            if last.bdseq == bdseq and seq <= last.seq:
                before = beats[-2] if len(beats) > 1 else None
                if seq == last.seq or before is None or before.bdseq != bdseq or seq <= before.seq:
                    return False  # delivered again (or older still)
                beats.pop()  # the last one had jumped ahead (forged): this one follows on
        if not math.isfinite(interval) or interval <= 0:
            return False
        beats.append(Beat(bdseq, seq, interval, at))
        return True

    def missed(self, env: str, now: float) -> int | None:
        """Heartbeats of ``env`` missed in the last :data:`WINDOW_INTERVALS` intervals (its
        latest declared one) up to ``now``; None when none was received."""
        beats = self._beats.get(env)
        if not beats:
            return None
        return missed_in_window(list(beats), now)

    def forget(self, env: str) -> None:
        self._beats.pop(env, None)

    def reset(self) -> None:
        """Start afresh (the controller could not listen for a while)."""
        self._beats.clear()


def missed_in_window(beats: list[Beat], now: float) -> int:
    """:meth:`HeartbeatLog.missed` over ``beats``, oldest first (at least one)."""
    start = now - WINDOW_INTERVALS * beats[-1].interval
    missed = 0
    for before, after in itertools.pairwise(beats):
        if after.at < start:
            continue
        if before.bdseq == after.bdseq:
            missed += _spread(before.at, after.at, after.seq - before.seq - 1, start)
        else:
            missed += _silent(before.at, after.at, before.interval, start, arrived=True)
    last = beats[-1]
    # A window holds at most WINDOW_INTERVALS heartbeats: a seq that jumped says no more.
    return min(WINDOW_INTERVALS, missed + _silent(last.at, now, last.interval, start))


def _spread(first: float, last: float, count: int, start: float) -> int:
    """Of ``count`` heartbeats placed evenly between ``first`` and ``last``, how many fall
    at or after ``start``."""
    if count <= 0:
        return 0
    step = (last - first) / (count + 1)
    if step <= 0:
        return count if first >= start else 0
    lowest = max(1, math.ceil((start - first) / step))
    return max(0, count - lowest + 1)


def _silent(
    first: float, last: float, interval: float, start: float, *, arrived: bool = False
) -> int:
    """The heartbeats due every ``interval`` after ``first`` that had not come by ``last``
    (each given :data:`SLACK`), counting those due at or after ``start``. ``arrived``: one
    came at ``last`` (the next connection's first), standing for the last one due."""
    late = (last - first) / interval - SLACK
    due = math.ceil(late) - 1 if arrived else math.floor(late)
    if due <= 0:
        return 0
    lowest = max(1, math.ceil((start - first) / interval))
    return max(0, due - lowest + 1)
