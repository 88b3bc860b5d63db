"""Runtime resource pressure from the heartbeats: cpu, memory and disk against thresholds
(pure, no clock of its own: the caller passes the time of receipt).

Per environment and resource (the heartbeat's ``cpu``, ``mem``, ``disk`` percent fields):

- an episode is **raised** by the :data:`CONSECUTIVE`-th heartbeat in a row whose figure is
  at or above the threshold (``disk 96.5 % >= 90 %``);
- it is **cleared** by the :data:`CONSECUTIVE`-th heartbeat in a row whose figure is below
  the *clearing level*: the threshold minus :data:`MARGIN` points (at least half the
  threshold). A figure between the two neither clears nor counts towards clearing, so a
  disk hovering around 90 % gives one episode, not a stream;
- one ``raised`` and one ``cleared`` edge per episode, alternating, starting with ``raised``;
- a heartbeat without the figure (an agent without psutil, an old agent) changes nothing,
  neither the counts nor the episode;
- an environment that goes offline keeps its episode (a full disk stays full while the
  link is down): the next heartbeats decide. Retirement and ``env forget`` drop it without
  an edge (:meth:`PressureWatch.forget`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.shared.resources import DEFAULT_THRESHOLDS, PRESSURE_KINDS, RESOURCES, Resource

__all__ = ["CONSECUTIVE", "MARGIN", "PressureWatch", "clearing_level"]

CONSECUTIVE: Final = 3  # heartbeats in a row that raise, or clear, an episode
MARGIN: Final = 5.0  # percentage points below the threshold that clear it


def clearing_level(threshold: float) -> float:
    """The figure a resource must fall below, :data:`CONSECUTIVE` times, to clear."""
    return max(threshold - MARGIN, threshold / 2)


@dataclass(slots=True)
class _Gauge:
    """One resource of one environment."""

    raised: bool = False
    streak: int = 0  # heartbeats in a row past the level that would change `raised`


class PressureWatch:
    """The pressure episodes of every environment; memory per environment is three small
    counters, created at its first figure."""

    def __init__(self, thresholds: Mapping[Resource, float] | None = None) -> None:
        chosen = dict(DEFAULT_THRESHOLDS)
        chosen.update(thresholds or {})
        for resource, threshold in chosen.items():
            if not 0 < threshold <= 100:
                raise ValueError(
                    f"{resource} threshold must be above 0 and at most 100 %, got {threshold!r}"
                )
        self._limits = tuple((r, chosen[r], clearing_level(chosen[r])) for r in RESOURCES)
        self._envs: dict[str, tuple[_Gauge, _Gauge, _Gauge]] = {}

    def thresholds(self) -> dict[Resource, float]:
        return {resource: threshold for resource, threshold, _ in self._limits}

    def active(self, env: str) -> tuple[Resource, ...]:
        """The resources of ``env`` under pressure (its open episodes), in order."""
        gauges = self._envs.get(env)
        if gauges is None:
            return ()
        return tuple(r for (r, _, _), g in zip(self._limits, gauges, strict=True) if g.raised)

    def observe(
        self,
        env: str,
        cpu: float | None,
        mem: float | None,
        disk: float | None,
        at: float,
    ) -> list[AlertEdge]:
        """One heartbeat's figures (None: not reported); the edges they cause."""
        if cpu is None and mem is None and disk is None:
            return []
        gauges = self._envs.get(env)
        if gauges is None:
            gauges = self._envs[env] = (_Gauge(), _Gauge(), _Gauge())
        edges: list[AlertEdge] = []
        for value, gauge, limits in zip((cpu, mem, disk), gauges, self._limits, strict=True):
            if value is None:
                continue
            if not gauge.raised and not gauge.streak and value < limits[1]:
                continue  # the usual heartbeat: nothing to count
            edge = _step(env, gauge, value, at, *limits)
            if edge is not None:
                edges.append(edge)
        return edges

    def restore(self, env: str, resources: Iterable[str]) -> None:
        """After a restart: ``env``'s open episodes (from the stored alert edges); no edge.
        An open episode is cleared by :data:`CONSECUTIVE` heartbeats below its level."""
        open_ones = set(resources)
        if not open_ones:
            return
        gauges = (_Gauge(), _Gauge(), _Gauge())
        for (resource, _, _), gauge in zip(self._limits, gauges, strict=True):
            gauge.raised = resource in open_ones
        self._envs[env] = gauges

    def forget(self, env: str) -> None:
        """Drop everything about ``env`` (retired or forgotten); no edge."""
        self._envs.pop(env, None)


def _step(
    env: str,
    gauge: _Gauge,
    value: float,
    at: float,
    resource: Resource,
    threshold: float,
    clear_below: float,
) -> AlertEdge | None:
    past = value < clear_below if gauge.raised else value >= threshold
    if not past:
        gauge.streak = 0
        return None
    gauge.streak += 1
    if gauge.streak < CONSECUTIVE:
        return None
    gauge.streak = 0
    gauge.raised = not gauge.raised
    kind = PRESSURE_KINDS[resource]
    if gauge.raised:
        detail = f"{resource} {value:g} % >= {threshold:g} %"
        return AlertEdge(env, kind, "raised", at, detail)
    detail = f"{resource} {value:g} % < {clear_below:g} %"
    return AlertEdge(env, kind, "cleared", at, detail)
