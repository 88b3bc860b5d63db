"""The MQTT client's errors (all :class:`WireError`, part of the agent's
:class:`~edgeplane.edge_agent.errors.AgentError`), and reason codes as words.

WireError              cannot connect, or a request the broker refused (``reason_code``)
├── ConnackRefused     CONNACK with a failure reason code
├── ConnectionClosed   the connection is gone: broker DISCONNECT, socket closed, no PINGRESP
└── MalformedPacket    the broker sent bytes that are not valid MQTT 5
"""

from __future__ import annotations

from typing import Final

from edgeplane.edge_agent.errors import AgentError

__all__ = [
    "ConnackRefused",
    "ConnectionClosed",
    "MalformedPacket",
    "WireError",
    "describe_reason",
    "reason_name",
]

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


def describe_reason(code: int, reason_string: str | None) -> str:
    """A reason code as words, followed by the broker's reason string if it sent one."""
    text = reason_name(code)
    if reason_string:
        text += f" ({reason_string})"
    return text


class WireError(AgentError):
    """An MQTT connection failed, or the broker refused a request (``reason_code``)."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnackRefused(WireError):
    """The broker answered CONNECT with a failure reason code."""


class ConnectionClosed(WireError):
    """The connection is gone (the broker's DISCONNECT carries ``reason_code``)."""


class MalformedPacket(WireError):
    """The broker sent bytes that are not a valid MQTT 5 packet."""
