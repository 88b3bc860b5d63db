"""What the pure detectors hand to the controller: alert edges.

An *edge* is one change of an alert's state for one environment: ``raised`` when an
episode starts, ``cleared`` when it ends. A detector emits exactly one of each per
episode, alternating per environment and kind, starting with ``raised``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages import AlertKind, AlertState

__all__ = ["AlertEdge"]


@dataclass(frozen=True, slots=True)
class AlertEdge:
    """One alert edge. ``at`` is the time, in the detector's clock, at which the condition
    started or ended (not when the controller happened to notice)."""

    env: str
    kind: AlertKind
    state: AlertState
    at: float
    detail: str
