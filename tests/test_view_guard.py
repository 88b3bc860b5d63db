"""The view guard: wrong views put right at once, then at most once per interval per
environment, never forgotten (pure, on a manual clock)."""

from __future__ import annotations

import msgspec

from edgeplane.controller.core.views import ViewGuard, same_judgement
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import EnvView

OURS = EnvView(env="edge-a", status="online", since=10.0, last_seen=12.0, interval=30)


def test_a_wrong_view_is_corrected_at_once_then_at_most_once_per_interval() -> None:
    clock = ManualClock()
    guard = ViewGuard(clock, every=5.0)
    assert guard.due() == []
    guard.wrong("edge-a")
    guard.wrong("edge-b")
    guard.wrong("edge-a")  # noted twice before the tick: one correction
    assert guard.due() == ["edge-a", "edge-b"]
    assert guard.due() == []
    # wrong again at once (another controller, a loop): it waits for its turn
    guard.wrong("edge-a")
    clock.advance(4.9)
    assert guard.due() == []
    assert len(guard) == 1
    clock.advance(0.1)
    assert guard.due() == ["edge-a"]
    assert guard.corrected == 3


def test_the_judgement_is_compared_not_the_last_heartbeat() -> None:
    assert same_judgement(msgspec.structs.replace(OURS, last_seen=99.0), OURS)
    assert not same_judgement(msgspec.structs.replace(OURS, status="offline"), OURS)
    # pressure and the link figures are judgements too (a restart restores them)
    assert not same_judgement(msgspec.structs.replace(OURS, pressure=["disk"]), OURS)
    assert not same_judgement(msgspec.structs.replace(OURS, missed_pct=12.5), OURS)
    assert not same_judgement(msgspec.structs.replace(OURS, reconnects_1h=2), OURS)
    assert not same_judgement(None, OURS)  # wiped
    assert not same_judgement(OURS, None)  # a view where there should be none
    assert same_judgement(None, None)


def test_a_forgotten_environment_is_neither_corrected_nor_remembered() -> None:
    clock = ManualClock()
    guard = ViewGuard(clock, every=5.0)
    guard.wrong("ghost")
    assert guard.due() == ["ghost"]
    guard.wrong("ghost")  # waits for its turn ...
    guard.forget("ghost")  # ... until the id is forgotten
    clock.advance(5.0)
    assert guard.due() == []
    assert len(guard) == 0
    guard.wrong("ghost")  # seen again later: a first correction, at once
    assert guard.due() == ["ghost"]
