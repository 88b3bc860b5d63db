"""Events from the outbox to the broker, in ``seq`` order, a bounded window at a time.

Every event reaches the outbox (:mod:`edge_agent.outbox`) first: commands answered on the
loop, the executor's reports from its threads. After each online publish the backlog goes
out from the oldest event not acknowledged, new events as they come, at most
:data:`EVENT_WINDOW` awaiting their PUBACK at once; a PUBACK deletes its event from the
outbox. A lost connection forgets what was in flight: the next connection sends it again
(the controller stores each event once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from edgeplane.edge_agent.outbox import Outbox
from edgeplane.edge_agent.session import MqttSession

__all__ = ["EVENT_WINDOW", "EventPump"]

EVENT_WINDOW: Final = 100  # events published and awaiting their PUBACK at most


class EventPump:
    """Publishes the outbox's events on ``topic`` while ``can_send()`` says so."""

    def __init__(
        self, outbox: Outbox, session: MqttSession, topic: str, can_send: Callable[[], bool]
    ) -> None:
        self.topic = topic
        self._outbox = outbox
        self._session = session
        self._can_send = can_send
        self._in_flight: dict[int, int] = {}  # mid -> seq of events awaiting their PUBACK
        self._sent_up_to = 0  # the highest seq published on this connection
        self._acknowledged: list[int] = []  # seqs PUBACKed, to delete after this poll

    def restart(self) -> None:
        """A new connection is online: the backlog, from the oldest event not acknowledged."""
        self._sent_up_to = 0

    def forget_in_flight(self) -> None:
        """The connection is lost: no PUBACK will come for what was published on it."""
        self._in_flight.clear()

    def send(self) -> None:
        """Publish outbox events not yet sent on this connection, oldest first."""
        if not self._can_send():
            return
        window = EVENT_WINDOW
        while len(self._in_flight) < window and self._outbox.last_seq > self._sent_up_to:
            newest = self._outbox.last_seq
            batch = self._outbox.pending(self._sent_up_to, window - len(self._in_flight))
            if not batch:
                self._sent_up_to = newest
                return
            for seq, payload in batch:
                self._in_flight[self._session.publish(self.topic, payload)] = seq
                self._sent_up_to = seq

    def on_published(self, mid: int) -> int | None:
        """A PUBACK: the seq of the event it acknowledges (None: not an event)."""
        seq = self._in_flight.pop(mid, None)
        if seq is not None:
            self._acknowledged.append(seq)
        return seq

    def forget_acknowledged(self) -> None:
        """Delete the events the broker acknowledged since the last poll: one transaction
        (a crash before it only means sending them again)."""
        if self._acknowledged:
            self._outbox.acked(*self._acknowledged)
            self._acknowledged.clear()
