"""What one connection has asked the broker and not yet been answered: requests awaiting
their PUBACK or SUBACK by packet identifier, and the window that bounds its QoS 1 publishes
awaiting PUBACK (the broker's Receive Maximum)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edgeplane.edge_agent.simulator.wire.errors import WireError
from edgeplane.edge_agent.simulator.wire.packets import PubAck, SubAck

__all__ = ["InflightWindow", "PendingAnswers"]

Answer = asyncio.Future[PubAck | SubAck]


class PendingAnswers:
    """Requests awaiting their answer, by packet identifier (1-65535, reused once free)."""

    __slots__ = ("_futures", "_loop", "_next_id", "owner")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: str) -> None:
        self._loop = loop
        self.owner = owner  # names the connection in errors
        self._futures: dict[int, Answer] = {}
        self._next_id = 0

    def new_packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._futures:
                return self._next_id
        raise WireError(f"{self.owner}: all 65535 packet identifiers are in use")

    def expect(self, packet_id: int) -> Answer:
        """The future the answer to ``packet_id`` will resolve; :meth:`forget` it when done."""
        answer: Answer = self._loop.create_future()
        self._futures[packet_id] = answer
        return answer

    def forget(self, packet_id: int) -> None:
        self._futures.pop(packet_id, None)

    def answer(self, ack: PubAck | SubAck) -> None:
        """The broker answered; an answer nobody waits for any more is dropped."""
        future = self._futures.get(ack.packet_id)
        if future is not None and not future.done():
            future.set_result(ack)

    def fail_all(self, error: WireError) -> None:
        for future in [*self._futures.values()]:
            if not future.done():
                future.set_exception(error)


class InflightWindow:
    """At most ``size`` QoS 1 publishes awaiting PUBACK; ``used`` of them are now. Those
    waiting for a slot are woken one at a time as slots free up, all at once by :meth:`open_all`
    (the connection ended: they find out when they look)."""

    __slots__ = ("_loop", "_waiters", "size", "used")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self.size = size
        self.used = 0
        self._waiters: list[asyncio.Future[None]] | None = None  # made when someone waits

    @property
    def full(self) -> bool:
        return self.used >= self.size

    async def take(self, check_open: Callable[[], None]) -> None:
        """Wait for a free slot and take it; ``check_open`` raises once the connection is
        gone, before and after each wait."""
        while self.used >= self.size:
            check_open()
            waiter: asyncio.Future[None] = self._loop.create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter  # resolved when a slot frees up or the connection ends
        check_open()
        self.used += 1

    def take_nowait(self) -> None:
        """Take a slot the caller has seen is free (not :attr:`full`)."""
        self.used += 1

    def give(self) -> None:
        self.used -= 1
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def open_all(self) -> None:
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = None
