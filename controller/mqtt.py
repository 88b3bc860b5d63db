"""The controller's one boundary with MQTT: aiomqtt and paho appear here and nowhere else.

Everything else sees the values and the connection of this module, and one exception,
:class:`BrokerUnavailable` (raised ``from`` the aiomqtt error it replaces)::

    async with Connection(url, unique_client_id("edgeplane-status")) as connection:
        await connection.subscribe(Subscription(root.all_views(), qos=0))
        await connection.publish(topic, payload, retain=True, expiry=30)
        async for message in connection:  # BrokerUnavailable once the connection is lost
            print(message.topic, message.payload, message.retained, message.expiry_left)

- :class:`Message`: one received message (topic, payload, retained flag; its remaining
  message expiry, response topic and correlation data, read from the MQTT 5 properties
  only when asked for);
- :class:`Will`, :class:`Subscription`: what a connection registers;
- :class:`Connection`: MQTT 5, an async context manager, reusable (enter it again to
  reconnect) but not re-entrant, with :class:`ConnectionState`.

A connection that is kept goes through the one reconnect loop,
:class:`edgeplane.controller.reconnect.Reconnect`.

The receive path costs one small object per message: messages go straight from paho's
callback into the connection's queue as :class:`Message` (no aiomqtt ``Message`` and
``Topic`` in between), and iteration takes what is queued without a task or a wait.

The queue is bounded by not reading: once :data:`READ_PAUSE_AT` messages wait in it, the
socket is left unread until the reader has taken it down to :data:`READ_RESUME_AT`. TCP
then stops the broker, which keeps the rest: not yet sent, so not yet acknowledged (paho
acknowledges a QoS 1 message when it reads it), under its own queue limits, and in a
persistent session across a reconnect. Two bounds that were not taken: aiomqtt's
``max_queued_incoming_messages`` drops what does not fit in its queue after paho
acknowledged it (lost for good); and acknowledging by hand with a small MQTT 5 Receive
Maximum does not bound it on mosquitto 2.0.11, which sends up to a whole window more for
every PUBACK (measured: 1,800 unacknowledged with a Receive Maximum of 10).

Acknowledging by hand (``manual_ack``) is kept for safety instead: the events connection
acknowledges an event once what it changed is committed, so a crash between receipt and
commit loses nothing (the broker sends it again; the store keeps it once).
"""

from __future__ import annotations

import asyncio
import enum
import ssl
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import aiomqtt
import paho.mqtt.client
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import BrokerUnavailable
from edgeplane.shared.identity import Identity

__all__ = [
    "Connection",
    "ConnectionState",
    "Message",
    "Receipt",
    "Subscription",
    "Will",
    "unique_client_id",
]

FAIR_SHARE: Final = 64  # messages taken without yielding to the event loop
READ_PAUSE_AT: Final = 2_000  # messages queued, not yet taken: stop reading the socket
READ_RESUME_AT: Final = 1_000  # ... and read it again once the reader is down to this


def unique_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- values ------------------------------------------------------------------------------
class Message:
    """One received message. ``topic``, ``payload`` and ``retained`` are plain attributes;
    the MQTT 5 properties are read when asked for (most messages never are)."""

    __slots__ = ("_properties", "connection", "mid", "payload", "qos", "retained", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        retained: bool = False,
        properties: Properties | None = None,
        *,
        qos: int = 0,
        mid: int = 0,
        connection: int = 0,
    ) -> None:
        self.topic: Final = topic
        self.payload: Final = payload
        self.retained: Final = retained
        self._properties: Final = properties
        # what Connection.ack needs: the packet id, and which connection it came on
        self.qos: Final = qos
        self.mid: Final = mid
        self.connection: Final = connection

    @property
    def receipt(self) -> Receipt:
        """What :meth:`Connection.ack` takes: small, so that many may wait (a message's
        MQTT 5 properties alone take some 6 KB)."""
        return Receipt(self.connection, self.mid, self.qos)

    @property
    def expiry_left(self) -> int | None:
        """The remaining message expiry, seconds (the broker counts it down while it holds a
        retained message); None without one."""
        value = getattr(self._properties, "MessageExpiryInterval", None)
        return value if isinstance(value, int) else None

    @property
    def response_topic(self) -> str | None:
        value = getattr(self._properties, "ResponseTopic", None)
        return value if isinstance(value, str) else None

    @property
    def correlation(self) -> bytes | None:
        value = getattr(self._properties, "CorrelationData", None)
        return bytes(value) if isinstance(value, bytes | bytearray) else None

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {self.payload[:60]!r}, retained={self.retained})"


class Receipt(NamedTuple):
    """A received message as its acknowledgement names it."""

    connection: int
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a connection that ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter with its maximum QoS; ``no_local``: not the messages this connection
    publishes itself (MQTT 5)."""

    topic: str
    qos: int = 1
    no_local: bool = False


class ConnectionState(enum.Enum):
    NEW = "new"  # never entered
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"  # inside the block, but the broker is gone: leave it
    CLOSED = "closed"  # left; entering again connects again


# --- the connection ----------------------------------------------------------------------
class Connection:
    """One MQTT 5 connection to ``url``, as the identity the URL carries (its login; for
    ``mqtts://``, TLS verified against its CA, else against the system's trust store).

    ``clean_start=None`` starts clean at the first connection only; with
    ``clean_start=False`` and ``session_expiry`` seconds the broker keeps the session
    (subscriptions and QoS 1 messages) while the connection is down.

    ``manual_ack=True``: a QoS 1 message is acknowledged only by :meth:`ack` (in the order
    received), so that one taken but not yet safe is sent again after a crash or a lost
    connection; one received on an earlier connection is not acknowledged (the broker
    sends it again).

    ``async with`` connects; leaving disconnects cleanly. Entering again reconnects (what
    was received and not yet taken stays queued); entering it twice at once is an error.
    """

    def __init__(
        self,
        url: BrokerUrl,
        client_id: str,
        *,
        will: Will | None = None,
        keepalive: int = 30,
        timeout: float = 10.0,
        clean_start: bool | None = None,
        session_expiry: int | None = None,
        warn_pending_above: int = 10,
        manual_ack: bool = False,
    ) -> None:
        self.url = url
        self._manual_ack = manual_ack
        self.client_id = client_id
        self._will = will
        self._keepalive = keepalive
        self._timeout = timeout
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._warn_pending_above = warn_pending_above
        self._client: _Client | None = None
        self._state = ConnectionState.NEW

    @property
    def state(self) -> ConnectionState:
        if self._state is ConnectionState.CONNECTED and self._client and self._client.lost:
            return ConnectionState.LOST
        return self._state

    @property
    def backlog(self) -> int:
        """Messages received and not yet taken (at most about :data:`READ_PAUSE_AT`)."""
        return 0 if self._client is None else self._client.incoming.qsize()

    @property
    def reading_paused(self) -> bool:
        """Whether the socket is left unread until the reader takes more (the broker holds
        back the rest)."""
        return self._client is not None and self._client.reading_paused

    async def __aenter__(self) -> Self:
        if self._state not in (ConnectionState.NEW, ConnectionState.CLOSED):
            raise RuntimeError("a connection is reusable, but not re-entrant")
        self._state = ConnectionState.CONNECTING
        if self._client is None:
            self._client = self._make_client()
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._state = ConnectionState.CLOSED
            raise BrokerUnavailable(f"cannot reach the broker at {self.url}: {exc}") from exc
        except BaseException:
            self._state, self._client = ConnectionState.CLOSED, None  # a cancelled connect
            raise
        self._state = ConnectionState.CONNECTED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        client = self._connected()
        try:
            await client.__aexit__(exc_type, exc, traceback)
        except BaseException as error:
            self._client = None  # aiomqtt keeps its lock after a failed disconnect: start anew
            if isinstance(error, aiomqtt.MqttError):
                raise self._lost(error) from error
            raise
        finally:
            self._state = ConnectionState.CLOSED

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry: int | None = None,
        correlation: bytes | None = None,
        response_topic: str | None = None,
        ack_timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1, the contract's, unless
        told); ``expiry``: the MQTT 5 message expiry, seconds."""
        client = self._connected()
        properties = _publish_properties(expiry, correlation, response_topic)
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=ack_timeout
            )
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from exc

    async def subscribe(
        self, *subscriptions: Subscription | str, ack_timeout: float | None = None
    ) -> list[int]:
        """Subscribe (one SUBSCRIBE for all; a string is QoS 1); returns the broker's
        reason codes, one per subscription (0-2: the granted QoS, >= 128: refused)."""
        client = self._connected()
        wanted = [_subscribe_option(item) for item in subscriptions]
        try:
            granted = await client.subscribe(wanted, timeout=ack_timeout)
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from exc
        return [code if isinstance(code, int) else code.value for code in granted]

    async def unsubscribe(self, *topics: str, ack_timeout: float | None = None) -> None:
        """Unsubscribe from each topic filter (one UNSUBSCRIBE for all)."""
        client = self._connected()
        try:
            await client.unsubscribe(list(topics), timeout=ack_timeout)
        except aiomqtt.MqttError as exc:
            raise self._lost(exc) from exc

    def ack(self, receipt: Receipt) -> None:
        """Acknowledge a message by its :attr:`Message.receipt` (``manual_ack`` only): now,
        if it came on this connection and it is still up; else not at all (the broker
        sends it again)."""
        client = self._client
        if client is not None and self._manual_ack:
            client.acknowledge(receipt)

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Awaitable[Message]:
        """The next message; :class:`BrokerUnavailable` once the connection is lost (after
        every message that came before the loss)."""
        return self._connected().next_message(self.url)

    def _connected(self) -> _Client:
        if self._client is None or self._state is ConnectionState.NEW:
            raise RuntimeError("the connection was never entered")
        return self._client

    def _lost(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"lost the connection to the broker at {self.url}: {exc}")

    def _tls_context(self, identity: Identity) -> ssl.SSLContext:
        try:
            return identity.tls_context()
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnavailable(f"cannot set up TLS for {self.url}: {exc}") from exc

    def _make_client(self) -> _Client:
        will = self._will
        identity = self.url.identity or Identity()
        properties = None
        if self._session_expiry is not None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._session_expiry
        client = _Client(
            self.url.host,
            self.url.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=None
            if will is None
            else aiomqtt.Will(will.topic, will.payload, will.qos, will.retain),
            keepalive=self._keepalive,
            timeout=self._timeout,
            username=identity.username,
            password=None if identity.password is None else identity.password.reveal(),
            tls_context=self._tls_context(identity) if self.url.tls else None,
            clean_start=(
                paho.mqtt.client.MQTT_CLEAN_START_FIRST_ONLY
                if self._clean_start is None
                else self._clean_start
            ),
            properties=properties,
            # No TCP_NODELAY: it cut view latency (~40 ms of Nagle + delayed ACK) but cost
            # about 20 % of ingest throughput (every PUBACK its own segment), and the lag
            # goal is met without it (docs/performance.md).
        )
        client.pending_calls_threshold = self._warn_pending_above
        if self._manual_ack:
            client.manual_ack()
        return client


class _Client(aiomqtt.Client):
    """aiomqtt's client, with the receive path of :class:`Connection`: paho's message
    callback queues a :class:`Message`, and a lost connection queues its ``disconnected``
    future behind the messages that came before it, so a reader takes every message it
    was sent (they are acknowledged already) before it learns of the loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.incoming: asyncio.Queue[Message | asyncio.Future[None]] = asyncio.Queue()
        self._taken = 0  # messages taken in a row without yielding
        self._fd = -1  # the socket being read
        self.reading_paused = False
        self.connection = 0  # counts the connections made: a message's mid is of its own

    @property
    def lost(self) -> bool:
        return self._disconnected.done()

    async def __aenter__(self) -> Self:
        self.connection += 1
        await super().__aenter__()
        self._disconnected.add_done_callback(self._note_loss)
        return self

    def manual_ack(self) -> None:
        self._client.manual_ack_set(True)

    def acknowledge(self, receipt: Receipt) -> None:
        connection, mid, qos = receipt
        if qos and connection == self.connection and not self.lost:
            self._client.ack(mid, qos)

    # --- reading the socket, paused while the queue is full ------------------------------
    def _on_socket_open(self, client: paho.mqtt.client.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)  # its reader, from paho's thread
        # ... which ours replaces: the same reading, but it can be paused.
        self._loop.call_soon_threadsafe(self._read_socket, sock.fileno())

    def _read_socket(self, fd: int) -> None:
        self._fd, self.reading_paused = fd, False
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        """aiomqtt's reader: everything readable now (TLS may hold decoded bytes back)."""
        client = self._client
        try:
            while not self.reading_paused:
                client.loop_read()
                pending = getattr(client.socket(), "pending", None)
                if pending is None or pending() <= 0:
                    break
        except Exception as exc:  # e.g. a broken pipe: the connection is gone
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _pause_reading(self) -> None:
        # Not for long: the reader is taking messages. (Unread for a whole keepalive, paho
        # would miss the PINGRESP and drop the connection; the reconnect loop takes over.)
        self.reading_paused = True
        self._loop.remove_reader(self._fd)

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if self._client.socket() is not None:
            self._loop.add_reader(self._fd, self._read)
            self._loop.call_soon(self._read)  # bytes TLS decoded already wake no reader

    def _note_loss(self, disconnected: asyncio.Future[None]) -> None:
        if not disconnected.cancelled():
            disconnected.exception()  # retrieved: the reader raises it, if one is left
        self.incoming.put_nowait(disconnected)

    def _on_message(
        self, client: paho.mqtt.client.Client, userdata: Any, message: paho.mqtt.client.MQTTMessage
    ) -> None:
        payload = message.payload  # bytes from paho's decoder; typed wider
        if type(payload) is not bytes:
            payload = bytes(payload)
        incoming = self.incoming
        incoming.put_nowait(
            Message(
                message.topic,
                payload,
                message.retain,
                message.properties,
                qos=message.qos,
                mid=message.mid,
                connection=self.connection,
            )
        )
        if incoming.qsize() >= READ_PAUSE_AT and not self.reading_paused:
            self._pause_reading()

    async def next_message(self, url: BrokerUrl) -> Message:
        incoming = self.incoming
        while True:
            if not incoming.qsize():
                self._taken = 0
                item = await incoming.get()
            elif self._taken < FAIR_SHARE:
                self._taken += 1
                item = incoming.get_nowait()  # no await: a backlog is taken at full speed
                if self.reading_paused and incoming.qsize() <= READ_RESUME_AT:
                    self._resume_reading()
            else:
                self._taken = 0
                await asyncio.sleep(0)  # ... but the other tasks get their turn now and then
                continue
            if type(item) is Message:
                return item
            if item is self._disconnected:  # else: the end of an earlier connection
                error = None if item.cancelled() else item.exception()
                raise BrokerUnavailable(
                    f"lost the connection to the broker at {url}: {error or 'disconnected'}"
                ) from error


def _subscribe_option(item: Subscription | str) -> tuple[str, SubscribeOptions]:
    if isinstance(item, str):
        item = Subscription(item)
    return item.topic, SubscribeOptions(qos=item.qos, noLocal=item.no_local)


def _publish_properties(
    expiry: int | None, correlation: bytes | None, response_topic: str | None
) -> Properties | None:
    if expiry is None and correlation is None and response_topic is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    if correlation is not None:
        properties.CorrelationData = correlation
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    return properties


# --- paho's decoding of a received PUBLISH's properties, made cheaper -----------------------
class _ReceivedProperties(Properties):
    """paho's ``Properties`` as ``decode_publish`` makes them for every received message,
    with the same attributes and errors, but without rebuilding paho's tables each time
    (two dicts of 27 entries and 27 lists: ~11 % of the controller's time receiving a flood
    of retained statuses) nor scanning them for each property."""

    _TABLES: Final = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _NAMES: Final = {ident: name.replace(" ", "") for name, ident in _TABLES.names.items()}
    _MULTIPLE: Final = frozenset({11, 38})  # Subscription Identifier, User Property

    def __init__(self, packetType: int) -> None:
        tables = self._TABLES
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", tables.types)
        object.__setattr__(self, "names", tables.names)
        object.__setattr__(self, "properties", tables.properties)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if self.packetType != PacketTypes.PUBLISH:
            return super().unpack(buffer)  # type: ignore[no-untyped-call,no-any-return]
        propslen, head = VariableByteIntegers.decode(buffer)  # type: ignore[no-untyped-call]
        buffer = buffer[head:]
        left = propslen
        while left > 0:
            ident, used = VariableByteIntegers.decode(buffer)  # type: ignore[no-untyped-call]
            buffer, left = buffer[used:], left - used
            kind, packets = self.properties[ident]  # KeyError: malformed, as in paho
            value, used = self.readProperty(buffer, kind, left)  # type: ignore[no-untyped-call]
            buffer, left = buffer[used:], left - used
            name = self._NAMES[ident]
            if ident in self._MULTIPLE or PacketTypes.PUBLISH not in packets:
                setattr(self, name, value)  # paho's checks and its lists of several
            elif name in self.__dict__:
                raise MQTTException(f"Property '{name}' must not exist more than once")
            else:
                object.__setattr__(self, name, value)
        return self, propslen + head


def _decode_received_properties_cheaply() -> None:
    """Have paho's PUBLISH decoder make :class:`_ReceivedProperties` (checked on
    paho-mqtt 2.1 and 2.2; tests/test_mqtt.py compares both on every kind of property)."""
    try:
        from paho.mqtt import _packet
    except ImportError:  # an older paho: its own decoding, slower
        return
    if getattr(_packet, "Properties", None) is Properties:
        setattr(_packet, "Properties", _ReceivedProperties)  # noqa: B010 (a module global)


_decode_received_properties_cheaply()
