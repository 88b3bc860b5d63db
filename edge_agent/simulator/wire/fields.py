"""MQTT's data representations: variable byte integers, fixed-size integers, binary data and
UTF-8 strings; encoders that refuse what MQTT cannot express, and a reader of packet bodies."""

from __future__ import annotations

from typing import Final

from edgeplane.edge_agent.simulator.wire.errors import MalformedPacket, WireError

__all__ = [
    "MAX_VARINT",
    "FieldReader",
    "decode_varint",
    "encode_binary",
    "encode_byte",
    "encode_string",
    "encode_u16",
    "encode_u32",
    "encode_varint",
]

MAX_VARINT: Final = 268_435_455  # the largest remaining length MQTT can express


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


def encode_u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise WireError(f"two-byte integer out of range: {value}")
    return value.to_bytes(2, "big")


def encode_u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise WireError(f"four-byte integer out of range: {value}")
    return value.to_bytes(4, "big")


def encode_byte(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise WireError(f"byte out of range: {value}")
    return bytes((value,))


def encode_binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise WireError(f"binary field of {len(value)} bytes exceeds 65535")
    return len(value).to_bytes(2, "big") + value


def encode_string(value: str) -> bytes:
    if "\x00" in value:
        raise WireError(f"MQTT strings cannot contain NUL: {value[:80]!r}")
    try:
        return encode_binary(value.encode())
    except UnicodeEncodeError as exc:
        raise WireError(f"not encodable as UTF-8: {value[:80]!r}") from exc


class FieldReader:
    """Reads the fields of one packet body (``what`` names it in errors) from ``pos`` on;
    running past its end is a malformed packet."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
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
