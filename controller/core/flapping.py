"""Flap detection: a pure, clock-driven detector with hysteresis (see CONTRACT.md, "Flapping").

Semantics, all times being plain floats in one clock chosen by the caller:

* A *transition* is a change of an environment's judged status between online and offline,
  either way; the caller reports each one with :meth:`FlapDetector.record`.
* A transition at time ``t`` is *inside the window* at time ``now`` while
  ``now - window < t``: it leaves the window at exactly ``t + window``.
* The alert is **raised** by the transition that makes the count inside the window reach
  ``high``, and **cleared** when the count falls to ``low`` (or below). Between the two the
  environment is flapping, whatever the count does in between: more transitions neither
  raise again nor postpone anything but the clearing time.
* Clearing is time-driven: while no new transitions arrive the count only decreases, one
  step each time an old transition slides out of the window. The detector knows the exact
  moment the count will reach ``low`` (the ``low + 1``-th newest transition plus
  ``window``), publishes it through :meth:`FlapDetector.next_deadline`, and hands out the
  ``cleared`` edge from :meth:`FlapDetector.expire` once that time has come. The edge's
  ``at`` is that exact moment, not the (possibly later) time ``expire`` was called.
* So each episode gives exactly one ``raised`` and one ``cleared`` edge, and per
  environment the edges alternate, starting with ``raised``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgeplane.controller.core.alerts import AlertEdge, earliest_due, split_held
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.messages import AlertState

__all__ = ["FlapDetector"]


@dataclass(slots=True)
class _Flaps:
    times: deque[float]  # the newest `high` transitions, oldest first (all that is ever needed)
    flapping: bool = False
    # Edges already decided but not yet handed out (see FlapDetector.record); rarely non-empty.
    held: list[AlertEdge] = field(default_factory=list)


class FlapDetector:
    """Counts each environment's transitions in a sliding window and emits flapping edges.

    Memory per environment is at most ``high`` timestamps; every call costs O(log n) in the
    number of environments with a pending deadline, never a scan of the fleet.
    """

    def __init__(self, window: float = 600.0, high: int = 6, low: int = 2) -> None:
        if not window > 0:
            raise ValueError(f"flap window must be > 0 seconds, got {window!r}")
        if not 0 <= low < high:
            raise ValueError(
                f"flap thresholds need 0 <= low < high, got low={low!r}, high={high!r}"
            )
        self.window = float(window)
        self.high = high
        self.low = low
        self._envs: dict[str, _Flaps] = {}
        self._deadlines = TimerHeap()

    # --- queries -------------------------------------------------------------------------
    def is_flapping(self, env: str) -> bool:
        """Whether ``env`` is in a flapping episode (its ``raised`` edge has been decided)."""
        state = self._envs.get(env)
        return state is not None and state.flapping

    def count(self, env: str, now: float) -> int:
        """Transitions of ``env`` inside the window at ``now``, counted up to ``high``."""
        state = self._envs.get(env)
        if state is None:
            return 0
        return sum(1 for t in state.times if t > now - self.window)

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`expire` could return an edge, or None.

        The controller keeps this in its timer heap and calls ``expire`` when it comes;
        it must ask again after every ``record``, ``restore``, ``forget`` or ``expire``.
        A deadline already in the past means "call expire now".
        """
        return self._deadlines.next_deadline()

    # --- events --------------------------------------------------------------------------
    def record(self, env: str, at: float) -> AlertEdge | None:
        """Count a transition of ``env`` at time ``at``; return the edge it causes, if any.

        Normally that is the ``raised`` edge when this transition makes the count reach
        ``high``, and None otherwise. Before counting it, the environment is brought up to
        ``at``: a ``cleared`` edge that fell due earlier but was not yet collected by
        :meth:`expire` (a late timer) is returned instead, with its own earlier ``at``. If
        the same transition then starts a new episode, its ``raised`` edge is held back and
        handed out by the next ``expire`` (``next_deadline`` returns ``at`` meanwhile), so
        the order of the edges is always right.

        Wall clocks can step back: an ``at`` earlier than the environment's newest
        transition is counted as happening at that newest transition's time.
        """
        state = self._envs.get(env)
        if state is None:
            state = self._envs[env] = _Flaps(deque(maxlen=self.high))
        if state.times:
            at = max(at, state.times[-1])
        edges = self._settle(env, state, at)
        state.times.append(at)
        if not state.flapping and self.count(env, at) >= self.high:
            state.flapping = True
            edges.append(self._edge(env, "raised", at))
        return self._hand_out(env, state, edges)

    def expire(self, now: float) -> list[AlertEdge]:
        """Every edge due by ``now``: ``cleared`` edges of episodes whose count has fallen
        to ``low`` (and any edge ``record`` held back), in time order."""
        edges: list[AlertEdge] = []
        for env in self._deadlines.pop_due(now):
            state = self._envs[env]
            edges.extend(self._settle(env, state, now))
            self._schedule(env, state)
        return edges

    def restore(self, env: str, transitions: Iterable[float], flapping: bool) -> None:
        """Load ``env``'s state after a controller restart; no edge is emitted.

        ``transitions`` are its recorded transition times (any order; only the newest
        ``high`` matter) and ``flapping`` whether its alert was raised and not yet
        cleared. A restored episode is cleared by :meth:`expire` when its count falls to
        ``low``, at once if it already has. A restored non-flapping environment whose
        count is already at ``high`` is raised by its next transition.
        """
        newest = sorted(transitions)[-self.high :]
        state = _Flaps(deque(newest, maxlen=self.high), flapping=flapping)
        self._envs[env] = state
        self._schedule(env, state)

    def forget(self, env: str) -> None:
        """Drop everything about ``env`` (retired or deleted); no edge is emitted."""
        self._envs.pop(env, None)
        self._deadlines.cancel(env)

    # --- internals -----------------------------------------------------------------------
    def _clear_time(self, state: _Flaps) -> float | None:
        """When the count of a flapping environment falls to ``low``; None if it already
        has without our knowing when (a restored episode with few transitions)."""
        if len(state.times) <= self.low:
            return None
        return state.times[-(self.low + 1)] + self.window

    def _settle(self, env: str, state: _Flaps, now: float) -> list[AlertEdge]:
        """Edges of ``env`` due by ``now``, oldest first, updating its state."""
        edges, state.held = state.held, []
        if state.flapping:
            clear_at = self._clear_time(state)
            if clear_at is None or clear_at <= now:
                state.flapping = False
                edges.append(self._edge(env, "cleared", now if clear_at is None else clear_at))
        return edges

    def _hand_out(self, env: str, state: _Flaps, edges: list[AlertEdge]) -> AlertEdge | None:
        first, state.held = split_held(edges)
        self._schedule(env, state)
        return first

    def _schedule(self, env: str, state: _Flaps) -> None:
        due: float | None = None
        if state.flapping:
            clear_at = self._clear_time(state)
            # An episode that is over already is due at once: any time in the past will do.
            due = (state.times[-1] if state.times else 0.0) if clear_at is None else clear_at
        self._deadlines.set(env, earliest_due(due, state.held))

    def _edge(self, env: str, state: AlertState, at: float) -> AlertEdge:
        if state == "raised":
            detail = f"{self.high} transitions within {self.window:g} s"
            return AlertEdge(env, "flapping", "raised", at, detail)
        detail = f"transitions within {self.window:g} s fell to {self.low}"
        return AlertEdge(env, "flapping", "cleared", at, detail)
