"""One MQTT 5 session over a :class:`~.stream.PacketStream`: subscribing, publishing at
QoS 0 and 1, acknowledging what the broker delivers, keepalive. No task of its own, so an
idle connection costs memory and nothing else. Made by :func:`~.handshake.connect`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from edgeplane.edge_agent.simulator.wire.errors import (
    ConnectionClosed,
    MalformedPacket,
    WireError,
    describe_reason,
)
from edgeplane.edge_agent.simulator.wire.fields import MAX_VARINT
from edgeplane.edge_agent.simulator.wire.inflight import InflightWindow, PendingAnswers
from edgeplane.edge_agent.simulator.wire.keepalive import PingTimer
from edgeplane.edge_agent.simulator.wire.packets import (
    PINGREQ_PACKET,
    ConnAck,
    Disconnect,
    Packet,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    encode_puback,
    encode_publish,
    encode_subscribe,
)
from edgeplane.edge_agent.simulator.wire.properties import Properties
from edgeplane.edge_agent.simulator.wire.stream import PacketStream

__all__ = ["MessageHandler", "MqttClient", "PublishDone"]

log = structlog.get_logger("edgeplane.edge_agent.simulator.wire")

MessageHandler = Callable[[Publish], None]
PublishDone = Callable[[WireError | None], None]
"""Called with None when a publish's PUBACK arrives, or with why it failed."""


class MqttClient(PacketStream):
    """One MQTT 5 connection.

    The public surface is :meth:`subscribe`, :meth:`publish`, :meth:`publish_nowait`,
    :meth:`disconnect`, :meth:`abort`, :attr:`closed` and :meth:`wait_closed`;
    :meth:`open`, :meth:`accept` and :meth:`abandon` are the handshake's, and
    :meth:`keepalive_due` the keepalive scheduler's.
    """

    __slots__ = ("_answers", "_connack", "_on_message", "_ping", "_window", "max_outgoing")

    def __init__(
        self, client_id: str, on_message: MessageHandler | None, window: int, max_incoming: int
    ) -> None:
        super().__init__(client_id, max_incoming)
        self._on_message = on_message
        self._connack: asyncio.Future[ConnAck] | None = self._loop.create_future()
        self._answers = PendingAnswers(self._loop, client_id)
        self._window = InflightWindow(self._loop, window)
        self._ping = PingTimer()
        self.max_outgoing = MAX_VARINT

    @property
    def keepalive(self) -> int:
        """The keepalive in force: ours, or the one the broker assigned in CONNACK."""
        return self._ping.keepalive

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent and awaiting their PUBACK."""
        return self._window.used

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS."""
        packet_id = self._answers.new_packet_id()
        ack = await self._request(packet_id, encode_subscribe(packet_id, topic_filter, qos))
        if not isinstance(ack, SubAck):
            raise self._wrong_answer(ack, "SUBSCRIBE")
        code = ack.reason_codes[0]
        if code >= 0x80:
            raise WireError(
                f"{self.client_id}: subscription to {topic_filter!r} refused: "
                f"{describe_reason(code, ack.properties.reason_string)}",
                code,
            )
        return code

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish. At QoS 1, wait for a free slot of the in-flight window, then for the
        PUBACK; a failure reason code in the PUBACK raises :class:`WireError`."""
        if qos == 0:
            packet = encode_publish(topic, payload, retain=retain, properties=properties)
            await self._writable()
            self._send(self._checked_size(packet))
            return
        await self._window.take(self._check_open)
        try:
            packet_id = self._answers.new_packet_id()
            packet = encode_publish(
                topic, payload, qos=1, retain=retain, packet_id=packet_id, properties=properties
            )
            await self._writable()
            ack = await self._request(packet_id, packet)
        finally:
            self._window.give()
        error = self._puback_error(topic, ack)
        if error is not None:
            raise error

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        on_done: PublishDone | None = None,
    ) -> None:
        """Publish without waiting, for callers that cannot (timers, callbacks).

        At QoS 1 the in-flight window still holds: when it is full this raises
        :class:`WireError` instead of waiting. ``on_done`` is called with None when the
        PUBACK arrives, or with the error (a refusal, or the connection closing).
        """
        self._check_open()
        if qos == 0:
            packet = encode_publish(topic, payload, retain=retain, properties=properties)
            self._send(self._checked_size(packet))
            if on_done is not None:
                on_done(None)
            return
        if self._window.full:
            raise WireError(
                f"{self.client_id}: {self._window.used} publishes await their PUBACK already "
                f"(the in-flight window); not publishing to {topic!r}"
            )
        packet_id = self._answers.new_packet_id()
        packet = encode_publish(
            topic, payload, qos=1, retain=retain, packet_id=packet_id, properties=properties
        )
        self._send(self._checked_size(packet))
        answer = self._answers.expect(packet_id)
        self._window.take_nowait()
        answer.add_done_callback(lambda done: self._acknowledged(packet_id, topic, done, on_done))

    # the handshake's --------------------------------------------------------------------
    async def open(self, connect_packet: bytes) -> ConnAck:
        """Send CONNECT and wait for the broker's CONNACK."""
        if self._connack is None:
            raise WireError(f"{self.client_id}: CONNECT was sent already")
        connack = self._connack
        self._send(connect_packet)
        return await connack

    def accept(self, connack: ConnAck, keepalive: int) -> None:
        """Take what a successful CONNACK says: the keepalive in force (ours unless the
        broker assigned one), its Receive Maximum, its maximum packet size."""
        props = connack.properties
        assigned = props.server_keepalive
        self._ping.keepalive = keepalive if assigned is None else assigned
        if props.receive_maximum:
            self._window.size = min(self._window.size, props.receive_maximum)
        if props.maximum_packet_size:
            self.max_outgoing = props.maximum_packet_size

    def abandon(self) -> None:
        """Give up a connection that did not open: abort it; nobody awaits the CONNACK any
        more, so its error counts as seen."""
        self.abort()
        connack = self._connack
        if connack is not None and connack.done() and not connack.cancelled():
            connack.exception()

    # the keepalive scheduler's ----------------------------------------------------------
    def keepalive_due(self, now: float) -> float | None:
        """Send a PINGREQ or close as :class:`~.keepalive.PingTimer` says is due; return
        when to be called next, or None once closed."""
        timer = self._ping
        if self.is_closed or timer.keepalive == 0:
            return None
        if timer.broker_gone(now):
            self._fail(
                ConnectionClosed(
                    f"{self.client_id}: no PINGRESP within {timer.keepalive}s; "
                    "the broker is unreachable"
                )
            )
            return None
        due = timer.next_ping(now, self._last_sent)
        if due is not None:
            return due
        self._send(PINGREQ_PACKET)
        timer.ping_sent_at = now
        return now + timer.keepalive

    # requests ---------------------------------------------------------------------------
    async def _request(self, packet_id: int, packet: bytes) -> PubAck | SubAck:
        self._check_open()
        self._checked_size(packet)
        answer = self._answers.expect(packet_id)
        try:
            self._send(packet)
            return await answer
        finally:
            self._answers.forget(packet_id)

    def _acknowledged(
        self,
        packet_id: int,
        topic: str,
        answer: asyncio.Future[PubAck | SubAck],
        on_done: PublishDone | None,
    ) -> None:
        self._answers.forget(packet_id)
        self._window.give()
        error: WireError | None
        if answer.cancelled():
            error = ConnectionClosed(f"{self.client_id}: publish to {topic!r} abandoned")
        elif (failure := answer.exception()) is not None:
            error = failure if isinstance(failure, WireError) else WireError(str(failure))
        else:
            error = self._puback_error(topic, answer.result())
        if on_done is not None:
            on_done(error)

    def _puback_error(self, topic: str, ack: PubAck | SubAck) -> WireError | None:
        if not isinstance(ack, PubAck):
            return self._wrong_answer(ack, "PUBLISH")
        if ack.reason_code < 0x80:
            return None
        return WireError(
            f"{self.client_id}: publish to {topic!r} refused: "
            f"{describe_reason(ack.reason_code, ack.properties.reason_string)}",
            ack.reason_code,
        )

    def _checked_size(self, packet: bytes) -> bytes:
        if len(packet) > self.max_outgoing:
            raise WireError(
                f"{self.client_id}: packet of {len(packet)} bytes exceeds the broker's "
                f"maximum packet size {self.max_outgoing}"
            )
        return packet

    def _wrong_answer(self, ack: PubAck | SubAck, request: str) -> WireError:
        error = MalformedPacket(f"{self.client_id}: the broker answered {request} with {ack}")
        self._protocol_violation(error, 0x82)
        return error

    # incoming packets -------------------------------------------------------------------
    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, Publish):
            self._deliver(packet)
        elif isinstance(packet, PubAck | SubAck):
            self._answers.answer(packet)
        elif isinstance(packet, PingResp):
            self._ping.ping_sent_at = None
        elif isinstance(packet, ConnAck):
            self._handle_connack(packet)
        else:
            self._handle_disconnect(packet)

    def _handle_connack(self, packet: ConnAck) -> None:
        if self._connack is None or self._connack.done():
            raise WireError("a second CONNACK")
        self._connack.set_result(packet)
        self._connack = None

    def _handle_disconnect(self, packet: Disconnect) -> None:
        reason = describe_reason(packet.reason_code, packet.properties.reason_string)
        error = ConnectionClosed(
            f"{self.client_id}: the broker disconnected us: {reason}", packet.reason_code
        )
        self._fail(error)

    def _deliver(self, message: Publish) -> None:
        if message.qos == 2:
            raise WireError("a QoS 2 PUBLISH although we subscribed at QoS 1 at most")
        if message.properties.topic_alias is not None:
            raise WireError("a topic alias although we allow none")
        if self._on_message is not None:
            try:
                self._on_message(message)
            except Exception:
                log.exception("message handler failed", client=self.client_id, topic=message.topic)
        if message.packet_id is not None and not self.is_closed:
            self._send(encode_puback(message.packet_id))

    def _ended(self, failure: WireError) -> None:
        self._answers.fail_all(failure)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(failure)
        self._window.open_all()  # those waiting for a slot look at `closed` when woken
