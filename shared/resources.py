"""Runtime resource pressure, as the heartbeats report it: the resources, their alert
kinds and the default thresholds (one place: the controller's detector, its settings and
``env diagnose`` compare heartbeats with the same figures)."""

from __future__ import annotations

from typing import Any, Final, Literal

from edgeplane.shared.messages import AlertKind

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PRESSURE_KINDS",
    "RESOURCES",
    "Resource",
    "threshold_percent",
]

Resource = Literal["cpu", "mem", "disk"]  # the heartbeat's field names
RESOURCES: Final[tuple[Resource, ...]] = ("cpu", "mem", "disk")
DEFAULT_THRESHOLDS: Final[dict[Resource, float]] = {"cpu": 90.0, "mem": 90.0, "disk": 90.0}
PRESSURE_KINDS: Final[dict[Resource, AlertKind]] = {
    "cpu": "cpu-pressure",
    "mem": "memory-pressure",
    "disk": "disk-pressure",
}


def threshold_percent(value: Any) -> float:
    """A threshold in percent: a number with 0 < x <= 100."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage above 0 and at most 100, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a percentage above 0 and at most 100, got {value!r}") from None
    if not 0 < number <= 100:
        raise ValueError(f"expected a percentage above 0 and at most 100, got {value!r}")
    return number
