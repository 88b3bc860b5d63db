"""Identity conflicts: two runtimes using one environment's identity. Pure and clock-driven.

Every agent process announces a ``boot`` id that changes with each start. One runtime gives
one boot id at a time: a restart replaces it (A, A, B, B, ...) and the old one never comes
back. Two runtimes sharing an identity keep taking the session from each other, so the
status topic alternates between their boot ids: A, B, A, B ...

Semantics, all times being plain floats in one clock chosen by the caller:

* **Raised** (once) by an online message whose boot id was already seen within the last
  ``window`` seconds, with a different boot id seen since: the old boot came back. With
  ``max_boots`` set, also when more than ``max_boots`` distinct boot ids were seen within
  the window (two runtimes that each restart, so no id ever comes back). That rule is off
  by default because a crash-looping agent looks the same, and flapping covers that case.
* **Raised** (once) also by an online message that says its session was taken over by
  another boot id (``taken_over_by``): the agent that lost its session to a second runtime
  reconnects at once and says so, so the alert does not wait to see the boot ids alternate.
* **Cleared** (once) when only one boot id has been seen for ``quiet`` seconds: that is,
  ``quiet`` seconds after the current boot id started, if no other one has appeared since.
  Clearing is time-driven; :meth:`IdentityWatch.next_deadline` says when it falls due and
  :meth:`IdentityWatch.expire` hands out the ``cleared`` edge, whose ``at`` is that exact
  moment. An environment that falls silent is cleared the same way.
* Per environment the edges alternate, starting with ``raised``: never a stream.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from edgeplane.controller.core.alerts import AlertEdge, earliest_due, split_held
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.messages import AlertState

__all__ = ["IdentityWatch"]

# Boot ids remembered per environment. Two runtimes need two; the rest is slack for
# restarts in between. Older ids are forgotten first.
_MAX_REMEMBERED_BOOTS = 16


@dataclass(slots=True)
class _Boots:
    current: str
    current_since: float  # when `current` took over from another boot id (or first seen)
    last_at: float  # the newest observation
    last_seen: OrderedDict[str, float] = field(default_factory=OrderedDict)  # boot -> time
    conflict: bool = False
    # Edges already decided but not yet handed out (see IdentityWatch.observe).
    held: list[AlertEdge] = field(default_factory=list)


class IdentityWatch:
    """Watches the boot ids of each environment's online messages for a second runtime.

    Memory per environment is at most a handful of boot ids; every call costs O(log n) in
    the number of environments with a pending deadline, never a scan of the fleet.
    """

    def __init__(
        self, window: float = 600.0, quiet: float = 300.0, max_boots: int | None = None
    ) -> None:
        if not window > 0:
            raise ValueError(f"identity window must be > 0 seconds, got {window!r}")
        if not quiet > 0:
            raise ValueError(f"identity quiet time must be > 0 seconds, got {quiet!r}")
        if max_boots is not None and not 2 <= max_boots < _MAX_REMEMBERED_BOOTS:
            raise ValueError(
                f"max_boots must be None or 2..{_MAX_REMEMBERED_BOOTS - 1}, got {max_boots!r}"
            )
        self.window = float(window)
        self.quiet = float(quiet)
        self.max_boots = max_boots
        self._envs: dict[str, _Boots] = {}
        self._deadlines = TimerHeap()

    # --- queries -------------------------------------------------------------------------
    def in_conflict(self, env: str) -> bool:
        """Whether ``env`` is in an identity-conflict episode (raised, not yet cleared)."""
        state = self._envs.get(env)
        return state is not None and state.conflict

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`expire` could return an edge, or None.

        Ask again after every ``observe``, ``restore``, ``forget`` or ``expire``.
        """
        return self._deadlines.next_deadline()

    # --- events --------------------------------------------------------------------------
    def observe(self, env: str, boot: str, at: float, taken_over_by: str = "") -> AlertEdge | None:
        """Take note of an online message of ``env`` from boot ``boot`` at time ``at``
        (``taken_over_by``: the message says that boot id took its session over).

        Returns the ``raised`` edge when this message reveals a conflict that was not
        already raised, else None. As with the flap detector, a ``cleared`` edge that fell
        due before ``at`` but was not yet collected by :meth:`expire` is returned first,
        and a raise decided by the same message is then held for the next ``expire``
        (``next_deadline`` returns ``at`` meanwhile). An ``at`` earlier than the newest
        observation (a wall clock stepping back) counts as that newest time.
        """
        state = self._envs.get(env)
        if state is None:
            state = self._envs[env] = _Boots(boot, at, at)
        at = max(at, state.last_at)
        edges = self._settle(env, state, at)
        why = self._note(state, boot, at)
        if why is None and taken_over_by and taken_over_by != boot:
            why = f"boot id {boot[:60]!r} says {taken_over_by[:60]!r} took its session over"
            state.current_since = at  # two runtimes as of now: quiet from here
        if why is not None and not state.conflict:
            state.conflict = True
            edges.append(self._edge(env, "raised", at, why))
        return self._hand_out(env, state, edges)

    def conflict(self, env: str, at: float, why: str) -> AlertEdge | None:
        """A second runtime shown by other means (an online whose box key is not the
        pinned one): raised once, like :meth:`observe`, and quiet counts from ``at``."""
        state = self._envs.get(env)
        if state is None:
            state = self._envs[env] = _Boots("", at, at)
        at = max(at, state.last_at)
        edges = self._settle(env, state, at)
        state.current_since = at
        if not state.conflict:
            state.conflict = True
            edges.append(self._edge(env, "raised", at, why[:200]))
        return self._hand_out(env, state, edges)

    def expire(self, now: float) -> list[AlertEdge]:
        """Every edge due by ``now``: ``cleared`` edges of environments that have shown
        one boot id for ``quiet`` seconds (and any edge ``observe`` held back), in time
        order."""
        edges: list[AlertEdge] = []
        for env in self._deadlines.pop_due(now):
            state = self._envs[env]
            edges.extend(self._settle(env, state, now))
            self._schedule(env, state)
        return edges

    def restore(self, env: str, conflict: bool, at: float) -> None:
        """After a controller restart: mark ``env`` as in conflict (or not) as of ``at``,
        without an edge. A restored conflict is cleared by :meth:`expire` ``quiet``
        seconds after ``at`` unless boot ids keep alternating."""
        state = self._envs.get(env)
        if state is None:
            state = self._envs[env] = _Boots("", at, at)
        state.conflict = conflict
        state.current_since = max(state.current_since, at)
        state.last_at = max(state.last_at, at)
        state.held = []
        self._schedule(env, state)

    def forget(self, env: str) -> None:
        """Drop everything about ``env`` (retired or deleted); no edge is emitted."""
        self._envs.pop(env, None)
        self._deadlines.cancel(env)

    # --- internals -----------------------------------------------------------------------
    def _note(self, state: _Boots, boot: str, at: float) -> str | None:
        """Record the observation; say why if it shows a second runtime."""
        state.last_at = at
        seen = state.last_seen
        if boot == state.current:
            seen[boot] = at
            seen.move_to_end(boot)
            return None
        came_back = boot in seen and at - self.window < seen[boot]
        previous = state.current
        state.current, state.current_since = boot, at
        seen[boot] = at
        seen.move_to_end(boot)
        while len(seen) > _MAX_REMEMBERED_BOOTS:
            seen.popitem(last=False)
        if came_back:
            # Boot ids are up to 256 characters; the alert's detail must stay under that.
            return f"boot id {boot[:60]!r} came back after {previous[:60]!r}"
        if self.max_boots is None:
            return None
        recent = sum(1 for t in seen.values() if at - self.window < t)
        if recent > self.max_boots:
            return f"{recent} boot ids within {self.window:g} s"
        return None

    def _settle(self, env: str, state: _Boots, now: float) -> list[AlertEdge]:
        edges, state.held = state.held, []
        clear_at = state.current_since + self.quiet
        if state.conflict and clear_at <= now:
            state.conflict = False
            detail = f"one boot id for {self.quiet:g} s"
            edges.append(self._edge(env, "cleared", clear_at, detail))
        return edges

    def _hand_out(self, env: str, state: _Boots, edges: list[AlertEdge]) -> AlertEdge | None:
        first, state.held = split_held(edges)
        self._schedule(env, state)
        return first

    def _schedule(self, env: str, state: _Boots) -> None:
        due = state.current_since + self.quiet if state.conflict else None
        self._deadlines.set(env, earliest_due(due, state.held))

    @staticmethod
    def _edge(env: str, state: AlertState, at: float, detail: str) -> AlertEdge:
        return AlertEdge(env, "identity-conflict", state, at, detail)
