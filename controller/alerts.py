"""What the pure detectors hand to the controller: alert edges, and the deadline heap that
tells the controller when to ask for the next time-driven edge.

An *edge* is one change of an alert's state for one environment: ``raised`` when an
episode starts, ``cleared`` when it ends. A detector emits exactly one of each per
episode, alternating per environment and kind, starting with ``raised``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from shared.messages import AlertKind, AlertState

__all__ = ["AlertEdge", "DeadlineHeap"]


@dataclass(frozen=True, slots=True)
class AlertEdge:
    """One alert edge. ``at`` is the time, in the detector's clock, at which the condition
    started or ended (not when the controller happened to notice)."""

    env: str
    kind: AlertKind
    state: AlertState
    at: float
    detail: str


class DeadlineHeap:
    """At most one deadline per key, earliest first, with lazy invalidation.

    Moving or dropping a key's deadline is O(log n) and leaves the old heap entry behind;
    stale entries are skipped when they reach the top and the heap is rebuilt when they
    outnumber the live ones, so its size stays proportional to the keys that have a
    deadline. Nothing ever scans all keys on a regular call.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, tuple[float, int]] = {}
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def get(self, key: str) -> float | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def set(self, key: str, deadline: float | None) -> None:
        """Give ``key`` this deadline (replacing any earlier one); None drops it."""
        if deadline is None:
            self.discard(key)
            return
        current = self._live.get(key)
        if current is not None and current[0] == deadline:
            return
        token = next(self._tokens)
        self._live[key] = (deadline, token)
        heapq.heappush(self._heap, (deadline, token, key))
        self._compact_if_sparse()

    def discard(self, key: str) -> None:
        self._live.pop(key, None)

    def peek(self) -> float | None:
        """The earliest live deadline, or None."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[str]:
        """Remove and return every key whose deadline is ``<= now``, earliest first."""
        due: list[str] = []
        while True:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)

    def _is_live(self, entry: tuple[float, int, str]) -> bool:
        deadline, token, key = entry
        return self._live.get(key) == (deadline, token)

    def _drop_stale_top(self) -> None:
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)

    def _compact_if_sparse(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(d, t, k) for k, (d, t) in self._live.items()]
            heapq.heapify(self._heap)
