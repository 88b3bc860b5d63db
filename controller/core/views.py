"""Views someone else wrote: the controller's ``R/view/{env}`` is its judgement, and a
retained view that says otherwise (wiped, forged, garbage) is put right (pure).

The controller subscribes to the views without its own publishes (MQTT 5 no-local), so
every view that arrives after the retained sync was written by someone else. One that
differs from the controller's judgement is noted (:meth:`ViewGuard.wrong`); the ticker
asks for the environments whose correction is due (:meth:`ViewGuard.due`) and publishes
its own view again. Each environment is corrected at most once per ``every`` seconds: two
controllers on one tree, or a loop of any kind, cannot storm the broker. A view that
turns wrong again sooner waits for its turn, it is not forgotten.
"""

from __future__ import annotations

from typing import Final

from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import EnvView

__all__ = ["CORRECT_EVERY", "ViewGuard", "same_judgement"]

CORRECT_EVERY: Final = 5.0  # seconds between two corrections of one environment's view


def same_judgement(held: EnvView | None, ours: EnvView | None) -> bool:
    """Whether the view held says what ours says (``last_seen`` moves with every
    heartbeat and is not re-published for that alone); None: no view, or ours is none."""
    if held is None or ours is None:
        return held is None and ours is None
    return _judged(held) == _judged(ours)


def _judged(view: EnvView) -> tuple[object, ...]:
    return (
        view.status,
        view.since,
        view.flapping,
        view.reason,
        view.interval,
        view.registered,
        view.pressure,
        view.missed_pct,
        view.reconnects_1h,
        view.open_incidents,
    )


class ViewGuard:
    def __init__(self, clock: Clock, every: float = CORRECT_EVERY) -> None:
        self._clock = clock
        self._every = every
        self._pending: set[str] = set()
        self._last: dict[str, float] = {}  # env -> monotonic time of its last correction
        self.corrected = 0  # corrections made since start

    def wrong(self, env: str) -> None:
        """``env``'s view was written wrong by someone else: correct it when allowed."""
        self._pending.add(env)

    def due(self) -> list[str]:
        """The environments to correct now (each then counted as corrected now)."""
        if not self._pending:
            return []
        now = self._clock.monotonic()
        ready = sorted(env for env in self._pending if self._allowed(env, now))
        for env in ready:
            self._pending.discard(env)
            self._last[env] = now
        self.corrected += len(ready)
        return ready

    def forget(self, env: str) -> None:
        """Nothing more to correct or remember of ``env`` (an id the controller forgot)."""
        self._pending.discard(env)
        self._last.pop(env, None)

    def _allowed(self, env: str, now: float) -> bool:
        last = self._last.get(env)
        return last is None or now - last >= self._every

    def __len__(self) -> int:
        """Corrections waiting for their turn."""
        return len(self._pending)
