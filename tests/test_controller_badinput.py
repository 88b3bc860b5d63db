"""Bad input is counted per reason and logged at most once per reason a minute."""

from __future__ import annotations

from edgeplane.controller.core.badinput import BadInput, LogDecision
from edgeplane.shared.clock import ManualClock


def test_first_drop_of_each_reason_is_logged() -> None:
    bad = BadInput(ManualClock())
    assert bad.drop("not-json") == LogDecision(True, 0)
    assert bad.drop("schema") == LogDecision(True, 0)


def test_repeats_within_a_minute_are_counted_not_logged() -> None:
    clock = ManualClock()
    bad = BadInput(clock)
    bad.drop("not-json")
    for _ in range(5):
        clock.advance(10)
        assert bad.drop("not-json") == LogDecision(False)
    assert bad.counts == {"not-json": 6}
    assert bad.total == 6


def test_after_a_minute_the_next_one_is_logged_with_what_was_suppressed() -> None:
    clock = ManualClock()
    bad = BadInput(clock)
    bad.drop("too-large")
    bad.drop("too-large")
    bad.drop("too-large")
    clock.advance(59.9)
    assert not bad.drop("too-large").log
    clock.advance(0.1)
    assert bad.drop("too-large") == LogDecision(True, 3)
    assert bad.drop("too-large") == LogDecision(False)


def test_reasons_are_limited_independently() -> None:
    clock = ManualClock()
    bad = BadInput(clock)
    bad.drop("empty")
    clock.advance(30)
    assert bad.drop("bad-topic").log
    assert not bad.drop("empty").log
    assert bad.counts == {"empty": 2, "bad-topic": 1}


def test_counts_are_a_copy() -> None:
    bad = BadInput(ManualClock())
    bad.drop("schema")
    bad.counts["schema"] = 100
    assert bad.counts == {"schema": 1}
