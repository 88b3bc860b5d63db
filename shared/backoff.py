"""Capped, jittered exponential backoff for reconnect loops."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` up to ``cap``, each jittered into [d/2, d].

    Jitter keeps a fleet that lost its broker at once from reconnecting in lockstep.
    Call :meth:`reset` after a connection that lasted.
    """

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        if not factor >= 1:
            raise ValueError("backoff needs factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * self.factor**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self._attempt = 0
