"""What the fleet's heartbeats need besides the agent's own
:class:`~edgeplane.edge_agent.heartbeat.HeartbeatBuilder`: cheap metrics to put in them, and
one timer that sends every agent's heartbeat when it is due."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from typing import Protocol

from edgeplane.edge_agent.metrics import Sample

__all__ = ["BeatSchedule", "Beating", "SimulatedMetrics"]


class SimulatedMetrics:
    """Plausible host metrics drawn from ``rng``: ten thousand agents a process cannot each
    ask the host (psutil) every interval, and would all report the same host if they did."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def sample(self) -> Sample:
        uniform = self._rng.uniform
        return Sample(
            cpu=round(uniform(1, 60), 1),
            mem=round(uniform(20, 70), 1),
            disk=round(uniform(10, 90), 1),
        )


class Beating(Protocol):
    def beat(self, due: float, now: float, token: int) -> float | None:
        """Send the heartbeat due at ``due`` (it is ``now``) of the series ``token``;
        return when the next one is due, or None when the series is over."""
        ...


class BeatSchedule:
    """Every heartbeat of the fleet from one timer: each tick of ``tick`` seconds sends
    those due.

    One timer instead of one per agent keeps the per-heartbeat cost low, and the heartbeats
    of one tick reach the broker together, so it wakes up less often."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._heap: list[tuple[float, int, Beating, int]] = []
        self._order = itertools.count()

    def add(self, agent: Beating, delay: float, token: int) -> None:
        """Start a series of heartbeats, the first in ``delay`` seconds."""
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._heap, (due, next(self._order), agent, token))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        beats = self._heap
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            while beats and beats[0][0] <= now:
                due, order, agent, token = heapq.heappop(beats)
                next_due = agent.beat(due, now, token)
                if next_due is not None:
                    heapq.heappush(beats, (next_due, order, agent, token))
