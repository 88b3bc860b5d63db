"""The pure presence core, driven exactly with a ManualClock."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.presence import EnvRecord, Judgement, Presence, Transition
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import OfflineReason, OfflineStatus, OnlineStatus


class ScriptedFlaps:
    """Records what the core reports; hands out the edges a test queues."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, float]] = []
        self.restored: dict[str, tuple[list[float], bool]] = {}
        self.on_record: list[AlertEdge | None] = []
        self.on_expire: list[AlertEdge] = []
        self.deadline: float | None = None

    def record(self, env: str, at: float) -> AlertEdge | None:
        self.recorded.append((env, at))
        return self.on_record.pop(0) if self.on_record else None

    def expire(self, now: float) -> list[AlertEdge]:
        edges, self.on_expire = self.on_expire, []
        return edges

    def next_deadline(self) -> float | None:
        return self.deadline

    def restore(self, env: str, transitions: Iterable[float], flapping: bool) -> None:
        self.restored[env] = (list(transitions), flapping)

    def forget(self, env: str) -> None:
        self.restored.pop(env, None)


class ScriptedIdentity:
    def __init__(self) -> None:
        self.observed: list[tuple[str, str, float]] = []
        self.on_observe: list[AlertEdge | None] = []
        self.conflicts: set[str] = set()
        self.restored: list[tuple[str, bool, float]] = []
        self.on_expire: list[AlertEdge] = []

    def observe(self, env: str, boot: str, at: float, taken_over_by: str = "") -> AlertEdge | None:
        self.observed.append((env, boot, at))
        return self.on_observe.pop(0) if self.on_observe else None

    def conflict(self, env: str, at: float, why: str) -> AlertEdge | None:
        self.conflicts.add(env)
        return None

    def expire(self, now: float) -> list[AlertEdge]:
        edges, self.on_expire = self.on_expire, []
        return edges

    def next_deadline(self) -> float | None:
        return None

    def in_conflict(self, env: str) -> bool:
        return env in self.conflicts

    def restore(self, env: str, conflict: bool, at: float) -> None:
        self.restored.append((env, conflict, at))

    def forget(self, env: str) -> None:
        self.conflicts.discard(env)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def flaps() -> ScriptedFlaps:
    return ScriptedFlaps()


@pytest.fixture
def identity() -> ScriptedIdentity:
    return ScriptedIdentity()


@pytest.fixture
def core(clock: ManualClock, flaps: ScriptedFlaps, identity: ScriptedIdentity) -> Presence:
    return Presence(clock, flaps, identity)


def online(env: str = "edge-1", bdseq: int = 1, seq: int = 0, interval: float = 10.0,
           boot: str = "boot-a") -> OnlineStatus:  # fmt: skip
    return OnlineStatus(env=env, bdseq=bdseq, seq=seq, interval=interval, boot=boot)


def offline(env: str = "edge-1", bdseq: int = 1,
            reason: OfflineReason = "connection-lost") -> OfflineStatus:  # fmt: skip
    return OfflineStatus(env=env, bdseq=bdseq, reason=reason)


def moves(judgement: Judgement) -> list[tuple[str, str, str]]:
    return [(t.from_status, t.to_status, t.reason) for t in judgement.transitions]


def test_first_heartbeat_brings_an_environment_online(core: Presence, clock: ManualClock) -> None:
    judgement = core.on_status(online())
    assert moves(judgement) == [("unknown", "online", "heartbeat")]
    assert judgement.transitions[0].at == clock.time()
    assert [(v.env, v.status, v.since) for v in judgement.views] == [
        ("edge-1", "online", clock.time())
    ]
    assert judgement.records[-1].last_seen == clock.time()


def test_further_heartbeats_change_nothing_but_last_seen(
    core: Presence, clock: ManualClock
) -> None:
    core.on_status(online())
    since = clock.time()
    clock.advance(10)
    judgement = core.on_status(online(seq=1))
    assert judgement.transitions == []
    assert judgement.views == []
    assert judgement.records[-1].last_seen == clock.time()
    record = core.get("edge-1")
    assert record is not None
    assert record.since == since


def test_offline_with_the_current_bdseq_takes_its_reason(core: Presence) -> None:
    core.on_status(online(bdseq=4))
    judgement = core.on_status(offline(bdseq=4, reason="shutdown"))
    assert moves(judgement) == [("online", "offline", "shutdown")]
    assert judgement.views[0].reason == "shutdown"
    assert core.heartbeat_deadline("edge-1") is None


@pytest.mark.parametrize("reason", ["connection-lost", "shutdown", "retired"])
def test_each_offline_reason_is_kept(core: Presence, reason: OfflineReason) -> None:
    core.on_status(online())
    assert moves(core.on_status(offline(reason=reason))) == [("online", "offline", reason)]


def test_stale_will_after_a_quick_reconnect_changes_nothing(core: Presence) -> None:
    core.on_status(online(bdseq=7))
    core.on_status(online(bdseq=8))  # reconnected before the old will came
    judgement = core.on_status(offline(bdseq=7))
    assert judgement.stale
    assert not judgement
    assert core.stale == 1
    record = core.get("edge-1")
    assert record is not None
    assert record.status == "online"
    assert record.bdseq == 8


def test_offline_for_an_environment_never_seen_is_believed(core: Presence) -> None:
    judgement = core.on_status(offline(bdseq=3))
    assert moves(judgement) == [("unknown", "offline", "connection-lost")]


def test_heartbeat_silence_over_three_intervals_is_offline_and_next_heartbeat_is_back(
    core: Presence, clock: ManualClock
) -> None:
    core.on_status(online(interval=5))
    assert core.seconds_until_next() == pytest.approx(15)
    clock.advance(14.99)
    assert not core.tick()
    clock.advance(0.02)
    timed_out = core.tick()
    assert moves(timed_out) == [("online", "offline", "heartbeat-timeout")]
    assert timed_out.views[0].status == "offline"
    assert core.seconds_until_next() is None
    clock.advance(100)
    back = core.on_status(online(seq=1, interval=5))
    assert moves(back) == [("offline", "online", "heartbeat")]


def test_each_heartbeat_moves_the_deadline(core: Presence, clock: ManualClock) -> None:
    core.on_status(online(interval=10))
    for seq in range(1, 5):
        clock.advance(25)
        assert not core.tick().transitions
        core.on_status(online(seq=seq, interval=10))
    clock.advance(30.5)
    assert moves(core.tick()) == [("online", "offline", "heartbeat-timeout")]


def test_a_new_interval_takes_effect_at_once(core: Presence, clock: ManualClock) -> None:
    core.on_status(online(interval=60))
    core.on_status(online(seq=1, interval=1))
    clock.advance(3.5)
    assert moves(core.tick()) == [("online", "offline", "heartbeat-timeout")]


def test_will_after_a_heartbeat_timeout_changes_nothing(core: Presence, clock: ManualClock) -> None:
    core.on_status(online(bdseq=2, interval=1))
    clock.advance(4)
    core.tick()
    judgement = core.on_status(offline(bdseq=2))
    assert not judgement.transitions
    assert not judgement.views
    assert not judgement.stale


def test_tick_work_is_limited_to_what_is_due(core: Presence, clock: ManualClock) -> None:
    for n in range(1000):
        core.on_status(online(env=f"edge-{n}", interval=10 + n))
    clock.advance(31)
    assert [t.env for t in core.tick().transitions] == ["edge-0"]


def test_transitions_feed_the_flap_detector_by_wall_time(
    core: Presence, clock: ManualClock, flaps: ScriptedFlaps
) -> None:
    core.on_status(online())  # unknown -> online is not a flap
    clock.advance(1)
    core.on_status(offline())
    assert flaps.recorded == [("edge-1", clock.time())]


def test_a_flapping_edge_becomes_an_alert_and_a_view(
    core: Presence, clock: ManualClock, flaps: ScriptedFlaps
) -> None:
    core.on_status(online())
    raised = AlertEdge("edge-1", "flapping", "raised", clock.time(), "6 transitions")
    flaps.on_record.append(raised)
    judgement = core.on_status(offline())
    assert judgement.alerts == [raised]
    assert [(v.status, v.flapping) for v in judgement.views] == [("offline", True)]
    flaps.on_expire.append(AlertEdge("edge-1", "flapping", "cleared", clock.time(), ""))
    cleared = core.tick()
    assert [a.state for a in cleared.alerts] == ["cleared"]
    assert [(v.status, v.flapping) for v in cleared.views] == [("offline", False)]
    record = core.get("edge-1")
    assert record is not None
    assert not record.flapping


def test_flap_deadline_is_scheduled_in_wall_time(
    core: Presence, clock: ManualClock, flaps: ScriptedFlaps
) -> None:
    flaps.deadline = clock.time() + 42
    assert core.seconds_until_next() == pytest.approx(42)


def test_online_boots_go_to_the_identity_watch(
    core: Presence, clock: ManualClock, identity: ScriptedIdentity
) -> None:
    core.on_status(online(boot="a"))
    raised = AlertEdge("edge-1", "identity-conflict", "raised", clock.time(), "boots a, b")
    identity.on_observe.extend([None, raised])
    core.on_status(online(seq=1, boot="a"))
    judgement = core.on_status(online(bdseq=2, boot="b"))
    assert judgement.alerts == [raised]
    # no view for the conflict; only the link figure: a new connection, a reconnect
    assert [(v.status, v.reconnects_1h) for v in judgement.views] == [("online", 1)]
    assert [boot for _, boot, _ in identity.observed] == ["a", "a", "b"]
    record = core.get("edge-1")
    assert record is not None
    assert record.conflict


def test_the_same_retained_heartbeat_again_is_no_news(core: Presence, clock: ManualClock) -> None:
    core.on_status(online(seq=5))
    deadline = core.heartbeat_deadline("edge-1")
    clock.advance(3)
    assert not core.on_status(online(seq=5), retained=True)
    assert core.heartbeat_deadline("edge-1") == deadline


def stored(env: str, status: str, *, bdseq: int = 1, seq: int = 3, interval: float = 10,
           flapping: bool = False, conflict: bool = False) -> EnvRecord:  # fmt: skip
    assert status in ("online", "offline", "unknown")
    return EnvRecord(
        env,
        status,  # type: ignore[arg-type]
        since=1.0,
        reason="heartbeat" if status == "online" else "shutdown",
        last_seen=1.0,
        bdseq=bdseq,
        seq=seq,
        boot="boot-a",
        interval=interval,
        flapping=flapping,
        conflict=conflict,
    )


def test_restore_then_the_same_retained_statuses_changes_nothing(
    core: Presence, flaps: ScriptedFlaps
) -> None:
    core.restore([stored("a", "online"), stored("b", "offline", flapping=True)], {"b": [5.0, 6.0]})
    assert flaps.restored == {"b": ([5.0, 6.0], True)}  # "a" is steady: nothing to restore
    first = core.on_status(online("a", bdseq=1, seq=3), retained=True)
    second = core.on_status(offline("b", bdseq=1, reason="shutdown"), retained=True)
    assert not first.transitions
    assert not first.views
    assert not first.alerts
    assert not second.transitions
    assert not second.views
    assert not second.alerts
    assert flaps.recorded == []


def test_restored_online_environment_gets_a_fresh_deadline(
    core: Presence, clock: ManualClock
) -> None:
    core.restore([stored("a", "online", interval=10)])
    assert core.heartbeat_deadline("a") == clock.monotonic() + 30
    clock.advance(30.5)
    assert moves(core.tick()) == [("online", "offline", "heartbeat-timeout")]


def test_what_changed_while_down_is_marked_as_such(core: Presence) -> None:
    core.restore([stored("a", "online", bdseq=4), stored("b", "offline", bdseq=2)])
    went = core.on_status(offline("a", bdseq=4), retained=True)
    came = core.on_status(online("b", bdseq=3, seq=0), retained=True)
    assert went.transitions == [
        Transition("a", "online", "offline", "connection-lost", went.transitions[0].at, True)
    ]
    assert [(t.to_status, t.during_downtime) for t in came.transitions] == [("online", True)]


def test_live_heartbeat_after_restore_with_new_seq_is_no_transition(core: Presence) -> None:
    core.restore([stored("a", "online", bdseq=4, seq=3)])
    judgement = core.on_status(online("a", bdseq=4, seq=9), retained=True)
    assert not judgement.transitions
    assert not judgement.views


def test_restored_conflict_goes_back_to_the_identity_watch(
    core: Presence, clock: ManualClock, identity: ScriptedIdentity
) -> None:
    core.restore([stored("a", "online", conflict=True), stored("b", "online")])
    assert identity.restored == [("a", True, clock.time())]
    cleared = AlertEdge("a", "identity-conflict", "cleared", clock.time(), "")
    identity.on_expire.append(cleared)
    assert core.tick().alerts == [cleared]
    record = core.get("a")
    assert record is not None
    assert not record.conflict


def test_rearm_gives_online_environments_a_fresh_deadline(
    core: Presence, clock: ManualClock
) -> None:
    core.on_status(online(interval=10))
    clock.advance(29)
    core.rearm()
    clock.advance(29)
    assert not core.tick().transitions


def test_timer_heap_skips_stale_entries_and_stays_small() -> None:
    heap = TimerHeap()
    for step in range(10_000):
        heap.set(f"env-{step % 10}", float(step))
    assert len(heap) == 10
    assert heap.heap_size() <= 2 * 10 + 64 + 1
    assert heap.next_deadline() == 9990.0
    heap.cancel("env-0")
    assert heap.pop_due(9995.0) == ["env-1", "env-2", "env-3", "env-4", "env-5"]
    assert heap.pop_due(9994.0) == []
    assert "env-9" in heap
    assert heap.deadline("env-9") == 9999.0


def test_restart_with_the_real_detectors_raises_nothing_again_and_clears_once() -> None:
    clock = ManualClock()
    before = Presence(clock, FlapDetector(window=100, high=4, low=1), IdentityWatch())
    edges: list[AlertEdge] = []
    times: list[float] = []
    edges += before.on_status(online(bdseq=0)).alerts
    for bdseq in range(3):  # 6 transitions: flapping
        clock.advance(1)
        went = before.on_status(offline(bdseq=bdseq))
        clock.advance(1)
        came = before.on_status(online(bdseq=bdseq + 1))
        edges += went.alerts + came.alerts
        times += [t.at for t in went.transitions + came.transitions]
    assert [(e.kind, e.state) for e in edges] == [("flapping", "raised")]
    stored = [r.snapshot() for r in before.records()]

    clock.advance(5)  # the controller restarts with fresh detectors
    after = Presence(clock, FlapDetector(window=100, high=4, low=1), IdentityWatch())
    after.restore(stored, {"edge-1": times})
    again = after.on_status(online(bdseq=3, seq=0), retained=True)
    assert (again.transitions, again.alerts, again.views) == ([], [], [])
    record = after.get("edge-1")
    assert record is not None
    assert record.flapping

    clock.advance(100)
    cleared = after.tick()
    assert [(e.kind, e.state) for e in cleared.alerts] == [("flapping", "cleared")]
    assert [v.flapping for v in cleared.views] == [False]
    clock.advance(1000)
    assert after.tick().alerts == []


# --- properties over arbitrary message sequences ---------------------------------------------
step = st.one_of(
    st.tuples(st.just("online"), st.integers(0, 3), st.sampled_from(["a", "b"])),
    st.tuples(st.just("offline"), st.integers(0, 3), st.sampled_from(["shutdown", "retired"])),
    st.tuples(st.just("wait"), st.floats(0.0, 40.0), st.just("")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, max_size=60), st.booleans())
def test_any_sequence_keeps_the_judgement_consistent(
    steps: list[tuple[str, Any, str]], retained: bool
) -> None:
    clock = ManualClock()
    core = Presence(clock, FlapDetector(window=60, high=4, low=1), IdentityWatch(60, 20))
    status = "unknown"
    shown: tuple[object, ...] | None = None  # the last view published
    raised: dict[str, int] = {"flapping": 0, "identity-conflict": 0}
    seq = 0
    for kind, value, extra in steps:
        if kind == "online":
            seq += 1
            judgement = core.on_status(online(bdseq=value, seq=seq, boot=extra), retained=retained)
        elif kind == "offline":
            reason = cast(OfflineReason, extra)
            judgement = core.on_status(offline(bdseq=value, reason=reason), retained=retained)
        else:
            clock.advance(value)
            judgement = core.tick()
        for transition in judgement.transitions:
            assert transition.from_status == status != transition.to_status
            assert transition.at == clock.time()
            status = transition.to_status
        for edge in judgement.alerts:  # edges alternate per kind, starting with raised
            raised[edge.kind] += 1 if edge.state == "raised" else -1
            assert raised[edge.kind] in (0, 1)
        for view in judgement.views:  # a view goes out only for a change people see
            seen = (view.status, view.flapping, view.missed_pct, view.reconnects_1h)
            assert seen != shown
            shown = seen
        record = core.get("edge-1")
        if record is not None:
            assert record.status == status
            assert shown is not None
            assert (record.status, record.flapping) == shown[:2]
            assert (core.heartbeat_deadline("edge-1") is not None) == (status == "online")
        if judgement.stale:
            assert not judgement
