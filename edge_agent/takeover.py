"""Telling a takeover of the agent's identity from other lost connections.

A broker that sees a second client connect with the agent's client id drops the first
connection. MQTT 5 says it should send DISCONNECT with reason 0x8E (session taken over)
first, but mosquitto 2.0 just closes the socket, which looks like any other lost
connection. Reconnecting at once would take the identity back, and the other runtime would
do the same: a takeover ping-pong. So when the broker drops a connection, the agent first
looks: a short-lived observer connection under another client id (no will, clean start)
reads the agent's status topic for a moment. An online message from another boot means
another runtime holds the identity now.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from edgeplane.edge_agent.errors import BrokerUnavailable
from edgeplane.edge_agent.session import (
    Connected,
    ConnectRefused,
    Disconnected,
    MessageIn,
    MqttSession,
)
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import Clock
from edgeplane.shared.codec import STATUS
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import OnlineStatus

__all__ = ["CONNECT_TIMEOUT", "WATCH_WINDOW", "TakeoverCheck", "foreign_boot"]

CONNECT_TIMEOUT: Final = 2.0  # seconds for the observer to be connected and subscribed
WATCH_WINDOW: Final = 1.0  # seconds the observer watches for the other runtime's online


def foreign_boot(payload: bytes, env: str, own_boot: str) -> str | None:
    """The boot id of another runtime's online message for ``env``, else None."""
    try:
        status = STATUS.decode(payload)
    except DecodeError:
        return None
    if isinstance(status, OnlineStatus) and status.env == env and status.boot != own_boot:
        return status.boot
    return None


class TakeoverCheck:
    def __init__(
        self,
        env: str,
        broker: BrokerUrl,
        status_topic: str,
        own_boot: str,
        clock: Clock,
        *,
        window: float = WATCH_WINDOW,
    ) -> None:
        self.env = env
        self.broker = broker
        self.status_topic = status_topic
        self.own_boot = own_boot
        self.window = window
        self._clock = clock

    def run(self, waker: Waker | None, should_stop: Callable[[], bool]) -> str | None:
        """Watch the status topic for up to a few seconds; return the other runtime's boot
        id if one is online, None if none is seen (or the broker cannot be reached)."""
        session = MqttSession(f"{self.env}-observer-{self.own_boot}", self.broker, keepalive=10)
        try:
            session.connect()
        except BrokerUnavailable:
            return None
        try:
            return self._watch(session, waker, should_stop)
        finally:
            if session.has_socket:
                session.disconnect()

    def _watch(
        self, session: MqttSession, waker: Waker | None, should_stop: Callable[[], bool]
    ) -> str | None:
        wake = waker.reader if waker is not None else None
        deadline = self._clock.monotonic() + CONNECT_TIMEOUT
        watch_until = math.inf
        while not should_stop():
            now = self._clock.monotonic()
            if now >= min(deadline, watch_until):
                return None
            events = session.poll(min(deadline, watch_until) - now, wake)
            if waker is not None:
                waker.drain()
            for event in events:
                match event:
                    case Connected():
                        session.subscribe(self.status_topic)
                        watch_until = deadline = self._clock.monotonic() + self.window
                    case ConnectRefused() | Disconnected():
                        return None
                    case MessageIn(payload=payload):
                        other = foreign_boot(payload, self.env, self.own_boot)
                        if other is not None:
                            return other
        return None
