"""A timer heap: one deadline per key, with lazy invalidation (heartbeat deadlines, and
the flap and identity detectors' clearing times).

Every heartbeat moves its environment's deadline. Moving a deadline pushes a new heap entry
and leaves the old one behind; stale entries are skipped when they reach the top, and the
heap is rebuilt when they outnumber the live ones. So a heartbeat costs O(log n), and a tick
costs O(log n) per deadline that is actually due: the work per tick does not grow with the
fleet.
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["TimerHeap"]


class TimerHeap:
    """Deadlines (any monotonic clock) keyed by environment id, earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, tuple[float, int]] = {}
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def deadline(self, key: str) -> float | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def set(self, key: str, deadline: float | None) -> None:
        """Give ``key`` this deadline, replacing any earlier one; None cancels it."""
        if deadline is None:
            self.cancel(key)
            return
        current = self._live.get(key)
        if current is not None and current[0] == deadline:
            return
        token = next(self._tokens)
        self._live[key] = (deadline, token)
        heapq.heappush(self._heap, (deadline, token, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._rebuild()

    def cancel(self, key: str) -> None:
        self._live.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when there is none."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[str]:
        """Remove and return the keys whose deadline is ``<= now``, earliest first."""
        due: list[str] = []
        while True:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)

    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (for tests and stats)."""
        return len(self._heap)

    def _drop_stale_top(self) -> None:
        heap, live = self._heap, self._live
        while heap:
            deadline, token, key = heap[0]
            if live.get(key) == (deadline, token):
                return
            heapq.heappop(heap)

    def _rebuild(self) -> None:
        self._heap = [(deadline, token, key) for key, (deadline, token) in self._live.items()]
        heapq.heapify(self._heap)
