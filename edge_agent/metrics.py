"""Host metrics for the heartbeat, sampled without blocking.

``psutil.cpu_percent(interval=None)`` compares against the previous call, so the sampler
primes it once at construction; every later sample covers the time since the one before.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

__all__ = ["HostMetrics", "Sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Percentages of CPU, memory and disk in use; None when one could not be read."""

    cpu: float | None
    mem: float | None
    disk: float | None


class HostMetrics:
    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)

    def sample(self) -> Sample:
        return Sample(cpu=self._cpu(), mem=self._mem(), disk=self._disk())

    @staticmethod
    def _cpu() -> float | None:
        try:
            return _percent(psutil.cpu_percent(interval=None))
        except OSError:
            return None

    @staticmethod
    def _mem() -> float | None:
        try:
            return _percent(psutil.virtual_memory().percent)
        except OSError:
            return None

    def _disk(self) -> float | None:
        try:
            return _percent(psutil.disk_usage(self.disk_path).percent)
        except OSError:
            return None


def _percent(value: float) -> float:
    """One decimal, clamped into [0, 100] (the wire type refuses anything outside)."""
    return round(min(100.0, max(0.0, float(value))), 1)
