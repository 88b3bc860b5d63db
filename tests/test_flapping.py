"""The flap detector, driven by exact times, and checked against a brute-force model."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.clock import ManualClock


def states(edges: Sequence[AlertEdge]) -> list[tuple[str, float]]:
    return [(edge.state, edge.at) for edge in edges]


def flap_six(detector: FlapDetector, env: str = "dev-a", start: float = 0.0) -> list[AlertEdge]:
    """Six transitions ten seconds apart; returns the edges they caused."""
    edges = [detector.record(env, start + 10.0 * i) for i in range(6)]
    return [edge for edge in edges if edge is not None]


# --- raising -----------------------------------------------------------------------------
def test_raised_exactly_at_the_high_th_transition() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    for i in range(5):
        assert detector.record("dev-a", 10.0 * i) is None
        assert not detector.is_flapping("dev-a")
    edge = detector.record("dev-a", 50.0)
    assert edge == AlertEdge("dev-a", "flapping", "raised", 50.0, "6 transitions within 600 s")
    assert detector.is_flapping("dev-a")


def test_no_second_raise_while_still_flapping() -> None:
    detector = FlapDetector()
    assert states(flap_six(detector)) == [("raised", 50.0)]
    for i in range(20):
        assert detector.record("dev-a", 60.0 + i) is None
    assert detector.expire(100.0) == []
    assert detector.is_flapping("dev-a")


def test_transitions_spread_wider_than_the_window_never_raise() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    # Six transitions, but the first has left the window when the sixth comes.
    for i in range(6):
        assert detector.record("dev-a", 120.0 * i) is None
    assert detector.next_deadline() is None


def test_a_transition_leaves_the_window_exactly_window_seconds_later() -> None:
    detector = FlapDetector(window=60, high=3, low=1)
    detector.record("dev-a", 0.0)
    detector.record("dev-a", 30.0)
    assert detector.count("dev-a", 59.999) == 2
    assert detector.count("dev-a", 60.0) == 1
    assert detector.record("dev-a", 60.0) is None  # the one at 0 is out: count is 2
    assert detector.record("dev-a", 60.0) is not None  # 30, 60, 60: three


# --- clearing ----------------------------------------------------------------------------
def test_cleared_once_when_old_transitions_slide_out() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    flap_six(detector)  # transitions at 0, 10, ..., 50
    # The count falls to 2 when the transition at 30 leaves the window.
    assert detector.next_deadline() == 630.0
    assert detector.expire(629.999) == []
    assert detector.is_flapping("dev-a")
    assert detector.expire(630.0) == [
        AlertEdge("dev-a", "flapping", "cleared", 630.0, "transitions within 600 s fell to 2")
    ]
    assert not detector.is_flapping("dev-a")
    assert detector.next_deadline() is None
    assert detector.expire(100_000.0) == []


def test_cleared_edge_carries_the_moment_the_count_fell_not_when_expire_ran() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    flap_six(detector)
    assert states(detector.expire(5000.0)) == [("cleared", 630.0)]


def test_new_transitions_postpone_the_clearing() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    flap_six(detector)
    assert detector.record("dev-a", 100.0) is None
    # Newest three are now 40, 50, 100: the count reaches 2 when 40 leaves.
    assert detector.next_deadline() == 640.0
    assert detector.expire(635.0) == []
    assert states(detector.expire(640.0)) == [("cleared", 640.0)]


def test_window_size_sets_the_clearing_time() -> None:
    detector = FlapDetector(window=60, high=4, low=0)
    for t in (0.0, 1.0, 2.0, 3.0):
        detector.record("dev-a", t)
    # low=0: cleared only when the newest transition has left the window too.
    assert detector.next_deadline() == 63.0
    assert detector.expire(62.0) == []
    assert states(detector.expire(63.0)) == [("cleared", 63.0)]


def test_hysteresis_keeps_flapping_between_low_and_high() -> None:
    detector = FlapDetector(window=100, high=4, low=1)
    for t in (0.0, 1.0, 2.0, 3.0):
        detector.record("dev-a", t)
    # At 101.5 only the transitions at 2 and 3 are left: below high, above low.
    assert detector.expire(101.5) == []
    assert detector.count("dev-a", 101.5) == 2
    assert detector.is_flapping("dev-a")
    assert states(detector.expire(102.0)) == [("cleared", 102.0)]


def test_re_raised_for_a_new_episode() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    detector = FlapDetector(window=600, high=6, low=2)
    edges: list[AlertEdge] = []
    for _episode in range(3):
        for _ in range(6):
            clock.advance(5)
            edge = detector.record("prod-x", clock.time())
            edges += [edge] if edge else []
        clock.advance(3600)
        edges += detector.expire(clock.time())
    assert [edge.state for edge in edges] == ["raised", "cleared"] * 3
    assert all(edge.kind == "flapping" and edge.env == "prod-x" for edge in edges)


def test_a_late_timer_does_not_lose_or_reorder_the_clear() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    flap_six(detector)
    # The controller's timer for 630 has not fired yet when the next transition comes.
    edge = detector.record("dev-a", 700.0)
    assert edge is not None
    assert (edge.state, edge.at) == ("cleared", 630.0)
    assert detector.expire(700.0) == []


def test_clear_and_new_raise_in_one_record_come_out_in_order() -> None:
    detector = FlapDetector(window=10, high=3, low=2)
    for t in (0.0, 1.0, 2.0):
        detector.record("dev-a", t)
    # The count fell to 2 at 10 (timer not yet run); the transition at 10.5 makes it 3.
    edge = detector.record("dev-a", 10.5)
    assert edge is not None
    assert (edge.state, edge.at) == ("cleared", 10.0)
    assert detector.is_flapping("dev-a")
    assert detector.next_deadline() == 10.5
    assert states(detector.expire(10.5)) == [("raised", 10.5)]
    assert detector.next_deadline() == 11.0  # the count falls to 2 when 1.0 leaves
    assert states(detector.expire(12.0)) == [("cleared", 11.0)]


def test_edges_that_pile_up_without_expire_stay_bounded_and_alternating() -> None:
    detector = FlapDetector(window=10, high=2, low=1)
    got: list[AlertEdge] = []
    # Bursts of two transitions, each burst after the previous episode's clear time.
    for burst in range(50):
        for t in (burst * 100.0, burst * 100.0 + 1):
            edge = detector.record("dev-a", t)
            got += [edge] if edge else []
    got += detector.expire(math.inf)
    assert got[0].state == "raised"
    assert all(a.state != b.state for a, b in itertools.pairwise(got))
    assert got[-1].state == "cleared"


def test_clock_stepping_back_counts_at_the_newest_time() -> None:
    detector = FlapDetector(window=100, high=3, low=0)
    detector.record("dev-a", 500.0)
    detector.record("dev-a", 400.0)  # wall clock stepped back
    edge = detector.record("dev-a", 450.0)
    assert edge is not None
    assert edge.at == 500.0
    assert detector.next_deadline() == 600.0


# --- several environments, restore, forget -----------------------------------------------
def test_environments_are_independent_and_expire_in_time_order() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    flap_six(detector, "env-late", start=100.0)
    flap_six(detector, "env-early", start=0.0)
    flap_six(detector, "env-quiet", start=0.0)
    detector.forget("env-quiet")
    assert detector.next_deadline() == 630.0
    edges = detector.expire(1000.0)
    assert [(e.env, e.state, e.at) for e in edges] == [
        ("env-early", "cleared", 630.0),
        ("env-late", "cleared", 730.0),
    ]


def test_restore_emits_nothing_and_keeps_the_episode() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    detector.restore("dev-a", [50.0, 0.0, 10.0, 20.0, 30.0, 40.0], flapping=True)
    assert detector.is_flapping("dev-a")
    assert detector.record("dev-a", 60.0) is None  # no second raise
    assert detector.next_deadline() == 640.0
    assert states(detector.expire(640.0)) == [("cleared", 640.0)]


def test_restore_of_an_episode_that_ended_while_down_clears_at_once() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    detector.restore("dev-a", [10.0], flapping=True)
    assert detector.is_flapping("dev-a")
    deadline = detector.next_deadline()
    assert deadline is not None
    assert deadline <= 2000.0
    assert states(detector.expire(2000.0)) == [("cleared", 2000.0)]


def test_restore_of_old_transitions_clears_at_their_own_time() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    detector.restore("dev-a", [0.0, 10.0, 20.0, 30.0, 40.0, 50.0], flapping=True)
    assert states(detector.expire(9999.0)) == [("cleared", 630.0)]


def test_restore_not_flapping_raises_with_the_next_transition() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    detector.restore("dev-a", [float(t) for t in range(10)], flapping=False)
    assert not detector.is_flapping("dev-a")
    assert detector.next_deadline() is None
    edge = detector.record("dev-a", 20.0)
    assert edge is not None
    assert edge.state == "raised"


def test_forget_drops_the_episode_without_an_edge() -> None:
    detector = FlapDetector()
    flap_six(detector)
    detector.forget("dev-a")
    assert not detector.is_flapping("dev-a")
    assert detector.next_deadline() is None
    assert detector.expire(math.inf) == []
    detector.forget("never-seen")


def test_memory_per_environment_is_capped() -> None:
    detector = FlapDetector(window=600, high=6, low=2)
    for i in range(10_000):
        detector.record("dev-a", i * 0.01)
    assert detector.count("dev-a", 100.0) == 6
    assert len(detector._envs["dev-a"].times) == 6


@pytest.mark.parametrize(
    ("window", "high", "low", "words"),
    [
        (0.0, 6, 2, "window"),
        (-1.0, 6, 2, "window"),
        (math.nan, 6, 2, "window"),
        (600.0, 2, 2, "low < high"),
        (600.0, 2, 3, "low < high"),
        (600.0, 6, -1, "0 <= low"),
        (600.0, 0, 0, "low < high"),
    ],
)
def test_bad_constructor_arguments_are_refused_clearly(
    window: float, high: int, low: int, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        FlapDetector(window=window, high=high, low=low)


# --- property tests against a brute-force model --------------------------------------------
@dataclass(frozen=True)
class Step:
    env: str
    gap: float  # seconds since the previous transition (any environment)
    expire_after: float | None  # call expire this fraction of the next gap later, or not


def model_edges(
    steps: Sequence[tuple[str, float]], window: float, high: int, low: int
) -> dict[str, list[tuple[str, float]]]:
    """The edges the contract asks for, by checking every instant where the count changes."""
    result: dict[str, list[tuple[str, float]]] = {}
    for env in {env for env, _ in steps}:
        times = [t for e, t in steps if e == env]
        instants = sorted(set(times) | {t + window for t in times})
        flapping, edges, seen = False, [], 0
        for now in instants:
            before = sum(1 for t in times[:seen] if now - window < t)
            if flapping and before <= low:
                flapping = False
                edges.append(("cleared", now))
            while seen < len(times) and times[seen] == now:
                seen += 1
                count = sum(1 for t in times[:seen] if now - window < t)
                if not flapping and count >= high:
                    flapping = True
                    edges.append(("raised", now))
        result[env] = edges
    return result


steps_strategy = st.lists(
    st.builds(
        Step,
        env=st.sampled_from(["a", "b", "c"]),
        gap=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        expire_after=st.none() | st.sampled_from([0.0, 0.5, 1.0]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps_strategy,
    window=st.sampled_from([1.0, 5.0, 10.0, 20.0]),
    thresholds=st.tuples(st.integers(1, 6), st.integers(0, 5)).filter(lambda hl: hl[1] < hl[0]),
)
def test_edges_match_the_contract_for_any_transitions(
    steps: list[Step], window: float, thresholds: tuple[int, int]
) -> None:
    high, low = thresholds
    detector = FlapDetector(window=window, high=high, low=low)
    delivered: list[tuple[AlertEdge, float]] = []  # each edge with the time it was handed out
    recorded: list[tuple[str, float]] = []
    now, skipped_last = 0.0, False
    for index, step in enumerate(steps):
        following = steps[index + 1] if index + 1 < len(steps) else None
        now += step.gap
        edge = detector.record(step.env, now)
        recorded.append((step.env, now))
        if edge is not None:
            delivered.append((edge, now))
        # The controller's timer may lag, but not forever: never skip twice in a row.
        fraction = step.expire_after
        if fraction is None and skipped_last:
            fraction = 0.0
        skipped_last = fraction is None
        if fraction is not None:
            later = now + fraction * (following.gap if following else 0.0)
            delivered += [(e, later) for e in detector.expire(later)]
            next_deadline = detector.next_deadline()
            assert next_deadline is None or next_deadline > later
    delivered += [(e, math.inf) for e in detector.expire(math.inf)]
    assert detector.next_deadline() is None

    for edge, handed_out in delivered:
        assert edge.at <= handed_out  # never an edge from the future
    expected = model_edges(recorded, window, high, low)
    for env in {env for env, _ in recorded}:
        got = [(e.state, e.at) for e, _ in delivered if e.env == env]
        assert got == expected[env]
        # Alternating, starting with raised: one raised and one cleared per episode.
        assert [state for state, _ in got] == ["raised", "cleared"] * (len(got) // 2)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.0, 1.0, 3.0, 7.0]), max_size=60),
    high=st.integers(2, 5),
)
def test_a_raise_happens_iff_the_count_reaches_high(gaps: list[float], high: int) -> None:
    window = 10.0
    detector = FlapDetector(window=window, high=high, low=high - 1)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        cleared = [e for e in detector.expire(now) if e.state == "cleared"]
        was_flapping = detector.is_flapping("a")
        edge = detector.record("a", now)
        times.append(now)
        count = sum(1 for t in times if now - window < t)
        raised = edge is not None and edge.state == "raised"
        assert raised == (not was_flapping and count >= high), (times, cleared)


# --- the deadline heap both detectors use --------------------------------------------------
def test_deadline_heap_moves_and_drops_keys() -> None:
    heap = TimerHeap()
    heap.set("a", 5.0)
    heap.set("b", 3.0)
    heap.set("a", 1.0)
    heap.set("c", 4.0)
    heap.cancel("c")
    assert heap.next_deadline() == 1.0
    assert heap.pop_due(3.0) == ["a", "b"]
    assert heap.next_deadline() is None
    assert len(heap) == 0


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.none() | st.integers(0, 50)), max_size=200
    ),
    now=st.integers(0, 50),
)
def test_deadline_heap_agrees_with_a_plain_dict(
    ops: list[tuple[str, int | None]], now: int
) -> None:
    heap = TimerHeap()
    plain: dict[str, float] = {}
    for key, deadline in ops:
        heap.set(key, None if deadline is None else float(deadline))
        if deadline is None:
            plain.pop(key, None)
        else:
            plain[key] = float(deadline)
    assert heap.next_deadline() == (min(plain.values()) if plain else None)
    due = heap.pop_due(float(now))
    assert sorted(due) == sorted(k for k, d in plain.items() if d <= now)
    assert [plain[k] for k in due] == sorted(plain[k] for k in due)
    assert len(heap) == len(plain) - len(due)
    assert heap.heap_size() <= 2 * len(plain) + 64


# --- a state machine over the whole interface ----------------------------------------------
class FlapMachine(RuleBasedStateMachine):
    """Any interleaving of record, expire, restore and forget keeps the promises: edges
    alternate per environment, nothing comes early, and the state agrees with the edges."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = FlapDetector(window=10.0, high=3, low=1)
        self.now = 0.0
        self.last_state: dict[str, str] = {}  # the state the last edge (or restore) left

    def take(self, edges: Sequence[AlertEdge]) -> None:
        for edge in edges:
            assert edge.at <= self.now
            assert edge.state != self.last_state.get(edge.env, "cleared"), edge
            self.last_state[edge.env] = edge.state

    @rule(env=st.sampled_from(["a", "b", "c"]), gap=st.sampled_from([0.0, 1.0, 4.0, 11.0]))
    def record(self, env: str, gap: float) -> None:
        self.now += gap
        edge = self.detector.record(env, self.now)
        self.take([edge] if edge else [])

    @rule(gap=st.sampled_from([0.0, 0.5, 3.0, 10.0, 100.0]))
    def expire(self, gap: float) -> None:
        self.now += gap
        deadline = self.detector.next_deadline()
        edges = self.detector.expire(self.now)
        if deadline is None or deadline > self.now:
            assert edges == []
        self.take(edges)
        after = self.detector.next_deadline()
        assert after is None or after > self.now
        for env, state in self.last_state.items():
            assert self.detector.is_flapping(env) == (state == "raised")

    @rule(
        env=st.sampled_from(["a", "b", "c"]),
        ages=st.lists(st.sampled_from([0.0, 2.0, 5.0, 9.0, 30.0]), max_size=5),
        flapping=st.booleans(),
    )
    def restore(self, env: str, ages: list[float], flapping: bool) -> None:
        self.detector.restore(env, [self.now - age for age in ages], flapping)
        self.last_state[env] = "raised" if flapping else "cleared"

    @rule(env=st.sampled_from(["a", "b", "c"]))
    def forget(self, env: str) -> None:
        self.detector.forget(env)
        self.last_state.pop(env, None)
        assert not self.detector.is_flapping(env)

    @invariant()
    def memory_is_bounded(self) -> None:
        assert all(len(state.times) <= 3 for state in self.detector._envs.values())
        assert len(self.detector._deadlines._heap) <= 2 * 3 + 64


TestFlapMachine = FlapMachine.TestCase
TestFlapMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
