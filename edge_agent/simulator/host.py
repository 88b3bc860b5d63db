"""What the agents of one fleet share (:class:`AgentSetup`), and what an agent tells its
fleet and asks of it (:class:`AgentHost`, which :class:`~.fleet.Fleet` is)."""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from edgeplane.edge_agent.metrics import Sample
from edgeplane.edge_agent.simulator.heartbeats import BeatSchedule
from edgeplane.edge_agent.simulator.wire.errors import WireError
from edgeplane.edge_agent.simulator.wire.keepalive import KeepaliveScheduler
from edgeplane.edge_agent.simulator.wire.properties import Properties
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import Clock
from edgeplane.shared.topics import TopicRoot

__all__ = ["AgentHost", "AgentSetup"]


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """What every agent of one fleet shares: where it connects, how often it beats, what its
    heartbeats are made of, and the fleet's keepalive and heartbeat timers."""

    broker: BrokerUrl
    root: TopicRoot
    interval: float
    keepalive: int
    ssl_context: ssl.SSLContext | None
    boot: str  # one boot id per fleet: the agents of one process start together
    clock: Clock
    metrics: Callable[[], Sample]
    online_properties: Properties  # the message expiry of every online message
    pinger: KeepaliveScheduler
    beats: BeatSchedule
    rng: random.Random


class AgentHost(Protocol):
    """What a simulated agent tells its fleet, and asks of it."""

    @property
    def setup(self) -> AgentSetup: ...

    def connect_delay(self) -> float:
        """Seconds until the next free connection slot, taken for the caller."""
        ...

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None: ...

    def agent_online(self) -> None:
        """An agent is connected and has announced itself."""
        ...

    def agent_offline(self) -> None: ...

    def agent_settled(self) -> None:
        """An agent is online for the first time, or ended without ever being (once each)."""
        ...

    def connection_failed(self, env: str, error: WireError) -> None: ...

    def heartbeat_sent(self, env: str, seq: int) -> None:
        """Called for every online message just before it is written."""
        ...

    def heartbeat_done(self, error: WireError | None) -> None: ...

    def event_delivered(self) -> None: ...
