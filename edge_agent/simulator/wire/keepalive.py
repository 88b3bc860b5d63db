"""Keepalive: when one connection must ping and when its broker counts as gone
(:class:`PingTimer`), and the pings of any number of connections from one task
(:class:`KeepaliveScheduler`)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from typing import Protocol

__all__ = ["KeepaliveClient", "KeepaliveScheduler", "PingTimer"]


class PingTimer:
    """One connection's keepalive: a PINGREQ once it has been quiet for most of the
    keepalive, the broker gone once a PINGREQ went unanswered for a whole keepalive."""

    __slots__ = ("keepalive", "ping_sent_at")

    def __init__(self) -> None:
        self.keepalive = 0  # seconds; 0: no keepalive
        self.ping_sent_at: float | None = None  # the PINGREQ awaiting its PINGRESP

    def broker_gone(self, now: float) -> bool:
        return self.ping_sent_at is not None and now - self.ping_sent_at >= self.keepalive

    def next_ping(self, now: float, last_sent: float) -> float | None:
        """When to look again if no PINGREQ is due now (we last wrote at ``last_sent``);
        None: send one now."""
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.keepalive
        quiet_until = last_sent + 0.75 * self.keepalive
        return quiet_until if now < quiet_until else None


class KeepaliveClient(Protocol):
    def keepalive_due(self, now: float) -> float | None:
        """Ping or close as due at ``now``; return when to be called next, None once closed."""
        ...


class KeepaliveScheduler:
    """Keepalive pings for any number of connections from one task.

    Each connection sits in a heap at the time it must next be looked at; a connection that
    has sent something since is simply put back later, so the work per tick is only the
    connections that are actually due, not all of them.
    """

    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self._heap: list[tuple[float, int, KeepaliveClient]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, client: KeepaliveClient) -> None:
        due = client.keepalive_due(asyncio.get_running_loop().time())
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._order), client))

    def run_due(self, now: float) -> None:
        """Look at every connection due by ``now``."""
        while self._heap and self._heap[0][0] <= now:
            _, order, client = heapq.heappop(self._heap)
            due = client.keepalive_due(now)
            if due is not None:
                heapq.heappush(self._heap, (due, order, client))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            self.run_due(loop.time())

    async def __aenter__(self) -> KeepaliveScheduler:
        self._task = asyncio.create_task(self.run(), name="mqtt-keepalive")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
