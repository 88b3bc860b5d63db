"""The agent's loop without a network: :class:`ScriptedBroker` stands in for the MQTT
session over a ManualClock (answers at once, moves the clock on each poll, runs scripted
actions at their times) and :func:`make_agent` builds an agent on it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeplane.edge_agent.agent import Agent
from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.errors import BrokerUnavailable
from edgeplane.edge_agent.session import (
    Connected,
    Disconnected,
    MqttSession,
    Published,
    SessionEvent,
    Subscribed,
)
from edgeplane.edge_agent.state import BdseqStore
from edgeplane.edge_agent.takeover import TakeoverCheck
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import Clock, ManualClock
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY

__all__ = [
    "CMD",
    "ENV",
    "EVENTS",
    "ROOT",
    "STATUS",
    "NoOtherRuntime",
    "ScriptedBroker",
    "make_agent",
]

ENV = "dev-lab-loop"
ROOT = TopicRoot("loop/v1")
STATUS = ROOT.status(ENV)
CMD = ROOT.cmd(ENV)
EVENTS = ROOT.events(ENV)


class ScriptedBroker(MqttSession):
    """Answers CONNECT, SUBSCRIBE and PUBLISH at once, moves the clock on each poll, and
    runs scripted actions at their times."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__("scripted", BrokerUrl("mqtt", "127.0.0.1", 9), 30)
        self.clock = clock
        self.start = clock.monotonic()
        self.record: list[tuple[float, str, Any]] = []
        self.script: list[tuple[float, Callable[[], None]]] = []
        self.pending: list[SessionEvent] = []
        self.open = False
        self.answer_connect = True
        self.answer_publish = True
        self.refuse_connect = False
        self._mid = 0

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        self.script.append((self.start + seconds, action))
        self.script.sort(key=lambda item: item[0])

    def drop(self, code: int = 128) -> None:
        self.open = False
        self.pending.append(Disconnected(code, "dropped", by_broker=code != 128))

    def now(self) -> float:
        return round(self.clock.monotonic() - self.start, 3)

    def published(self, topic: str = STATUS) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, d["payload"]) for t, a, d in self.record if a == "publish" and d["topic"] == topic
        ]

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid

    # MqttSession ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.open

    @property
    def has_socket(self) -> bool:
        return self.open

    def connect(self, will: tuple[str, bytes] | None = None) -> None:
        self.record.append((self.now(), "connect", json.loads(will[1]) if will else None))
        if self.refuse_connect:
            raise BrokerUnavailable("refused")
        self.open = True
        if self.answer_connect:
            self.pending.append(Connected())

    def subscribe(self, topic: str, *, no_local: bool = False) -> int:
        mid = self._next_mid()
        self.record.append((self.now(), "subscribe", topic))
        self.pending.append(Subscribed(mid, ()))
        return mid

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry: int | None = None
    ) -> int:
        mid = self._next_mid()
        detail = {
            "topic": topic,
            "payload": json.loads(payload) if payload else None,
            "retain": retain,
            "expiry": expiry,
        }
        self.record.append((self.now(), "publish", detail))
        if self.answer_publish:
            self.pending.append(Published(mid))
        return mid

    def take_unacked(self) -> list[tuple[str, bytes]]:
        return []

    def abort(self) -> None:
        self.record.append((self.now(), "abort", None))
        self.drop()

    def disconnect(self) -> None:
        self.record.append((self.now(), "disconnect", None))
        self.open = False

    def poll(self, timeout: float, wake: Any = None) -> list[SessionEvent]:
        if not self.pending:
            next_action = self.script[0][0] if self.script else math.inf
            target = min(self.clock.monotonic() + timeout, next_action)
            if target == math.inf or target - self.start > 10_000:
                raise AssertionError(f"the agent would wait forever; record: {self.record}")
            self.clock.advance(max(0.0, target - self.clock.monotonic()))
            while self.script and self.script[0][0] <= self.clock.monotonic():
                self.script.pop(0)[1]()
        events, self.pending = self.pending, []
        return events


class NoOtherRuntime(TakeoverCheck):
    def __init__(self, clock: Clock, other_boot: str | None = None) -> None:
        super().__init__(ENV, BrokerUrl("mqtt", "127.0.0.1", 9), STATUS, "self", clock)
        self.other_boot = other_boot
        self.calls = 0

    def run(self, waker: Waker | None, should_stop: Callable[[], bool]) -> str | None:
        self.calls += 1
        return self.other_boot


def make_agent(
    tmp_path: Path, *, other_boot: str | None = None, **overrides: Any
) -> tuple[Agent, ScriptedBroker, NoOtherRuntime]:
    clock = ManualClock()
    broker = ScriptedBroker(clock)
    check = NoOtherRuntime(clock, other_boot)
    settings: dict[str, Any] = {"command_key": PUBLIC_KEY, **overrides}
    config = AgentConfig(
        env_id=ENV, state_dir=tmp_path, topic_root=ROOT, heartbeat_interval=10.0, **settings
    )
    agent = Agent(
        config, clock=clock, session=broker, store=BdseqStore(tmp_path), takeover_check=check
    )
    return agent, broker, check
