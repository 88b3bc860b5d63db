"""Operator requests taken off the receive path (MQTT 5 request/response).

The receiver hands each message on the requests topic to :meth:`RequestDesk.take`, which
checks its response topic (only a requester's own, ``R/controller/reply/{client}``: a
reply anywhere else would let anyone who may send requests publish around the broker's
ACL, on a view, a cmd topic or outside the tree), drops a retained one (a stale request
left on the broker must not run at every start) and a re-delivery (QoS 1 may deliver
twice: the first is answered, a deploy runs once), and queues it. A ``controller-ping``
(another controller, starting, asks whether we are alive) is answered at once instead,
before the retained state is synchronised, on a lane of its own (:meth:`answer_pings`).
A few workers (:meth:`serve`) answer the queue once the retained state is synchronised:
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

import msgspec
import structlog

from edgeplane.controller.core.operations import Outgoing
from edgeplane.controller.daemon.publisher import Publisher
from edgeplane.controller.daemon.requests import RequestHandler, failed
from edgeplane.controller.mqtt import Connection, Message
from edgeplane.shared.codec import encode
from edgeplane.shared.errors import BrokerUnavailable, InvalidTopic
from edgeplane.shared.messages import ControllerStatus
from edgeplane.shared.rpc import REQUEST_EXPIRY, ControllerPing, Reply
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = ["REQUEST_QUEUE", "REQUEST_WORKERS", "RequestDesk"]

REQUEST_WORKERS: Final = 4
REQUEST_QUEUE: Final = 1000
RECENT_REQUESTS: Final = 4096  # correlation data remembered to run a re-delivery once
PING_QUEUE: Final = 100  # pings not yet answered (more are dropped: no controller pings so often)
PING_OP: Final = str(ControllerPing.__struct_config__.tag)

log: Final = structlog.get_logger("controller")

Drop = Callable[[str, str, str], None]
"""Count and log bad input: (reason, topic, detail)."""


class _Op(msgspec.Struct, frozen=True):
    op: str = ""


_op_of: Final = msgspec.json.Decoder(_Op)


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
        identify: Callable[[], ControllerStatus] | None = None,
    ) -> None:
        self._root = root
        self._identify = identify  # our own status, the answer to a ping
        self._handler = handler
        self._publisher = publisher
        self._synced = synced
        self._drop = drop
        self._queue: asyncio.Queue[PendingRequest] = asyncio.Queue(REQUEST_QUEUE)
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._pings: asyncio.Queue[Outgoing] = asyncio.Queue(PING_QUEUE)

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
        if self._identify is not None and _is_ping(message.payload):
            self._answer_ping(pending, self._identify())
            return
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

    async def answer_pings(self, connection: Connection) -> None:
        """Publish the answers to pings on ``connection`` until cancelled (an answer the
        connection lost is not sent again: the asker has stopped waiting)."""
        while True:
            item = await self._pings.get()
            try:
                await connection.publish(
                    item.topic, item.payload, expiry=item.expiry, correlation=item.correlation
                )
            except BrokerUnavailable:
                log.debug("ping answer lost with the connection")
                raise

    def _answer_ping(self, pending: PendingRequest, ours: ControllerStatus) -> None:
        reply = Reply(ok=True, result=msgspec.Raw(encode(ours)))
        try:
            self._pings.put_nowait(_reply_message(pending, reply))
        except asyncio.QueueFull:
            log.warning("too many pings from other controllers; one dropped")

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


def _is_ping(payload: bytes) -> bool:
    try:
        return _op_of.decode(payload).op == PING_OP
    except msgspec.DecodeError:
        return False  # the handler says what is wrong with it


def _reply_message(pending: PendingRequest, reply: Reply) -> Outgoing:
    return Outgoing(
        pending.response_topic,
        encode(reply),
        False,
        expiry=REQUEST_EXPIRY,
        correlation=pending.correlation,
    )
