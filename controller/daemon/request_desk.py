"""Operator requests taken off the receive path (MQTT 5 request/response).

The receiver hands each message on the requests topic to :meth:`RequestDesk.take`, which
checks its response topic (only a requester's own, ``R/controller/reply/{client}``: a
reply anywhere else would let anyone who may send requests publish around the broker's
ACL, on a view, a cmd topic or outside the tree), drops a retained one (a stale request
left on the broker must not run at every start) and a re-delivery (QoS 1 may deliver
twice: the first is answered, a deploy runs once), and queues it. A few workers
(:meth:`serve`) answer the queue once the retained state is synchronised:
:class:`~edgeplane.controller.daemon.requests.RequestHandler` does the work, the
publisher stores its effects and sends the reply. A full queue is answered at once with
``unavailable``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from edgeplane.controller.core.operations import Outgoing
from edgeplane.controller.daemon.publisher import Publisher
from edgeplane.controller.daemon.requests import RequestHandler, failed
from edgeplane.controller.mqtt import Message
from edgeplane.shared.codec import encode
from edgeplane.shared.errors import InvalidTopic
from edgeplane.shared.rpc import REQUEST_EXPIRY, Reply
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = ["REQUEST_QUEUE", "REQUEST_WORKERS", "RequestDesk"]

REQUEST_WORKERS: Final = 4
REQUEST_QUEUE: Final = 1000
RECENT_REQUESTS: Final = 4096  # correlation data remembered to run a re-delivery once

log: Final = structlog.get_logger("controller")

Drop = Callable[[str, str, str], None]
"""Count and log bad input: (reason, topic, detail)."""


@dataclass(frozen=True, slots=True)
class PendingRequest:
    payload: bytes
    response_topic: str
    correlation: bytes | None


class RequestDesk:
    def __init__(
        self,
        root: TopicRoot,
        handler: RequestHandler,
        publisher: Publisher,
        synced: asyncio.Event,
        drop: Drop,
    ) -> None:
        self._root = root
        self._handler = handler
        self._publisher = publisher
        self._synced = synced
        self._drop = drop
        self._queue: asyncio.Queue[PendingRequest] = asyncio.Queue(REQUEST_QUEUE)
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    async def take(self, message: Message) -> None:
        """Queue one request message (or drop it, or answer that we are busy)."""
        topic, response_topic = message.topic, message.response_topic
        if not response_topic:
            self._drop("no-response-topic", topic, "a request without a response topic")
            return
        if not self._is_reply_topic(response_topic):
            why = f"response topic {response_topic[:100]!r} is not {self._root}/controller/reply/ID"
            self._drop("bad-response-topic", topic, why)
            return
        if message.retained:
            self._drop("retained-request", topic, "a retained request")
            return
        correlation = message.correlation
        if correlation and self._seen_before((response_topic, correlation)):
            log.debug("duplicate request ignored", response_topic=response_topic[:200])
            return
        pending = PendingRequest(message.payload, response_topic, correlation)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            busy = failed("unavailable", "the controller is too busy; try again in a moment")
            await self._publisher.send(_reply_message(pending, busy))

    async def serve(self) -> None:
        """One worker: answers queued requests until cancelled."""
        while True:
            pending = await self._queue.get()
            await self._synced.wait()
            reply, effects = await self._handler.handle(pending.payload, pending.response_topic)
            number = await self._publisher.carry_out(None, effects)
            await self._publisher.send(_reply_message(pending, reply), after=number)

    def _is_reply_topic(self, topic: str) -> bool:
        try:
            return self._root.parse(topic).kind is TopicKind.REPLY
        except InvalidTopic:
            return False

    def _seen_before(self, key: tuple[str, bytes]) -> bool:
        """Whether this (response topic, correlation data) came lately; remembers it."""
        if key in self._recent:
            return True
        self._recent[key] = None
        if len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        return False


def _reply_message(pending: PendingRequest, reply: Reply) -> Outgoing:
    return Outgoing(
        pending.response_topic,
        encode(reply),
        False,
        expiry=REQUEST_EXPIRY,
        correlation=pending.correlation,
    )
