"""The identity-conflict watch, driven by exact times, and checked against a simple model."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.shared.clock import ManualClock


def observe_all(
    watch: IdentityWatch, env: str, sequence: Sequence[tuple[str, float]]
) -> list[AlertEdge]:
    edges = [watch.observe(env, boot, at) for boot, at in sequence]
    return [edge for edge in edges if edge is not None]


def heartbeats(boot: str, start: float, count: int, every: float = 10.0) -> list[tuple[str, float]]:
    return [(boot, start + every * i) for i in range(count)]


def test_a_restart_is_not_a_conflict() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    sequence = heartbeats("boot-a", 0.0, 10) + heartbeats("boot-b", 100.0, 10)
    assert observe_all(watch, "dev-a", sequence) == []
    assert not watch.in_conflict("dev-a")
    assert watch.next_deadline() is None
    assert watch.expire(math.inf) == []


def test_several_restarts_in_a_row_are_not_a_conflict_by_default() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    sequence = [(f"boot-{i}", 10.0 * i) for i in range(12)]
    assert observe_all(watch, "dev-a", sequence) == []


def test_alternating_boots_raise_once() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    assert watch.observe("dev-a", "boot-a", 0.0) is None
    assert watch.observe("dev-a", "boot-b", 5.0) is None
    edge = watch.observe("dev-a", "boot-a", 10.0)
    assert edge is not None
    assert (edge.env, edge.kind, edge.state, edge.at) == (
        "dev-a",
        "identity-conflict",
        "raised",
        10.0,
    )
    assert "boot-a" in edge.detail
    assert watch.in_conflict("dev-a")
    more = [("boot-b" if i % 2 else "boot-a", 15.0 + 5 * i) for i in range(50)]
    assert observe_all(watch, "dev-a", more) == []


def test_cleared_once_after_one_boot_id_for_quiet_seconds() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    observe_all(watch, "dev-a", [("a", 0.0), ("b", 5.0), ("a", 10.0), ("b", 20.0)])
    # boot b alone from 20 on: heartbeats of the same boot do not postpone the clear.
    assert observe_all(watch, "dev-a", heartbeats("b", 30.0, 20)) == []
    assert watch.next_deadline() == 320.0
    assert watch.expire(319.9) == []
    assert watch.in_conflict("dev-a")
    [edge] = watch.expire(320.0)
    assert (edge.state, edge.at, edge.kind) == ("cleared", 320.0, "identity-conflict")
    assert not watch.in_conflict("dev-a")
    assert watch.next_deadline() is None
    assert watch.expire(math.inf) == []


def test_a_silent_environment_is_cleared_too() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    observe_all(watch, "dev-a", [("a", 0.0), ("b", 5.0), ("a", 10.0)])
    assert [(e.state, e.at) for e in watch.expire(5000.0)] == [("cleared", 310.0)]


def test_no_stream_during_a_long_conflict() -> None:
    clock = ManualClock()
    watch = IdentityWatch(window=600, quiet=300)
    edges: list[AlertEdge] = []
    # Two runtimes taking the session from each other every 30 s for two hours.
    for boot in itertools.islice(itertools.cycle(["runtime-1", "runtime-2"]), 240):
        clock.advance(30)
        edge = watch.observe("prod-x", boot, clock.time())
        edges += [edge] if edge else []
        edges += watch.expire(clock.time())
    clock.advance(3600)
    edges += watch.expire(clock.time())
    assert [e.state for e in edges] == ["raised", "cleared"]


def test_a_boot_coming_back_after_the_window_is_not_a_conflict() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    assert observe_all(watch, "dev-a", [("a", 0.0), ("b", 1.0), ("a", 600.0)]) == []
    within = IdentityWatch(window=600, quiet=300)
    assert len(observe_all(within, "dev-a", [("a", 0.0), ("b", 1.0), ("a", 599.0)])) == 1


def test_a_new_episode_raises_again() -> None:
    watch = IdentityWatch(window=600, quiet=60)
    first = observe_all(watch, "dev-a", [("a", 0.0), ("b", 1.0), ("a", 2.0)])
    cleared = watch.expire(100.0)
    second = observe_all(watch, "dev-a", [("b", 200.0), ("a", 201.0)])
    cleared += watch.expire(1000.0)
    assert [e.state for e in first + cleared[:1] + second + cleared[1:]] == [
        "raised",
        "cleared",
        "raised",
        "cleared",
    ]


def test_a_late_timer_does_not_lose_or_reorder_edges() -> None:
    watch = IdentityWatch(window=600, quiet=60)
    observe_all(watch, "dev-a", [("a", 0.0), ("b", 1.0), ("a", 2.0)])
    # The clear fell due at 62; the next message, a comeback, arrives before the timer ran.
    edge = watch.observe("dev-a", "b", 100.0)
    assert edge is not None
    assert (edge.state, edge.at) == ("cleared", 62.0)
    assert watch.in_conflict("dev-a")
    assert watch.next_deadline() == 100.0
    assert [(e.state, e.at) for e in watch.expire(100.0)] == [("raised", 100.0)]
    assert [(e.state, e.at) for e in watch.expire(1000.0)] == [("cleared", 160.0)]


def test_environments_are_independent() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    observe_all(watch, "env-1", [("a", 0.0), ("b", 1.0), ("a", 2.0)])
    observe_all(watch, "env-2", heartbeats("c", 0.0, 5) + heartbeats("d", 60.0, 5))
    assert watch.in_conflict("env-1")
    assert not watch.in_conflict("env-2")
    assert [e.env for e in watch.expire(math.inf)] == ["env-1"]


def test_restore_emits_nothing_and_clears_after_quiet() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    watch.restore("dev-a", conflict=True, at=100.0)
    assert watch.in_conflict("dev-a")
    assert watch.observe("dev-a", "a", 110.0) is None  # a restored episode is not raised again
    assert watch.expire(409.0) == []
    assert [(e.state, e.at) for e in watch.expire(410.0)] == [("cleared", 410.0)]


def test_restore_without_conflict_changes_nothing_visible() -> None:
    watch = IdentityWatch()
    watch.restore("dev-a", conflict=False, at=100.0)
    assert not watch.in_conflict("dev-a")
    assert watch.next_deadline() is None


def test_forget_drops_the_episode_without_an_edge() -> None:
    watch = IdentityWatch()
    observe_all(watch, "dev-a", [("a", 0.0), ("b", 1.0), ("a", 2.0)])
    watch.forget("dev-a")
    watch.forget("never-seen")
    assert not watch.in_conflict("dev-a")
    assert watch.next_deadline() is None
    assert watch.expire(math.inf) == []


def test_many_distinct_boots_raise_when_asked_to() -> None:
    watch = IdentityWatch(window=600, quiet=300, max_boots=3)
    sequence = [("a", 0.0), ("b", 10.0), ("c", 20.0)]
    assert observe_all(watch, "dev-a", sequence) == []
    edge = watch.observe("dev-a", "d", 30.0)
    assert edge is not None
    assert edge.state == "raised"
    assert "4 boot ids" in edge.detail


def test_memory_and_detail_stay_bounded() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    for i in range(1000):
        watch.observe("dev-a", f"{i:0>256}", float(i))
    assert len(watch._envs["dev-a"].last_seen) <= 16
    edge = watch.observe("dev-a", f"{998:0>256}", 1000.0)
    assert edge is not None
    assert len(edge.detail) <= 256


def test_clock_stepping_back_counts_at_the_newest_time() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    observe_all(watch, "dev-a", [("a", 1000.0), ("b", 1001.0)])
    edge = watch.observe("dev-a", "a", 500.0)
    assert edge is not None
    assert edge.at == 1001.0


@pytest.mark.parametrize(
    ("window", "quiet", "max_boots", "words"),
    [
        (0.0, 300.0, None, "window"),
        (math.nan, 300.0, None, "window"),
        (600.0, 0.0, None, "quiet"),
        (600.0, -5.0, None, "quiet"),
        (600.0, 300.0, 1, "max_boots"),
        (600.0, 300.0, 99, "max_boots"),
    ],
)
def test_bad_constructor_arguments_are_refused_clearly(
    window: float, quiet: float, max_boots: int | None, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        IdentityWatch(window=window, quiet=quiet, max_boots=max_boots)


# --- property test against a model ---------------------------------------------------------
def model_edges(
    observations: Sequence[tuple[str, float]], window: float, quiet: float
) -> list[tuple[str, float]]:
    """Raised when a boot id seen within the window comes back after another one; cleared
    ``quiet`` seconds after the last change of boot id."""
    edges: list[tuple[str, float]] = []
    conflict, since = False, 0.0
    for i, (boot, at) in enumerate(observations):
        if conflict and since + quiet <= at:
            conflict = False
            edges.append(("cleared", since + quiet))
        if i and boot != observations[i - 1][0]:
            since = at
            earlier = [t for b, t in observations[:i] if b == boot]
            if earlier and at - window < max(earlier) and not conflict:
                conflict = True
                edges.append(("raised", at))
    if conflict:
        edges.append(("cleared", since + quiet))
    return edges


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["x", "y", "z"]),
            st.sampled_from([0.0, 1.0, 5.0, 20.0, 60.0]),
            st.booleans(),
        ),
        max_size=80,
    ),
    window=st.sampled_from([10.0, 50.0, 200.0]),
    quiet=st.sampled_from([5.0, 30.0, 100.0]),
)
def test_edges_match_the_model_for_any_boot_sequence(
    steps: list[tuple[str, str, float, bool]], window: float, quiet: float
) -> None:
    watch = IdentityWatch(window=window, quiet=quiet)
    delivered: list[tuple[AlertEdge, float]] = []
    seen: dict[str, list[tuple[str, float]]] = {}
    now, skipped_last = 0.0, False
    for env, boot, gap, timer_runs in steps:
        now += gap
        edge = watch.observe(env, boot, now)
        seen.setdefault(env, []).append((boot, now))
        if edge is not None:
            delivered.append((edge, now))
        # The controller's timer may lag, but not forever: never skip twice in a row.
        if timer_runs or skipped_last:
            delivered += [(e, now) for e in watch.expire(now)]
        skipped_last = not (timer_runs or skipped_last)
    delivered += [(e, math.inf) for e in watch.expire(math.inf)]
    assert watch.next_deadline() is None

    assert all(edge.at <= handed_out for edge, handed_out in delivered)
    for env, observations in seen.items():
        got = [(e.state, e.at) for e, _ in delivered if e.env == env]
        assert got == model_edges(observations, window, quiet)
        assert [state for state, _ in got] == ["raised", "cleared"] * (len(got) // 2)


# --- a state machine over the whole interface ----------------------------------------------
class IdentityMachine(RuleBasedStateMachine):
    """Any interleaving of observe, expire, restore and forget keeps the promises: edges
    alternate per environment, nothing comes early, and the state agrees with the edges."""

    def __init__(self) -> None:
        super().__init__()
        self.watch = IdentityWatch(window=30.0, quiet=10.0)
        self.now = 0.0
        self.last_state: dict[str, str] = {}

    def take(self, edges: Sequence[AlertEdge]) -> None:
        for edge in edges:
            assert edge.at <= self.now
            assert edge.kind == "identity-conflict"
            assert edge.state != self.last_state.get(edge.env, "cleared"), edge
            self.last_state[edge.env] = edge.state

    @rule(
        env=st.sampled_from(["a", "b"]),
        boot=st.sampled_from(["x", "y", "z"]),
        gap=st.sampled_from([0.0, 1.0, 6.0, 31.0]),
    )
    def observe(self, env: str, boot: str, gap: float) -> None:
        self.now += gap
        edge = self.watch.observe(env, boot, self.now)
        self.take([edge] if edge else [])

    @rule(gap=st.sampled_from([0.0, 0.5, 5.0, 10.0, 100.0]))
    def expire(self, gap: float) -> None:
        self.now += gap
        deadline = self.watch.next_deadline()
        edges = self.watch.expire(self.now)
        if deadline is None or deadline > self.now:
            assert edges == []
        self.take(edges)
        after = self.watch.next_deadline()
        assert after is None or after > self.now
        for env, state in self.last_state.items():
            assert self.watch.in_conflict(env) == (state == "raised")

    @rule(env=st.sampled_from(["a", "b"]), conflict=st.booleans())
    def restore(self, env: str, conflict: bool) -> None:
        self.watch.restore(env, conflict, self.now)
        self.last_state[env] = "raised" if conflict else "cleared"

    @rule(env=st.sampled_from(["a", "b"]))
    def forget(self, env: str) -> None:
        self.watch.forget(env)
        self.last_state.pop(env, None)
        assert not self.watch.in_conflict(env)


TestIdentityMachine = IdentityMachine.TestCase
TestIdentityMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_an_agent_saying_another_boot_took_its_session_raises_at_once_and_clears_later() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    assert observe_all(watch, "dev-a", heartbeats("boot-a", 0.0, 100)) == []
    # the controller never saw boot-b online; boot-a says boot-b took its session over
    raised = watch.observe("dev-a", "boot-a", 1000.0, taken_over_by="boot-b")
    assert raised is not None
    assert (raised.state, raised.at) == ("raised", 1000.0)
    assert "'boot-b' took its session over" in raised.detail
    assert watch.observe("dev-a", "boot-a", 1010.0, taken_over_by="boot-b") is None  # once
    # quiet counts from the last report, not from when boot-a first appeared
    assert watch.expire(1309.0) == []
    [cleared] = watch.expire(1310.0)
    assert (cleared.state, cleared.at) == ("cleared", 1310.0)
    # its own boot id named is no report of anything
    assert watch.observe("dev-a", "boot-a", 1400.0, taken_over_by="boot-a") is None


def test_a_conflict_shown_otherwise_is_raised_once_and_cleared_after_quiet() -> None:
    watch = IdentityWatch(window=600, quiet=300)
    watch.observe("edge-a", "boot-1", 0.0)
    raised = watch.conflict("edge-a", 10.0, "a box key other than the pinned one")
    assert raised is not None
    assert (raised.kind, raised.state, raised.at) == ("identity-conflict", "raised", 10.0)
    assert watch.conflict("edge-a", 20.0, "again") is None  # one episode, not a stream
    assert watch.expire(300.0) == []  # quiet counts from the latest sign
    [cleared] = watch.expire(320.0)
    assert (cleared.state, cleared.at) == ("cleared", 320.0)
