"""The MQTT session: the only module that touches paho.

paho's callbacks only record what happened as plain :data:`SessionEvent` values; the agent
reads them after each :meth:`MqttSession.poll` and decides what to do. Everything runs on the
caller's thread: ``poll`` is paho's external-loop API (``loop_read`` / ``loop_write`` /
``loop_misc``) around one ``select`` that also watches a wake-up socket, so a signal ends a
wait at once instead of after the next timeout.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeplane.edge_agent.errors import BrokerUnavailable
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.identity import Identity

__all__ = [
    "SESSION_TAKEN_OVER",
    "ConnectRefused",
    "Connected",
    "Disconnected",
    "LoginProbe",
    "MessageIn",
    "MqttSession",
    "Published",
    "SessionEvent",
    "Subscribed",
    "probe_login",
]

SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with our client id


class Connected(msgspec.Struct, frozen=True):
    """The broker accepted the connection (CONNACK success)."""


class ConnectRefused(msgspec.Struct, frozen=True):
    """The broker answered CONNECT with a failure; a :class:`Disconnected` follows."""

    reason: str
    code: int = 0  # the CONNACK's MQTT 5 reason code (134: bad user name or password)


class Disconnected(msgspec.Struct, frozen=True):
    code: int  # MQTT 5 reason code (0x8E: session taken over)
    reason: str
    by_broker: bool  # the broker sent a DISCONNECT packet (else: the network or we closed)

    @property
    def taken_over(self) -> bool:
        return self.code == SESSION_TAKEN_OVER


class Subscribed(msgspec.Struct, frozen=True):
    mid: int
    refused: tuple[str, ...]  # the reason of each refused filter, empty when all granted


class Published(msgspec.Struct, frozen=True):
    """A QoS 1 publish was acknowledged (PUBACK)."""

    mid: int


class MessageIn(msgspec.Struct, frozen=True):
    topic: str
    payload: bytes
    retained: bool


SessionEvent = Connected | ConnectRefused | Disconnected | Subscribed | Published | MessageIn


class MqttSession:
    """One MQTT 5 client, identified by ``client_id``, that connects with a clean start."""

    def __init__(self, client_id: str, broker: BrokerUrl, keepalive: int) -> None:
        self.broker = broker
        self.keepalive = keepalive
        self._events: list[SessionEvent] = []
        self._connected = False
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        identity = broker.identity or Identity()
        if identity.username is not None:
            password = None if identity.password is None else identity.password.reveal()
            self._client.username_pw_set(identity.username, password)
        if broker.tls:
            try:
                self._client.tls_set_context(identity.tls_context())
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise BrokerUnavailable(f"cannot set up TLS for {broker}: {exc}") from exc
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """CONNACK received and the connection not lost since."""
        return self._connected and self._client.socket() is not None

    @property
    def has_socket(self) -> bool:
        return self._client.socket() is not None

    # actions ------------------------------------------------------------------------------
    def set_login(self, username: str, password: str) -> None:
        """The user name and password of the next CONNECT (a rotated credential)."""
        self._client.username_pw_set(username, password)

    def connect(self, will: tuple[str, bytes] | None = None) -> None:
        """Open the connection and send CONNECT with this connection's will (topic, payload;
        retained, QoS 1), if any.

        CONNACK arrives later, through :meth:`poll`, as :class:`Connected`."""
        self._connected = False
        if will is None:
            self._client.will_clear()
        else:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        try:
            self._client.connect(
                self.broker.host, self.broker.port, keepalive=self.keepalive, clean_start=True
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot connect to {self.broker}: {_describe(exc)}") from exc

    def subscribe(self, topic: str, *, no_local: bool = False) -> int:
        """Subscribe at QoS 1; the SUBACK arrives as :class:`Subscribed` with the same mid."""
        options = SubscribeOptions(qos=1, noLocal=no_local)
        rc, mid = self._client.subscribe(topic, options=options)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnavailable(f"cannot subscribe to {topic}: {mqtt.error_string(rc)}")
        return mid

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry: int | None = None
    ) -> int:
        """Publish at QoS 1; the PUBACK arrives as :class:`Published` with the same mid."""
        properties = None
        if expiry is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = expiry
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        return info.mid

    def take_unacked(self) -> list[tuple[str, bytes]]:
        """Forget the publishes still waiting for PUBACK and return them (topic, payload).

        Without this paho would resend them after the next CONNACK, before the new
        connection's subscription and online message, some with an outdated bdseq."""
        return [(m.topic, bytes(m.payload)) for m in self._client.drop_out_messages()]

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the will.

        The socket is shut down, not closed: paho sees end-of-file on the next poll and
        reports a :class:`Disconnected` through its usual path."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def disconnect(self) -> None:
        """A normal DISCONNECT: the broker discards the will."""
        self._connected = False
        self._client.disconnect()

    def poll(self, timeout: float, wake: socket.socket | None = None) -> list[SessionEvent]:
        """Wait up to ``timeout`` seconds for network traffic (or a wake-up), handle it, and
        return what happened."""
        if self._events:
            timeout = 0.0  # e.g. a disconnect that paho noticed while we were publishing
        sock = self._client.socket()
        readable: list[Any] = [wake] if wake is not None else []
        if sock is None:
            select.select(readable, [], [], timeout)  # with nothing to watch: a plain wait
            return self._take_events()
        pending = getattr(sock, "pending", lambda: 0)() > 0  # TLS bytes already decrypted
        if pending:
            timeout = 0.0
        writable = [sock] if self._client.want_write() else []
        try:
            ready_r, ready_w, _ = select.select([sock, *readable], writable, [], timeout)
        except (OSError, ValueError):
            ready_r, ready_w = [sock], []  # a dead socket: let paho's read report it
        if sock in ready_r or pending:
            self._client.loop_read()
        if self._client.socket() is sock and sock in ready_w:
            self._client.loop_write()
        if self._client.socket() is sock:
            self._client.loop_misc()
        return self._take_events()

    def _take_events(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events

    # paho callbacks: record, never decide ---------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._events.append(ConnectRefused(str(reason_code), reason_code.value))
        else:
            self._connected = True
            self._events.append(Connected())

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        self._events.append(
            Disconnected(
                code=reason_code.value,
                reason=str(reason_code),
                by_broker=flags.is_disconnect_packet_from_server,
            )
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = tuple(str(code) for code in reason_codes if code.is_failure)
        self._events.append(Subscribed(mid, refused))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._events.append(Published(mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return  # not a topic we subscribed to: the broker checks topic names are UTF-8
        self._events.append(MessageIn(topic, bytes(message.payload), bool(message.retain)))


class LoginProbe(msgspec.Struct, frozen=True):
    """What one trial connection saw: ``answered`` False when no CONNACK came in time;
    ``refused`` the CONNACK's reason when it was a failure ("" when accepted); ``round_trip``
    the seconds from SUBSCRIBE to its SUBACK (None when not connected)."""

    answered: bool
    refused: str = ""
    code: int = 0
    connect_seconds: float = 0.0
    round_trip: float | None = None


def probe_login(
    client_id: str,
    broker: BrokerUrl,
    topic: str,
    timeout: float,
    clock: Callable[[], float] | None = None,
) -> LoginProbe:
    """CONNECT as ``client_id`` (clean start, no will), SUBSCRIBE ``topic`` and time its
    SUBACK, then DISCONNECT; never publishes. For ``edge-agent doctor``, which must use a
    client id other than the agent's, so that no running agent is taken over.
    :class:`BrokerUnavailable` when the connection cannot be opened."""
    monotonic = time.monotonic if clock is None else clock
    started = monotonic()
    deadline = started + timeout
    session = MqttSession(client_id, broker, keepalive=max(5, int(timeout) * 2))
    session.connect()
    try:
        answer = _await(session, deadline, monotonic, (Connected, ConnectRefused, Disconnected))
        connected_at = monotonic() - started
        if answer is None:
            return LoginProbe(answered=False, connect_seconds=connected_at)
        if not isinstance(answer, Connected):
            refused = answer if isinstance(answer, ConnectRefused) else None
            return LoginProbe(
                answered=refused is not None,
                refused=refused.reason if refused else "",
                code=refused.code if refused else 0,
                connect_seconds=connected_at,
            )
        sent = monotonic()
        mid = session.subscribe(topic)
        acked = _await(session, deadline, monotonic, (Subscribed,), mid)
        rtt = None if acked is None else monotonic() - sent
        return LoginProbe(answered=True, connect_seconds=connected_at, round_trip=rtt)
    finally:
        if session.has_socket:
            session.disconnect()
            _await(session, min(deadline, monotonic() + 1.0), monotonic, (Disconnected,))


def _await(
    session: MqttSession,
    deadline: float,
    monotonic: Callable[[], float],
    kinds: tuple[type, ...],
    mid: int | None = None,
) -> SessionEvent | None:
    """The first event of one of ``kinds`` (a :class:`Subscribed` with ``mid``, if given)
    before ``deadline``; None at the deadline or when the connection is gone."""
    while (left := deadline - monotonic()) > 0:
        for event in session.poll(min(left, 0.5)):
            if isinstance(event, kinds) and (mid is None or getattr(event, "mid", mid) == mid):
                return event
            if isinstance(event, Disconnected):
                return None
        if not session.has_socket:
            return None
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
