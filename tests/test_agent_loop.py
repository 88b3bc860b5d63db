"""The agent's loop, exactly, over a ManualClock and a scripted stand-in for the broker:
what it publishes, in what order, and when."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from edgeplane.edge_agent.agent import Agent
from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.errors import EnvironmentRetired
from edgeplane.edge_agent.secrets import load_secrets
from edgeplane.edge_agent.session import MessageIn
from edgeplane.edge_agent.state import BdseqStore, check_not_retired
from edgeplane.shared.clock import ManualClock
from tests.support.command_key import PUBLIC_KEY, signed
from tests.support.logs import capture_logs
from tests.support.scripted_agent import (
    CMD,
    ENV,
    EVENTS,
    ROOT,
    STATUS,
    NoOtherRuntime,
    ScriptedBroker,
    make_agent,
)


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
def test_a_takeover_is_taken_back_at_once_and_said_then_a_second_means_a_long_backoff(
    tmp_path: Path, code: int, other_boot: str | None
) -> None:
    agent, broker, _ = make_agent(tmp_path, other_boot=other_boot, takeover_backoff=60.0)
    broker.at(5, lambda: broker.drop(code))
    broker.at(8, lambda: broker.drop(code))  # taken over again, soon after
    broker.at(200, agent.request_stop)
    with capture_logs() as logs:
        agent.run()
    connects = [t for t, a, _ in broker.record if a == "connect"]
    assert len(connects) == 3
    assert connects[1] - 5 < 0.5, "the first takeover is taken back at once"
    assert 8 + 30 <= connects[2] <= 8 + 60, "between half the takeover backoff and all of it"
    onlines = [(t, p) for t, p in broker.published() if p["status"] == "online"]
    said = [(t, p["taken_over_by"]) for t, p in onlines if "taken_over_by" in p]
    expected = other_boot or "unknown"
    assert said == [(connects[1], expected), (connects[2], expected)], "once per connection"
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 2
    assert ENV in errors[0]["event"]
    assert "another runtime" in errors[0]["event"]
    assert "at once" in errors[0]["event"]
    assert "waiting" in errors[1]["event"]


def test_a_takeover_long_after_the_last_is_taken_back_at_once_again(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path, other_boot="b0b0b0", takeover_backoff=60.0)
    broker.at(5, lambda: broker.drop(0x8E))
    broker.at(700, lambda: broker.drop(0x8E))  # after a connection that lasted
    broker.at(800, agent.request_stop)
    agent.run()
    connects = [t for t, a, _ in broker.record if a == "connect"]
    assert len(connects) == 3
    assert connects[2] - 700 < 0.5


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
    broker.at(
        1,
        lambda: broker.pending.append(
            MessageIn(CMD, signed({"type": "ping", "id": "p1"}, ENV), False)
        ),
    )
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
    return lambda: broker.pending.append(MessageIn(CMD, signed(payload, ENV), False))


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
    config = AgentConfig(
        env_id=ENV,
        state_dir=state,
        topic_root=ROOT,
        heartbeat_interval=10.0,
        command_key=PUBLIC_KEY,
    )
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


def test_a_stop_requested_while_the_loop_works_begins_at_once(tmp_path: Path) -> None:
    """A signal between the loop's step and its wait (here: during the heartbeat publish of
    t=20) must not leave the loop waiting without a deadline."""
    agent, broker, _ = make_agent(tmp_path)
    publish = broker.publish

    def publish_then_signal(topic: str, payload: bytes, **options: Any) -> int:
        signal_now = broker.now() == 20 and topic == STATUS and broker.answer_publish
        if signal_now:
            broker.answer_publish = False  # nothing else wakes the loop: no PUBACK comes
        mid = publish(topic, payload, **options)
        if signal_now:
            agent.request_stop()
        return mid

    broker.publish = publish_then_signal  # type: ignore[method-assign]
    assert agent.run() == 0
    statuses = [(t, p["status"]) for t, p in broker.published()]
    assert statuses[-2:] == [(20, "online"), (20, "offline")]
    assert broker.record[-1] == (25, "disconnect", None), "after the PUBACK's 5 s at most"
