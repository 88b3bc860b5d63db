"""MQTT 5 packets: encoders of those we send, the types of those we receive, and the framing
and parsing of the byte stream the broker sends."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from edgeplane.edge_agent.simulator.wire.errors import MalformedPacket, WireError
from edgeplane.edge_agent.simulator.wire.fields import (
    FieldReader,
    decode_varint,
    encode_binary,
    encode_byte,
    encode_string,
    encode_u16,
    encode_varint,
)
from edgeplane.edge_agent.simulator.wire.properties import (
    NO_PROPERTIES,
    Properties,
    encode_properties,
    read_properties,
)

__all__ = [
    "DEFAULT_MAX_INCOMING",
    "PINGREQ_PACKET",
    "ConnAck",
    "Disconnect",
    "FrameBuffer",
    "LastWill",
    "Packet",
    "PingResp",
    "PubAck",
    "Publish",
    "SubAck",
    "encode_connect",
    "encode_disconnect",
    "encode_puback",
    "encode_publish",
    "encode_subscribe",
    "parse_packet",
]

DEFAULT_MAX_INCOMING: Final = 1024 * 1024  # we tell the broker not to send larger packets

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PINGREQ_PACKET: Final = b"\xc0\x00"


# --- packets we send ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LastWill:
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
    will: LastWill | None = None,
    properties: Properties | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    will_part = b""
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise WireError(f"invalid will QoS {will.qos}")
        _check_topic_name(will.topic)
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        will_part = (
            encode_properties(will.properties)
            + encode_string(will.topic)
            + encode_binary(will.payload)
        )
    return _packet(
        CONNECT << 4,
        encode_string("MQTT"),
        b"\x05",
        bytes((flags,)),
        encode_u16(keepalive),
        encode_properties(properties),
        encode_string(client_id),
        will_part,
    )


def encode_subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    if not topic_filter:
        raise WireError("cannot subscribe to an empty topic filter")
    if qos not in (0, 1, 2):
        raise WireError(f"invalid subscription QoS {qos}")
    return _packet(
        SUBSCRIBE << 4 | 0x02,
        encode_u16(packet_id),
        b"\x00",
        encode_string(topic_filter),
        bytes((qos,)),
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
    id_part = b"" if packet_id is None else encode_u16(packet_id)
    return _packet(first, encode_string(topic), id_part, encode_properties(properties), payload)


def encode_puback(packet_id: int, reason_code: int = 0) -> bytes:
    if reason_code == 0:
        return _packet(PUBACK << 4, encode_u16(packet_id))
    return _packet(PUBACK << 4, encode_u16(packet_id), encode_byte(reason_code), b"\x00")


def encode_disconnect(reason_code: int = 0) -> bytes:
    if reason_code == 0:
        return _packet(DISCONNECT << 4)
    return _packet(DISCONNECT << 4, encode_byte(reason_code), b"\x00")


# --- packets we receive ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    properties: Properties


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH the broker delivered to us."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES
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


Packet = ConnAck | Publish | PubAck | SubAck | PingResp | Disconnect


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
    reader = FieldReader(body, "CONNACK")
    ack_flags = reader.byte()
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flags set")
    reason = reader.byte()
    # An MQTT 3.1.1 broker refusing version 5 answers without properties.
    properties = read_properties(reader) if reader.remaining() else NO_PROPERTIES
    reader.end()
    return ConnAck(bool(ack_flags & 1), reason, properties)


def _parse_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if qos == 0 and flags & 0x08:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message")
    reader = FieldReader(body, "PUBLISH")
    topic = reader.string()
    packet_id = reader.u16() if qos else None
    if packet_id == 0:
        raise MalformedPacket("PUBLISH: packet identifier 0")
    properties = read_properties(reader)
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket(f"PUBLISH: invalid topic name {topic!r}")
    return Publish(topic, reader.rest(), qos, bool(flags & 0x01), properties, packet_id)


def _parse_puback(body: bytes) -> PubAck:
    reader = FieldReader(body, "PUBACK")
    packet_id = reader.u16()
    reason = reader.byte() if reader.remaining() else 0
    properties = read_properties(reader) if reader.remaining() else NO_PROPERTIES
    reader.end()
    return PubAck(packet_id, reason, properties)


def _parse_suback(body: bytes) -> SubAck:
    reader = FieldReader(body, "SUBACK")
    packet_id = reader.u16()
    properties = read_properties(reader)
    codes = tuple(reader.rest())
    if not codes:
        raise MalformedPacket("SUBACK without reason codes")
    return SubAck(packet_id, codes, properties)


def _parse_disconnect(body: bytes) -> Disconnect:
    reader = FieldReader(body, "DISCONNECT")
    reason = reader.byte() if reader.remaining() else 0
    properties = read_properties(reader) if reader.remaining() else NO_PROPERTIES
    reader.end()
    return Disconnect(reason, properties)
