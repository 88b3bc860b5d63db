"""The agent's loop, exactly, over a ManualClock and a scripted stand-in for the broker:
what it publishes, in what order, and when."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from edgeplane.edge_agent.agent import Agent
from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.errors import BrokerUnavailable, EnvironmentRetired
from edgeplane.edge_agent.secrets import load_secrets
from edgeplane.edge_agent.session import (
    Connected,
    Disconnected,
    MessageIn,
    MqttSession,
    Published,
    SessionEvent,
    Subscribed,
)
from edgeplane.edge_agent.state import BdseqStore, check_not_retired
from edgeplane.edge_agent.takeover import TakeoverCheck
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import Clock, ManualClock
from edgeplane.shared.topics import TopicRoot
from tests.support.logs import capture_logs

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
    config = AgentConfig(
        env_id=ENV, state_dir=tmp_path, topic_root=ROOT, heartbeat_interval=10.0, **overrides
    )
    agent = Agent(
        config, clock=clock, session=broker, store=BdseqStore(tmp_path), takeover_check=check
    )
    return agent, broker, check


def test_birth_order_heartbeat_schedule_and_clean_stop(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.at(35, agent.request_stop)
    assert agent.run() == 0
    actions = [(t, a) for t, a, _ in broker.record]
    assert actions[:4] == [(0, "connect"), (0, "subscribe"), (0, "publish"), (0, "subscribe")]
    assert broker.record[0][2] == {
        "status": "offline",
        "env": ENV,
        "bdseq": 1,
        "reason": "connection-lost",
    }
    assert broker.record[1][2] == CMD, "commands are subscribed before online"
    assert broker.record[3][2] == STATUS
    statuses = broker.published()
    assert [(t, p["status"], p.get("seq")) for t, p in statuses] == [
        (0, "online", 0),
        (10, "online", 1),
        (20, "online", 2),
        (30, "online", 3),
        (35, "offline", None),
    ]
    assert statuses[-1][1] == {"status": "offline", "env": ENV, "bdseq": 1, "reason": "shutdown"}
    online = [
        d for _, a, d in broker.record if a == "publish" and d["payload"]["status"] == "online"
    ]
    assert all(d["retain"] and d["expiry"] == 30 for d in online)
    assert broker.record[-1] == (35, "disconnect", None), "right after the PUBACK"


def test_stop_waits_for_the_shutdown_puback_at_most_five_seconds(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.answer_publish = False
    broker.at(1, agent.request_stop)
    assert agent.run() == 0
    assert broker.record[-1] == (6, "disconnect", None)


def test_lost_connection_reconnects_quickly_with_a_new_bdseq(tmp_path: Path) -> None:
    agent, broker, check = make_agent(tmp_path)
    broker.at(5, broker.drop)
    broker.at(20, agent.request_stop)
    agent.run()
    connects = [(t, will["bdseq"]) for t, a, will in broker.record if a == "connect"]
    assert len(connects) == 2
    assert connects[0][0] == 0
    assert connects[0][1] == 1
    assert 5.25 <= connects[1][0] <= 5.5, "the first retry comes after 0.25-0.5 s"
    assert connects[1][1] == 2
    assert check.calls == 1, "a dropped connection is checked for a takeover"
    second_online = [p for t, p in broker.published() if p["status"] == "online" and t > 5]
    assert (second_online[0]["bdseq"], second_online[0]["seq"]) == (2, 0)


@pytest.mark.parametrize(("code", "other_boot"), [(0x8E, None), (128, "b0b0b0")])
def test_takeover_means_a_long_backoff_and_an_error_naming_the_env(
    tmp_path: Path, code: int, other_boot: str | None
) -> None:
    agent, broker, _ = make_agent(tmp_path, other_boot=other_boot, takeover_backoff=60.0)
    broker.at(5, lambda: broker.drop(code))
    broker.at(200, agent.request_stop)
    with capture_logs() as logs:
        agent.run()
    connects = [t for t, a, _ in broker.record if a == "connect"]
    assert len(connects) == 2
    assert 35 <= connects[1] <= 65, "between half the takeover backoff and all of it"
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert ENV in errors[0]["event"]
    assert "another runtime" in errors[0]["event"]


def test_unanswered_connect_is_dropped_and_retried(tmp_path: Path) -> None:
    agent, broker, check = make_agent(tmp_path)
    broker.answer_connect = False
    broker.at(15, agent.request_stop)
    agent.run()
    assert (10, "abort", None) in broker.record
    assert len([a for _, a, _ in broker.record if a == "connect"]) == 2
    assert check.calls == 0, "no takeover check for a connection that never came up"


def test_unreachable_broker_is_retried_with_growing_delays_and_stop_is_immediate(
    tmp_path: Path,
) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.refuse_connect = True
    broker.at(60, agent.request_stop)
    assert agent.run() == 0
    attempts = [t for t, a, _ in broker.record if a == "connect"]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) >= 5
    assert all(gap <= 30 for gap in gaps), "capped"
    assert gaps[-1] > gaps[0], "growing"
    assert broker.record[-1][1] == "connect", "nothing published, no DISCONNECT without a socket"
    assert [will["bdseq"] for _, a, will in broker.record if a == "connect"] == list(
        range(1, len(attempts) + 1)
    ), "a new bdseq for every attempt"


def test_foreign_offline_is_answered_at_once_but_at_most_once_a_second(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path)
    stale = json.dumps({"status": "offline", "env": ENV, "bdseq": 99, "reason": "connection-lost"})
    own = json.dumps({"status": "offline", "env": ENV, "bdseq": 1, "reason": "retired"})

    def deliver(payload: str) -> Callable[[], None]:
        return lambda: broker.pending.append(MessageIn(STATUS, payload.encode(), False))

    broker.at(3, deliver(stale))
    broker.at(3.2, deliver(stale))
    broker.at(5, deliver(own))
    broker.at(6, deliver("not json"))
    broker.at(15, agent.request_stop)
    agent.run()
    onlines = [(t, p["seq"]) for t, p in broker.published() if p["status"] == "online"]
    assert onlines == [(0, 0), (3, 1), (4, 2), (14, 3)]


def test_commands_are_answered_on_the_events_topic(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.at(1, lambda: broker.pending.append(MessageIn(CMD, b'{"type":"ping","id":"p1"}', False)))
    broker.at(2, lambda: broker.pending.append(MessageIn(CMD, b"\xff", False)))
    broker.at(3, agent.request_stop)
    agent.run()
    events = [p for _, p in broker.published(ROOT.events(ENV))]
    src = events[0]["src"]
    assert events[0] == {"type": "pong", "env": ENV, "seq": 1, "src": src, "ts": ANY, "cmd": "p1"}
    assert events[1]["type"] == "rejected"
    assert events[1]["seq"] == 2
    assert events[1]["reason"].startswith("not-json:")


def deliver(broker: ScriptedBroker, payload: dict[str, Any]) -> Callable[[], None]:
    return lambda: broker.pending.append(MessageIn(CMD, json.dumps(payload).encode(), False))


def test_an_update_is_acknowledged_and_its_interval_goes_out_at_once_and_stays(
    tmp_path: Path,
) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.at(3, deliver(broker, {"type": "update", "id": "u1", "interval": 4}))
    broker.at(4, deliver(broker, {"type": "update", "id": "u2", "config": {"colour": "red"}}))
    broker.at(12, agent.request_stop)
    agent.run()
    onlines = [(t, p["interval"]) for t, p in broker.published() if p["status"] == "online"]
    assert onlines == [(0, 10), (3, 4), (7, 4), (11, 4)]
    expiries = [d["expiry"] for _, a, d in broker.record if a == "publish" and d["retain"]]
    assert expiries[:2] == [30, 12], "the message expiry follows the interval"
    acks = [p for _, p in broker.published(EVENTS) if p["type"] == "ack"]
    assert [(a["cmd"], a["op"], a["ok"]) for a in acks] == [
        ("u1", "update", True),
        ("u2", "update", False),
    ]
    assert "colour" in acks[1]["detail"]

    again, broker, _ = make_agent(tmp_path)
    broker.at(1, again.request_stop)
    again.run()
    assert broker.published()[0][1]["interval"] == 4, "kept across a restart"


def test_retire_acks_then_offline_retired_then_clears_the_status_and_wipes(
    tmp_path: Path,
) -> None:
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("TOKEN=s3cr3t-value\n")
    secrets_file.chmod(0o600)
    state = tmp_path / "state"
    clock = ManualClock()
    broker = ScriptedBroker(clock)
    config = AgentConfig(env_id=ENV, state_dir=state, topic_root=ROOT, heartbeat_interval=10.0)
    agent = Agent(
        config,
        clock=clock,
        session=broker,
        store=BdseqStore(state),
        takeover_check=NoOtherRuntime(clock),
        secrets=load_secrets(secrets_file),
    )
    broker.at(2, deliver(broker, {"type": "retire", "id": "bye"}))
    assert agent.run() == 0
    assert agent.retired
    tail = [
        (a, d["topic"], d["payload"] and (d["payload"].get("type") or d["payload"]["status"]))
        if a == "publish"
        else (a, None, None)
        for t, a, d in broker.record
        if t >= 2
    ]
    assert tail == [
        ("publish", EVENTS, "ack"),
        ("publish", STATUS, "offline"),
        ("publish", STATUS, None),
        ("disconnect", None, None),
    ]
    offline = broker.published()[-2][1]
    assert offline == {"status": "offline", "env": ENV, "bdseq": 1, "reason": "retired"}
    assert all(d["retain"] for _, a, d in broker.record if a == "publish" and d["topic"] == STATUS)
    assert not secrets_file.exists()
    assert sorted(p.name for p in state.iterdir()) == ["retired"]
    with pytest.raises(EnvironmentRetired, match=f"environment {ENV} was retired on"):
        check_not_retired(state)
