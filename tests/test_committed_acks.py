"""The events session acknowledges a message only once what it changed is committed
(controller/daemon/links.py, CommittedAcks), in the order the messages came."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.links import CommittedAcks
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.controller.mqtt import Message
from tests.support.system import wait_until


class Acknowledged:
    """Stands in for the connection's ``ack``: what was acknowledged, and what the store
    had committed at that moment."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[bytes, int]] = []

    def ack(self, message: Message) -> None:
        self.seen.append((message.payload, self.store.committed))


async def test_each_message_is_acknowledged_in_order_after_its_writes_are_committed(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path / "c.db", linger=30.0) as store:  # it would linger long
        acked = Acknowledged(store)
        acks = CommittedAcks(acked, store)  # type: ignore[arg-type]
        runner = asyncio.create_task(acks.run())
        try:
            first = await store.submit(Writes())  # not urgent: it waits for company
            acks.after(Message("t", b"1"), first)
            acks.after(Message("t", b"2"), store.submitted)  # nothing of its own
            second = await store.submit(Writes())
            acks.after(Message("t", b"3"), second)
            await wait_until(lambda: len(acked.seen) == 3, "all three acknowledged", 5.0)
        finally:
            runner.cancel()
    assert [payload for payload, _ in acked.seen] == [b"1", b"2", b"3"]
    assert all(committed >= number for (_, committed), number in
               zip(acked.seen, [first, first, second], strict=True))  # fmt: skip
