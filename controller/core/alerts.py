"""What the pure detectors hand to the controller: alert edges.

An *edge* is one change of an alert's state for one environment: ``raised`` when an
episode starts, ``cleared`` when it ends. A detector emits exactly one of each per
episode, alternating per environment and kind, starting with ``raised``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplane.shared.messages import AlertKind, AlertState

__all__ = ["AlertEdge", "earliest_due", "split_held"]


@dataclass(frozen=True, slots=True)
class AlertEdge:
    """One alert edge. ``at`` is the time, in the detector's clock, at which the condition
    started or ended (not when the controller happened to notice)."""

    env: str
    kind: AlertKind
    state: AlertState
    at: float
    detail: str


def split_held(edges: list[AlertEdge]) -> tuple[AlertEdge | None, list[AlertEdge]]:
    """The edge to hand out now, and the rest, held for the next ``expire()``.

    Only if ``expire()`` is never called do edges pile up; dropping an adjacent
    cleared/raised pair nobody has seen keeps the order right and the memory bounded.
    """
    held = edges[1:]
    while len(held) > 2:
        del held[-3:-1]
    return (edges[0] if edges else None), held


def earliest_due(due: float | None, held: list[AlertEdge]) -> float | None:
    """A detector's next deadline: its own ``due``, or sooner if a held edge is waiting."""
    if not held:
        return due
    return held[0].at if due is None else min(due, held[0].at)
