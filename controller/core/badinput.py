"""Bad input accounting: every dropped message is counted by reason, and logged at most once
per reason per interval, so a misbehaving publisher cannot flood the log.

Reasons are the codec's (``too-large``, ``empty``, ``not-json``, ``schema``,
``env-mismatch``) plus ``bad-topic`` for a topic outside the tree or with an invalid id.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplane.shared.clock import Clock

__all__ = ["BadInput", "LogDecision"]


@dataclass(frozen=True, slots=True)
class LogDecision:
    """Whether to log this drop now, and how many of its kind went unlogged before it."""

    log: bool
    suppressed: int = 0


class BadInput:
    def __init__(self, clock: Clock, every: float = 60.0) -> None:
        self._clock = clock
        self._every = every
        self._counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def drop(self, reason: str) -> LogDecision:
        """Count one dropped message; say whether it should be logged now."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = self._clock.monotonic()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._every:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return LogDecision(False)
        self._last_logged[reason] = now
        return LogDecision(True, self._unlogged.pop(reason, 0))

    @property
    def counts(self) -> dict[str, int]:
        """Dropped messages by reason since start (a copy)."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())
