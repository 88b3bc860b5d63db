"""The events session acknowledges a message only once what it changed is committed
(controller/daemon/links.py, CommittedAcks), in the order the messages came."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.links import CommittedAcks
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.controller.mqtt import Message, Receipt
from tests.support.system import wait_until


class Acknowledged:
    """Stands in for the connection's ``ack``: what was acknowledged, and what the store
    had committed at that moment."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[int, int]] = []

    def ack(self, receipt: Receipt) -> None:
        self.seen.append((receipt.mid, self.store.committed))


async def test_each_message_is_acknowledged_in_order_after_its_writes_are_committed(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path / "c.db", linger=30.0) as store:  # it would linger long
        acked = Acknowledged(store)
        acks = CommittedAcks(acked, store)  # type: ignore[arg-type]
        runner = asyncio.create_task(acks.run())
        try:
            first = await store.submit(Writes())  # not urgent: it waits for company
            acks.after(Message("t", b"", qos=1, mid=1), first)
            acks.after(Message("t", b"", qos=1, mid=2), store.submitted)  # nothing of its own
            second = await store.submit(Writes())
            acks.after(Message("t", b"", qos=1, mid=3), second)
            await wait_until(lambda: len(acked.seen) == 3, "all three acknowledged", 5.0)
        finally:
            runner.cancel()
    assert [mid for mid, _ in acked.seen] == [1, 2, 3]
    assert all(committed >= number for (_, committed), number in
               zip(acked.seen, [first, first, second], strict=True))  # fmt: skip
