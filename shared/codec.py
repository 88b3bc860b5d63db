"""Encoders and decoders, built once, that turn every failure into :class:`DecodeError`.

Decoding never raises anything but ``DecodeError``; its ``reason`` is one of:

``too-large``     the payload is over the size limit
``empty``         a zero-length payload (a cleared retained message)
``not-json``      not UTF-8 JSON at all
``schema``        JSON, but not a valid message (wrong type, missing field, bad value)
``env-mismatch``  the payload's ``env`` differs from the id in its topic
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar

import msgspec

from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import (
    AgentStatus,
    Alert,
    Command,
    ControllerStatus,
    EnvView,
    Event,
    SignedCommand,
)

__all__ = [
    "ALERT",
    "COMMAND",
    "CONTROLLER_STATUS",
    "DEFAULT_MAX_PAYLOAD",
    "EVENT",
    "SIGNED_COMMAND",
    "STATUS",
    "VIEW",
    "MessageCodec",
    "check_env",
    "encode",
]

DEFAULT_MAX_PAYLOAD: Final = 64 * 1024

T = TypeVar("T")

_encoder: Final = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """JSON-encode any wire message."""
    return _encoder.encode(message)


class MessageCodec(Generic[T]):
    """A decoder for one topic's message type, with the size limit checked first."""

    def __init__(self, type_: Any, name: str) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)
        self.name = name

    def decode(self, payload: bytes, *, limit: int = DEFAULT_MAX_PAYLOAD) -> T:
        if len(payload) > limit:
            raise DecodeError("too-large", f"{len(payload)} bytes, limit {limit}")
        if not payload:
            raise DecodeError("empty", f"empty {self.name} payload")
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise DecodeError("schema", f"{self.name}: {exc}") from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec lets invalid UTF-8 inside a string through as UnicodeDecodeError.
            raise DecodeError("not-json", f"{self.name}: {exc}") from exc
        except RecursionError:
            raise DecodeError("not-json", f"{self.name}: nested too deeply") from None

    @staticmethod
    def encode(message: msgspec.Struct) -> bytes:
        return encode(message)


def check_env(payload_env: str, topic_env: str) -> None:
    """A message whose ``env`` differs from the id in its topic is invalid."""
    if payload_env != topic_env:
        raise DecodeError(
            "env-mismatch", f"payload env {payload_env!r} on the topic of {topic_env!r}"
        )


STATUS: Final[MessageCodec[AgentStatus]] = MessageCodec(AgentStatus, "status")
VIEW: Final[MessageCodec[EnvView]] = MessageCodec(EnvView, "view")
ALERT: Final[MessageCodec[Alert]] = MessageCodec(Alert, "alert")
CONTROLLER_STATUS: Final[MessageCodec[ControllerStatus]] = MessageCodec(
    ControllerStatus, "controller status"
)
COMMAND: Final[MessageCodec[Command]] = MessageCodec(Command, "command")
EVENT: Final[MessageCodec[Event]] = MessageCodec(Event, "event")
SIGNED_COMMAND: Final[MessageCodec[SignedCommand]] = MessageCodec(SignedCommand, "signed command")
