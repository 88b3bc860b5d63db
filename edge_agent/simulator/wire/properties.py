"""MQTT 5 properties: one frozen value type, its encoder and its decoder."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final

from edgeplane.edge_agent.simulator.wire.errors import MalformedPacket
from edgeplane.edge_agent.simulator.wire.fields import (
    FieldReader,
    encode_binary,
    encode_byte,
    encode_string,
    encode_u16,
    encode_u32,
    encode_varint,
)

__all__ = [
    "NO_PROPERTIES",
    "Properties",
    "decode_properties",
    "encode_properties",
    "read_properties",
]


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
NO_PROPERTIES: Final = Properties()


def _encode_value(kind: str, value: Any) -> bytes:
    if kind == "byte":
        return encode_byte(value)
    if kind == "u16":
        return encode_u16(value)
    if kind == "u32":
        return encode_u32(value)
    if kind == "varint":
        return encode_varint(value)
    if kind == "string":
        return encode_string(value)
    if kind == "binary":
        return encode_binary(value)
    name, text = value
    return encode_string(name) + encode_string(text)


def _decode_value(kind: str, reader: FieldReader) -> Any:
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
    if properties is None or properties is NO_PROPERTIES:
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
    reader = FieldReader(data, what, pos)
    return read_properties(reader), reader.pos


def read_properties(reader: FieldReader) -> Properties:
    """Read the properties at the reader's position (their length first)."""
    length = reader.varint()
    if length == 0:
        return NO_PROPERTIES
    section = FieldReader(reader.take(length), reader.what + " properties")
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
