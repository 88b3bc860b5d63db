"""A minimal asyncio MQTT 5 client, cheap enough to run ten thousand of in one process.

It speaks only what edgeplane needs: CONNECT with a will, SUBSCRIBE, PUBLISH at QoS 0 and 1
(both ways) with properties, PINGREQ and DISCONNECT. Each connection is one
:class:`asyncio.Protocol` and no task of its own; keepalive pings for every connection come
from one shared :class:`KeepaliveScheduler`, not a timer per client, so an idle
connection costs memory and nothing else.

    async with KeepaliveScheduler() as pinger:
        client = await connect(broker, client_id="dev-a", will=Will(topic, payload),
                               on_message=handle, pinger=pinger)
        await client.subscribe("R/env/dev-a/cmd")
        await client.publish(topic, payload, qos=1, retain=True,
                             properties=Properties(message_expiry=30))
        await client.disconnect()

Errors (all :class:`WireError`, part of the agent's :class:`~edge_agent.errors.AgentError`):

WireError              cannot connect, or a request the broker refused (``reason_code``)
├── ConnectRefused     CONNACK with a failure reason code
├── ConnectionClosed   the connection is gone: broker DISCONNECT, socket closed, no PINGRESP
└── MalformedPacket    the broker sent bytes that are not valid MQTT 5
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import structlog

from edgeplane.edge_agent.errors import AgentError
from edgeplane.shared.broker_url import BrokerUrl

__all__ = [
    "ConnAck",
    "ConnectRefused",
    "ConnectionClosed",
    "Disconnect",
    "FrameBuffer",
    "KeepaliveScheduler",
    "MalformedPacket",
    "Message",
    "MqttClient",
    "PingResp",
    "Properties",
    "PubAck",
    "SubAck",
    "Will",
    "WireError",
    "connect",
    "decode_properties",
    "decode_varint",
    "encode_connect",
    "encode_disconnect",
    "encode_properties",
    "encode_puback",
    "encode_publish",
    "encode_subscribe",
    "encode_varint",
    "parse_packet",
    "reason_name",
]

log = structlog.get_logger("edgeplane.edge_agent.simulator.wire")

MAX_VARINT: Final = 268_435_455  # the largest remaining length MQTT can express
DEFAULT_MAX_INCOMING: Final = 1024 * 1024  # we tell the broker not to send larger packets

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 12, 13, 14, 15

_PINGREQ_PACKET: Final = b"\xc0\x00"

_REASONS: Final = {
    0x00: "success",
    0x01: "granted QoS 1",
    0x02: "granted QoS 2",
    0x04: "disconnect with will message",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA2: "wildcard subscriptions not supported",
}


def reason_name(code: int) -> str:
    """A reason code as words, e.g. ``0x87 not authorized``."""
    return f"0x{code:02X} {_REASONS.get(code, 'unknown reason')}"


# --- errors ---------------------------------------------------------------------------------
class WireError(AgentError):
    """An MQTT connection failed, or the broker refused a request (``reason_code``)."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectRefused(WireError):
    """The broker answered CONNECT with a failure reason code."""


class ConnectionClosed(WireError):
    """The connection is gone (the broker's DISCONNECT carries ``reason_code``)."""


class MalformedPacket(WireError):
    """The broker sent bytes that are not a valid MQTT 5 packet."""


# --- primitives -----------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """MQTT's variable byte integer: 7 bits a byte, least significant first, 1-4 bytes."""
    if not 0 <= value <= MAX_VARINT:
        raise WireError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``: ``(value, next_pos)``, or None when the
    bytes end before it does. More than four bytes is :class:`MalformedPacket`."""
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise WireError(f"two-byte integer out of range: {value}")
    return value.to_bytes(2, "big")


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise WireError(f"four-byte integer out of range: {value}")
    return value.to_bytes(4, "big")


def _byte(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise WireError(f"byte out of range: {value}")
    return bytes((value,))


def _binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise WireError(f"binary field of {len(value)} bytes exceeds 65535")
    return len(value).to_bytes(2, "big") + value


def _string(value: str) -> bytes:
    if "\x00" in value:
        raise WireError(f"MQTT strings cannot contain NUL: {value[:80]!r}")
    try:
        return _binary(value.encode())
    except UnicodeEncodeError as exc:
        raise WireError(f"not encodable as UTF-8: {value[:80]!r}") from exc


class _Reader:
    """Reads the fields of one packet body; running past its end is a malformed packet."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if self.remaining() < count:
            raise MalformedPacket(f"{self.what}: truncated (needed {count} more bytes)")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        decoded = decode_varint(self.data, self.pos)
        if decoded is None:
            raise MalformedPacket(f"{self.what}: truncated variable byte integer")
        value, self.pos = decoded
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"{self.what}: string is not valid UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacket(f"{self.what}: string contains NUL")
        return text

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def end(self) -> None:
        if self.remaining():
            raise MalformedPacket(f"{self.what}: {self.remaining()} unexpected trailing bytes")


# --- properties -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5 properties. None (or empty) means absent; only the repeatable ones are tuples."""

    payload_format: int | None = None  # 0x01, 1 = UTF-8 text
    message_expiry: int | None = None  # 0x02, seconds
    content_type: str | None = None  # 0x03
    response_topic: str | None = None  # 0x08
    correlation_data: bytes | None = None  # 0x09
    subscription_ids: tuple[int, ...] = ()  # 0x0B, repeatable
    session_expiry: int | None = None  # 0x11
    assigned_client_id: str | None = None  # 0x12
    server_keepalive: int | None = None  # 0x13
    authentication_method: str | None = None  # 0x15
    authentication_data: bytes | None = None  # 0x16
    request_problem_info: int | None = None  # 0x17
    will_delay: int | None = None  # 0x18
    request_response_info: int | None = None  # 0x19
    response_info: str | None = None  # 0x1A
    server_reference: str | None = None  # 0x1C
    reason_string: str | None = None  # 0x1F
    receive_maximum: int | None = None  # 0x21
    topic_alias_maximum: int | None = None  # 0x22
    topic_alias: int | None = None  # 0x23
    maximum_qos: int | None = None  # 0x24
    retain_available: int | None = None  # 0x25
    user_properties: tuple[tuple[str, str], ...] = ()  # 0x26, repeatable
    maximum_packet_size: int | None = None  # 0x27
    wildcard_subscription_available: int | None = None  # 0x28
    subscription_id_available: int | None = None  # 0x29
    shared_subscription_available: int | None = None  # 0x2A

    def __repr__(self) -> str:
        present = (f"{spec[0]}={getattr(self, spec[0])!r}" for spec in _PROPERTY_SPECS.values())
        return f"Properties({', '.join(p for p in present if not p.endswith(('=None', '=()')))})"


# identifier -> (field name, kind); kinds: byte, u16, u32, varint, string, binary, pair
_PROPERTY_SPECS: Final[dict[int, tuple[str, str]]] = {
    0x01: ("payload_format", "byte"),
    0x02: ("message_expiry", "u32"),
    0x03: ("content_type", "string"),
    0x08: ("response_topic", "string"),
    0x09: ("correlation_data", "binary"),
    0x0B: ("subscription_ids", "varint"),
    0x11: ("session_expiry", "u32"),
    0x12: ("assigned_client_id", "string"),
    0x13: ("server_keepalive", "u16"),
    0x15: ("authentication_method", "string"),
    0x16: ("authentication_data", "binary"),
    0x17: ("request_problem_info", "byte"),
    0x18: ("will_delay", "u32"),
    0x19: ("request_response_info", "byte"),
    0x1A: ("response_info", "string"),
    0x1C: ("server_reference", "string"),
    0x1F: ("reason_string", "string"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_properties", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_id_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
_REPEATABLE: Final = frozenset({0x0B, 0x26})
_NO_PROPERTIES: Final = Properties()


def _encode_value(kind: str, value: Any) -> bytes:
    if kind == "byte":
        return _byte(value)
    if kind == "u16":
        return _u16(value)
    if kind == "u32":
        return _u32(value)
    if kind == "varint":
        return encode_varint(value)
    if kind == "string":
        return _string(value)
    if kind == "binary":
        return _binary(value)
    name, text = value
    return _string(name) + _string(text)


def _decode_value(kind: str, reader: _Reader) -> Any:
    if kind == "byte":
        return reader.byte()
    if kind == "u16":
        return reader.u16()
    if kind == "u32":
        return reader.u32()
    if kind == "varint":
        return reader.varint()
    if kind == "string":
        return reader.string()
    if kind == "binary":
        return reader.binary()
    return (reader.string(), reader.string())


def encode_properties(properties: Properties | None) -> bytes:
    """The property length followed by the properties, in identifier order."""
    if properties is None or properties is _NO_PROPERTIES:
        return b"\x00"
    return _encode_properties(properties)


@functools.lru_cache(maxsize=256)  # the same few properties go out with every heartbeat
def _encode_properties(properties: Properties) -> bytes:
    body = bytearray()
    for identifier, (name, kind) in _PROPERTY_SPECS.items():
        value = getattr(properties, name)
        if value is None:
            continue
        values = value if identifier in _REPEATABLE else (value,)
        for one in values:
            body.append(identifier)
            body += _encode_value(kind, one)
    return encode_varint(len(body)) + bytes(body)


def decode_properties(
    data: bytes, pos: int = 0, what: str = "properties"
) -> tuple[Properties, int]:
    """Decode the properties at ``pos``: ``(properties, next_pos)``."""
    reader = _Reader(data, what)
    reader.pos = pos
    return _read_properties(reader), reader.pos


def _read_properties(reader: _Reader) -> Properties:
    length = reader.varint()
    if length == 0:
        return _NO_PROPERTIES
    section = _Reader(reader.take(length), reader.what + " properties")
    fields: dict[str, Any] = {}
    while section.remaining():
        identifier = section.varint()
        spec = _PROPERTY_SPECS.get(identifier)
        if spec is None:
            raise MalformedPacket(f"{section.what}: unknown property 0x{identifier:02X}")
        name, kind = spec
        value = _decode_value(kind, section)
        if identifier in _REPEATABLE:
            fields[name] = (*fields.get(name, ()), value)
        elif name in fields:
            raise MalformedPacket(f"{section.what}: property {name} appears twice")
        else:
            fields[name] = value
    return Properties(**fields)


# --- packets we send ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    properties: Properties | None = None


def _packet(first_byte: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise WireError(f"cannot publish to {topic!r}: a topic name is non-empty, no wildcards")


def encode_connect(
    client_id: str,
    keepalive: int,
    *,
    clean_start: bool = True,
    will: Will | None = None,
    properties: Properties | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    will_part = b""
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise WireError(f"invalid will QoS {will.qos}")
        _check_topic_name(will.topic)
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        will_part = encode_properties(will.properties) + _string(will.topic) + _binary(will.payload)
    return _packet(
        CONNECT << 4,
        _string("MQTT"),
        b"\x05",
        bytes((flags,)),
        _u16(keepalive),
        encode_properties(properties),
        _string(client_id),
        will_part,
    )


def encode_subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    if not topic_filter:
        raise WireError("cannot subscribe to an empty topic filter")
    if qos not in (0, 1, 2):
        raise WireError(f"invalid subscription QoS {qos}")
    return _packet(
        SUBSCRIBE << 4 | 0x02, _u16(packet_id), b"\x00", _string(topic_filter), bytes((qos,))
    )


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    packet_id: int | None = None,
    properties: Properties | None = None,
    dup: bool = False,
) -> bytes:
    _check_topic_name(topic)
    if qos not in (0, 1):
        raise WireError(f"QoS {qos} publishing is not supported (only 0 and 1)")
    if (qos == 0) != (packet_id is None):
        raise WireError("a QoS 1 publish needs a packet id, a QoS 0 publish has none")
    first = PUBLISH << 4 | qos << 1 | (0x01 if retain else 0) | (0x08 if dup else 0)
    id_part = b"" if packet_id is None else _u16(packet_id)
    return _packet(first, _string(topic), id_part, encode_properties(properties), payload)


def encode_puback(packet_id: int, reason_code: int = 0) -> bytes:
    if reason_code == 0:
        return _packet(PUBACK << 4, _u16(packet_id))
    return _packet(PUBACK << 4, _u16(packet_id), _byte(reason_code), b"\x00")


def encode_disconnect(reason_code: int = 0) -> bytes:
    if reason_code == 0:
        return _packet(DISCONNECT << 4)
    return _packet(DISCONNECT << 4, _byte(reason_code), b"\x00")


# --- packets we receive ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    properties: Properties


@dataclass(frozen=True, slots=True)
class Message:
    """A PUBLISH the broker delivered to us."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = _NO_PROPERTIES
    packet_id: int | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int
    properties: Properties


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int
    properties: Properties


Packet = ConnAck | Message | PubAck | SubAck | PingResp | Disconnect


class FrameBuffer:
    """Splits a byte stream into MQTT packets: ``(first_byte, body)`` pairs."""

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_INCOMING) -> None:
        self._buffer = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(buffer) >= 2:
            header = decode_varint(buffer, 1)
            if header is None:
                break
            length, start = header
            if length > self.max_size:
                raise MalformedPacket(
                    f"packet of {length} bytes exceeds our maximum of {self.max_size}"
                )
            end = start + length
            if len(buffer) < end:
                break
            frames.append((buffer[0], bytes(buffer[start:end])))
            del buffer[:end]
        return frames


def parse_packet(first_byte: int, body: bytes) -> Packet:
    """Decode one packet from the broker, or raise :class:`MalformedPacket`."""
    kind, flags = first_byte >> 4, first_byte & 0x0F
    if kind == PUBLISH:
        return _parse_publish(flags, body)
    if flags:
        raise MalformedPacket(f"packet type {kind} with reserved flags 0x{flags:X}")
    if kind == CONNACK:
        return _parse_connack(body)
    if kind == PUBACK:
        return _parse_puback(body)
    if kind == SUBACK:
        return _parse_suback(body)
    if kind == PINGRESP:
        if body:
            raise MalformedPacket("PINGRESP with a body")
        return PingResp()
    if kind == DISCONNECT:
        return _parse_disconnect(body)
    raise MalformedPacket(f"unexpected packet type {kind} from the broker")


def _parse_connack(body: bytes) -> ConnAck:
    reader = _Reader(body, "CONNACK")
    ack_flags = reader.byte()
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flags set")
    reason = reader.byte()
    # An MQTT 3.1.1 broker refusing version 5 answers without properties.
    properties = _read_properties(reader) if reader.remaining() else _NO_PROPERTIES
    reader.end()
    return ConnAck(bool(ack_flags & 1), reason, properties)


def _parse_publish(flags: int, body: bytes) -> Message:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if qos == 0 and flags & 0x08:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message")
    reader = _Reader(body, "PUBLISH")
    topic = reader.string()
    packet_id = reader.u16() if qos else None
    if packet_id == 0:
        raise MalformedPacket("PUBLISH: packet identifier 0")
    properties = _read_properties(reader)
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket(f"PUBLISH: invalid topic name {topic!r}")
    return Message(topic, reader.rest(), qos, bool(flags & 0x01), properties, packet_id)


def _parse_puback(body: bytes) -> PubAck:
    reader = _Reader(body, "PUBACK")
    packet_id = reader.u16()
    reason = reader.byte() if reader.remaining() else 0
    properties = _read_properties(reader) if reader.remaining() else _NO_PROPERTIES
    reader.end()
    return PubAck(packet_id, reason, properties)


def _parse_suback(body: bytes) -> SubAck:
    reader = _Reader(body, "SUBACK")
    packet_id = reader.u16()
    properties = _read_properties(reader)
    codes = tuple(reader.rest())
    if not codes:
        raise MalformedPacket("SUBACK without reason codes")
    return SubAck(packet_id, codes, properties)


def _parse_disconnect(body: bytes) -> Disconnect:
    reader = _Reader(body, "DISCONNECT")
    reason = reader.byte() if reader.remaining() else 0
    properties = _read_properties(reader) if reader.remaining() else _NO_PROPERTIES
    reader.end()
    return Disconnect(reason, properties)


# --- the connection -------------------------------------------------------------------------
MessageHandler = Callable[[Message], None]


class MqttClient(asyncio.Protocol):
    """One MQTT 5 connection. Make it with :func:`connect`.

    The ``asyncio.Protocol`` methods (``connection_made``, ``data_received``, ...) are
    internal; the public surface is :meth:`subscribe`, :meth:`publish`, :meth:`disconnect`,
    :meth:`abort`, :attr:`closed` and :meth:`wait_closed`.
    """

    __slots__ = (
        "_can_write",
        "_connack",
        "_frames",
        "_gone",
        "_inflight",
        "_keepalive",
        "_last_sent",
        "_loop",
        "_next_id",
        "_on_message",
        "_pending",
        "_ping_sent_at",
        "_slot_waiters",
        "_transport",
        "_window",
        "client_id",
        "closed",
        "max_outgoing",
    )

    def __init__(
        self, client_id: str, on_message: MessageHandler | None, window: int, max_incoming: int
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.client_id = client_id
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._frames = FrameBuffer(max_incoming)
        self._connack: asyncio.Future[ConnAck] | None = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[PubAck | SubAck]] = {}
        self._next_id = 0
        self._window = window
        self._inflight = 0
        self._slot_waiters: list[asyncio.Future[None]] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # made when someone waits for it
        self._keepalive = 0
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None
        self.max_outgoing = MAX_VARINT
        self.closed: asyncio.Future[WireError | None] = self._loop.create_future()
        """Done when the connection is gone; its result says why (None: our DISCONNECT)."""

    # public API -------------------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        return self.closed.done() or self._transport is None or self._transport.is_closing()

    @property
    def keepalive(self) -> int:
        """The keepalive in force: ours, or the one the broker assigned in CONNACK."""
        return self._keepalive

    async def wait_closed(self) -> WireError | None:
        """Wait until the connection is gone; return why (None after :meth:`disconnect`)."""
        return await asyncio.shield(self.closed)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS."""
        packet_id = self._new_packet_id()
        ack = await self._request(packet_id, encode_subscribe(packet_id, topic_filter, qos))
        if not isinstance(ack, SubAck):
            raise self._wrong_answer(ack, "SUBSCRIBE")
        code = ack.reason_codes[0]
        if code >= 0x80:
            raise WireError(
                f"{self.client_id}: subscription to {topic_filter!r} refused: "
                f"{_describe(code, ack.properties)}",
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
        await self._take_slot()
        try:
            packet_id = self._new_packet_id()
            packet = encode_publish(
                topic, payload, qos=1, retain=retain, packet_id=packet_id, properties=properties
            )
            await self._writable()
            ack = await self._request(packet_id, packet)
        finally:
            self._give_slot()
        if not isinstance(ack, PubAck):
            raise self._wrong_answer(ack, "PUBLISH")
        if ack.reason_code >= 0x80:
            raise WireError(
                f"{self.client_id}: publish to {topic!r} refused: "
                f"{_describe(ack.reason_code, ack.properties)}",
                ack.reason_code,
            )

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        on_done: Callable[[WireError | None], None] | None = None,
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
        if self._inflight >= self._window:
            raise WireError(
                f"{self.client_id}: {self._inflight} publishes await their PUBACK already "
                f"(the in-flight window); not publishing to {topic!r}"
            )
        packet_id = self._new_packet_id()
        packet = encode_publish(
            topic, payload, qos=1, retain=retain, packet_id=packet_id, properties=properties
        )
        self._send(self._checked_size(packet))
        answer: asyncio.Future[PubAck | SubAck] = self._loop.create_future()
        self._pending[packet_id] = answer
        self._inflight += 1
        answer.add_done_callback(lambda done: self._acknowledged(packet_id, topic, done, on_done))

    def _acknowledged(
        self,
        packet_id: int,
        topic: str,
        answer: asyncio.Future[PubAck | SubAck],
        on_done: Callable[[WireError | None], None] | None,
    ) -> None:
        self._pending.pop(packet_id, None)
        self._give_slot()
        result = self._ack_error(topic, answer)
        if on_done is not None:
            on_done(result)

    def _ack_error(self, topic: str, answer: asyncio.Future[PubAck | SubAck]) -> WireError | None:
        if answer.cancelled():
            return ConnectionClosed(f"{self.client_id}: publish to {topic!r} abandoned")
        error = answer.exception()
        if error is not None:
            return error if isinstance(error, WireError) else WireError(str(error))
        ack = answer.result()
        if not isinstance(ack, PubAck):
            return self._wrong_answer(ack, "PUBLISH")
        if ack.reason_code < 0x80:
            return None
        return WireError(
            f"{self.client_id}: publish to {topic!r} refused: "
            f"{_describe(ack.reason_code, ack.properties)}",
            ack.reason_code,
        )

    async def disconnect(self, reason_code: int = 0, grace: float = 5.0) -> None:
        """Send DISCONNECT (reason 0: the broker discards the will) and close; wait up to
        ``grace`` seconds for the socket to close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode_disconnect(reason_code))
        self._finish(None)
        gone = self._gone = self._loop.create_future()
        transport.close()  # flushes the DISCONNECT first
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await gone

    def abort(self) -> None:
        """Close the socket without DISCONNECT, so the broker publishes the will."""
        self._finish(ConnectionClosed(f"{self.client_id}: connection aborted"))
        if self._transport is not None:
            self._transport.abort()

    # requests -----------------------------------------------------------------------------
    def _new_packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise WireError(f"{self.client_id}: all 65535 packet identifiers are in use")

    async def _request(self, packet_id: int, packet: bytes) -> PubAck | SubAck:
        self._check_open()
        self._checked_size(packet)
        answer: asyncio.Future[PubAck | SubAck] = self._loop.create_future()
        self._pending[packet_id] = answer
        try:
            self._send(packet)
            return await answer
        finally:
            self._pending.pop(packet_id, None)

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

    async def _take_slot(self) -> None:
        while self._inflight >= self._window:
            self._check_open()
            waiter: asyncio.Future[None] = self._loop.create_future()
            if self._slot_waiters is None:
                self._slot_waiters = []
            self._slot_waiters.append(waiter)
            await waiter  # resolved when a slot frees up or the connection ends
        self._check_open()
        self._inflight += 1

    def _give_slot(self) -> None:
        self._inflight -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _writable(self) -> None:
        self._check_open()
        if self._can_write is not None:
            await asyncio.shield(self._can_write)
            self._check_open()

    def _check_open(self) -> None:
        if self.closed.done():
            why = self.closed.result()
            raise why or ConnectionClosed(f"{self.client_id}: disconnected")

    def _send(self, packet: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(f"{self.client_id}: connection closed")
        self._transport.write(packet)
        self._last_sent = self._loop.time()

    # keepalive --------------------------------------------------------------------------
    def keepalive_due(self, now: float) -> float | None:
        """Called by the :class:`KeepaliveScheduler`: send a PINGREQ if we have been quiet
        for most of the keepalive, close if the last one went unanswered for a whole
        keepalive. Returns when to be called next, or None once closed."""
        if self.is_closed or self._keepalive == 0:
            return None
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self._keepalive:
                self._fail(
                    ConnectionClosed(
                        f"{self.client_id}: no PINGRESP within {self._keepalive}s; "
                        "the broker is unreachable"
                    )
                )
                return None
            return self._ping_sent_at + self._keepalive
        quiet_until = self._last_sent + 0.75 * self._keepalive
        if now < quiet_until:
            return quiet_until
        self._send(_PINGREQ_PACKET)
        self._ping_sent_at = now
        return now + self._keepalive

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self._finish(ConnectionClosed(f"{self.client_id}: connection closed by the broker{detail}"))
        self._transport = None
        if self._gone is not None:
            _resolve(self._gone)

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            _resolve(self._can_write)
            self._can_write = None

    def data_received(self, data: bytes) -> None:
        try:
            for first_byte, body in self._frames.feed(data):
                if self.closed.done():
                    return
                self._handle(parse_packet(first_byte, body))
        except MalformedPacket as exc:
            self._protocol_violation(exc, 0x81)
        except WireError as exc:
            self._protocol_violation(exc, 0x82)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # incoming packets -------------------------------------------------------------------
    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, Message):
            self._deliver(packet)
        elif isinstance(packet, PubAck | SubAck):
            answer = self._pending.get(packet.packet_id)
            if answer is not None and not answer.done():
                answer.set_result(packet)
        elif isinstance(packet, PingResp):
            self._ping_sent_at = None
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
        error = ConnectionClosed(
            f"{self.client_id}: the broker disconnected us: "
            f"{_describe(packet.reason_code, packet.properties)}",
            packet.reason_code,
        )
        self._fail(error)

    def _deliver(self, message: Message) -> None:
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

    # closing ----------------------------------------------------------------------------
    def _protocol_violation(self, error: WireError, reason_code: int) -> None:
        log.warning("protocol violation by the broker", client=self.client_id, error=str(error))
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_disconnect(reason_code))
            self._transport.close()
        self._finish(error)

    def _fail(self, error: WireError) -> None:
        self._finish(error)
        if self._transport is not None:
            self._transport.abort()

    def _finish(self, error: WireError | None) -> None:
        """Record why the connection ended (first reason wins) and fail what waits on it."""
        if self.closed.done():
            return
        self.closed.set_result(error)
        failure = error or ConnectionClosed(f"{self.client_id}: disconnected")
        answers: list[asyncio.Future[Any]] = [*self._pending.values()]
        if self._connack is not None:
            answers.append(self._connack)
        for future in answers:
            if not future.done():
                future.set_exception(failure)
        # Those waiting for a slot or for the socket to drain look at `closed` when woken.
        for waiter in [*(self._slot_waiters or ()), self._can_write]:
            if waiter is not None:
                _resolve(waiter)
        self._slot_waiters = None
        self._can_write = None

    def _discard_connack(self) -> None:
        """After a failed connect nobody awaits the CONNACK: mark its error as seen."""
        if self._connack is not None and self._connack.done() and not self._connack.cancelled():
            self._connack.exception()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(code: int, properties: Properties) -> str:
    text = reason_name(code)
    if properties.reason_string:
        text += f" ({properties.reason_string})"
    return text


async def connect(
    broker: BrokerUrl,
    *,
    client_id: str,
    keepalive: int = 30,
    will: Will | None = None,
    on_message: MessageHandler | None = None,
    pinger: KeepaliveScheduler | None = None,
    inflight: int = 20,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    max_incoming: int = DEFAULT_MAX_INCOMING,
) -> MqttClient:
    """Open a connection with a clean start and wait for a successful CONNACK.

    ``pinger`` sends the keepalive pings; without one the connection declares keepalive 0
    (none). ``inflight`` bounds the QoS 1 publishes awaiting PUBACK (further publishes wait),
    lowered to the broker's Receive Maximum. Raises :class:`ConnectRefused` for a refusal,
    :class:`WireError` when the broker cannot be reached within ``connect_timeout``.
    """
    if inflight < 1:
        raise WireError(f"the in-flight window must be at least 1, not {inflight}")
    loop = asyncio.get_running_loop()
    keepalive = keepalive if pinger is not None else 0
    client = MqttClient(client_id, on_message, inflight, max_incoming)
    packet = encode_connect(
        client_id,
        keepalive,
        will=will,
        properties=Properties(maximum_packet_size=max_incoming),
    )
    if broker.tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(
                lambda: client,
                broker.host,
                broker.port,
                ssl=ssl_context,
                server_hostname=broker.host if ssl_context else None,
            )
            client._send(packet)
            assert client._connack is not None
            connack = await client._connack
    except TimeoutError:
        client.abort()
        client._discard_connack()
        raise WireError(
            f"{client_id}: no CONNACK from {broker} within {connect_timeout}s"
        ) from None
    except OSError as exc:
        client.abort()
        client._discard_connack()
        raise WireError(f"{client_id}: cannot connect to {broker}: {exc.strerror or exc}") from exc
    except BaseException:
        client.abort()
        client._discard_connack()
        raise
    _accept_connack(client, connack, keepalive, broker)
    if pinger is not None and client.keepalive:
        pinger.add(client)
    return client


def _accept_connack(
    client: MqttClient, connack: ConnAck, keepalive: int, broker: BrokerUrl
) -> None:
    if connack.reason_code >= 0x80:
        client.abort()
        raise ConnectRefused(
            f"{client.client_id}: {broker} refused the connection: "
            f"{_describe(connack.reason_code, connack.properties)}",
            connack.reason_code,
        )
    props = connack.properties
    client._keepalive = props.server_keepalive if props.server_keepalive is not None else keepalive
    if props.receive_maximum:
        client._window = min(client._window, props.receive_maximum)
    if props.maximum_packet_size:
        client.max_outgoing = props.maximum_packet_size


# --- keepalive --------------------------------------------------------------------------------
class KeepaliveScheduler:
    """Keepalive pings for any number of connections from one task.

    Each connection sits in a heap at the time it must next be looked at; a connection that
    has sent something since is simply put back later, so the work per tick is only the
    connections that are actually due, not all of them.
    """

    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self._heap: list[tuple[float, int, MqttClient]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, client: MqttClient) -> None:
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
