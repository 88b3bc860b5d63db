"""Handling what arrives on ``R/env/{env}/cmd``: every payload gets an answer or a count.

A valid ``ping`` is answered with a ``pong`` event. Anything else (not JSON, a wrong
schema, an unknown command type, an oversized payload) is answered with a ``rejected``
event naming the reason, counted per reason, and logged at most once per reason a minute.
A flood of garbage cannot turn into a flood of events: rejections are answered at a
bounded rate, and those left unanswered are counted and reported in the next log line.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import msgspec
import structlog

from shared.clock import Clock
from shared.codec import COMMAND, DEFAULT_MAX_PAYLOAD
from shared.errors import DecodeError
from shared.messages import CommandRejected, Event, Ping, Pong

__all__ = ["KNOWN_COMMANDS", "CommandHandler", "RateLimit"]

KNOWN_COMMANDS: Final = frozenset({"ping"})
LOG_EVERY: Final = 60.0  # seconds between two log lines about one rejection reason
_SHORT_TEXT: Final = 256

log = structlog.get_logger("edge_agent.commands")


class _Envelope(msgspec.Struct):
    """The parts of a command readable even when the rest is wrong."""

    type: Any = None
    id: Any = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


class RateLimit:
    """A token bucket: ``rate`` per second on average, bursts of up to ``burst``."""

    def __init__(self, clock: Clock, rate: float = 10.0, burst: float = 20.0) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = clock.monotonic()

    def allow(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class CommandHandler:
    """Turns a command payload into the event that answers it (or None when throttled)."""

    def __init__(
        self,
        env: str,
        clock: Clock,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        answer_limit: RateLimit | None = None,
    ) -> None:
        self.env = env
        self.max_payload = max_payload
        self.rejected: Counter[str] = Counter()  # reason -> payloads rejected
        self.unanswered = 0  # rejections not answered because of the rate limit
        self._clock = clock
        self._answer_limit = answer_limit or RateLimit(clock)
        self._event_seq = 0
        self._logged_at: dict[str, float] = {}
        self._since_log: Counter[str] = Counter()

    def handle(self, payload: bytes) -> Event | None:
        try:
            command = COMMAND.decode(payload, limit=self.max_payload)
        except DecodeError as exc:
            return self._reject(payload, *self._explain(payload, exc))
        return self._answer(command)

    def _answer(self, command: Ping) -> Event:
        return Pong(env=self.env, seq=self._next_seq(), cmd=command.id)

    def _reject(self, payload: bytes, reason: str, detail: str) -> Event | None:
        self.rejected[reason] += 1
        self._since_log[reason] += 1
        self._log_rejection(reason, detail, len(payload))
        if not self._answer_limit.allow():
            self.unanswered += 1
            return None
        return CommandRejected(
            env=self.env,
            seq=self._next_seq(),
            reason=_short(f"{reason}: {detail}"),
            cmd=_short(_command_id(payload, self.max_payload)),
        )

    def _explain(self, payload: bytes, exc: DecodeError) -> tuple[str, str]:
        if exc.reason == "schema":
            kind = _command_type(payload)
            if isinstance(kind, str) and kind not in KNOWN_COMMANDS:
                return "unknown-command", f"unknown command type {kind[:64]!r}"
        return exc.reason, exc.detail

    def _log_rejection(self, reason: str, detail: str, size: int) -> None:
        now = self._clock.monotonic()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged_at[reason] = now
        log.warning(
            "command rejected",
            reason=reason,
            detail=_short(detail),
            size=size,
            rejected_since_last_log=self._since_log[reason],
            rejected_total=self.rejected[reason],
            unanswered_total=self.unanswered,
        )
        self._since_log[reason] = 0

    def _next_seq(self) -> int:
        self._event_seq += 1
        return self._event_seq


def _peek(payload: bytes, limit: int) -> _Envelope | None:
    if not payload or len(payload) > limit:
        return None
    try:
        return _envelope_decoder.decode(payload)
    except msgspec.MsgspecError:
        return None


def _command_type(payload: bytes) -> object:
    envelope = _peek(payload, DEFAULT_MAX_PAYLOAD)
    return None if envelope is None else envelope.type


def _command_id(payload: bytes, limit: int) -> str:
    envelope = _peek(payload, limit)
    if envelope is None or not isinstance(envelope.id, str):
        return ""
    return envelope.id


def _short(text: str) -> str:
    return text if len(text) <= _SHORT_TEXT else text[: _SHORT_TEXT - 1] + "…"
