"""Which of two controllers on one topic root stays, and what the running one makes of each
message on its status topic (the pure rule; the processes are in test_single_controller)."""

from __future__ import annotations

from edgeplane.controller.core.rivals import RivalWatch, Verdict, stays
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import ControllerStatus

OURS = ControllerStatus("online", boot="b" * 16, since=100.0)


def test_the_one_that_started_first_stays_and_both_sides_agree() -> None:
    earlier = ControllerStatus("online", boot="f" * 16, since=99.0)
    assert stays(earlier, OURS)
    assert not stays(OURS, earlier)


def test_at_the_same_start_the_smaller_boot_stays() -> None:
    twin = ControllerStatus("online", boot="a" * 16, since=100.0)
    assert stays(twin, OURS)
    assert not stays(OURS, twin)


def test_a_status_without_since_never_outranks_one_with() -> None:
    assert not stays(ControllerStatus("online", boot="0" * 16), OURS)


def test_verdicts_on_what_arrives() -> None:
    stale = ControllerStatus("online", boot="d" * 16, since=1.0)
    watch = RivalWatch(OURS, settled=encode(stale))
    ours = encode(OURS)
    assert watch.judge(OURS, ours, retained=False) is Verdict.NOTHING
    assert watch.judge(stale, encode(stale), retained=True) is Verdict.NOTHING  # settled
    assert watch.judge(stale, encode(stale), retained=False) is Verdict.GIVE_WAY  # it lives
    our_will = ControllerStatus("offline", boot=OURS.boot, reason="connection-lost")
    assert watch.judge(our_will, encode(our_will), retained=False) is Verdict.REASSERT
    stray = ControllerStatus("offline", boot="c" * 16, since=1.0)
    assert watch.judge(stray, encode(stray), retained=False) is Verdict.REASSERT
    later = ControllerStatus("online", boot="e" * 16, since=200.0)
    assert watch.judge(later, encode(later), retained=False) is Verdict.REASSERT
    assert watch.judge(None, b"", retained=True) is Verdict.REASSERT  # cleared
    assert watch.judge(None, b"garbage", retained=False) is Verdict.REASSERT
