"""The heartbeats each environment missed in its last 5 intervals (pure: times given)."""

from __future__ import annotations

from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.heartbeats import HeartbeatLog
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.presence import Presence
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import OnlineStatus

ENV = "edge-1"


def steady_log(count: int, *, interval: float = 10.0, bdseq: int = 1) -> HeartbeatLog:
    log = HeartbeatLog()
    for seq in range(count):
        assert log.observe(ENV, bdseq, seq, interval, 1000.0 + seq * interval)
    return log


def test_none_seen_is_unknown_and_a_steady_one_missed_none() -> None:
    assert HeartbeatLog().missed(ENV, 1000.0) is None
    log = steady_log(8)
    assert log.missed(ENV, 1070.0) == 0
    assert log.missed(ENV, 1074.9) == 0  # half an interval late is not missed yet


def test_a_gap_in_seq_counts_while_it_is_inside_the_window() -> None:
    log = HeartbeatLog()
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 never came
        log.observe(ENV, 1, seq, 10.0, 1000.0 + seq * 10.0)
    assert log.missed(ENV, 1060.0) == 2
    # 3 and 4 were due at 1030 and 1040: the window of 5 intervals leaves them behind
    log.observe(ENV, 1, 7, 10.0, 1070.0)
    log.observe(ENV, 1, 8, 10.0, 1080.0)
    assert log.missed(ENV, 1085.0) == 1  # (1040 is inside [1035, 1085]; 1030 is not)
    log.observe(ENV, 1, 9, 10.0, 1090.0)
    assert log.missed(ENV, 1095.0) == 0


def test_silence_since_the_last_heartbeat_counts() -> None:
    log = steady_log(6)  # the last at 1050
    assert log.missed(ENV, 1066.0) == 1
    assert log.missed(ENV, 1086.0) == 3


def test_a_duplicate_is_not_kept_and_changes_nothing() -> None:
    log = steady_log(4)
    assert not log.observe(ENV, 1, 3, 10.0, 1031.0)  # a retained one delivered again
    assert not log.observe(ENV, 1, 1, 10.0, 1032.0)
    assert log.missed(ENV, 1035.0) == 0


def test_a_new_connection_counts_the_silence_between_the_two_not_the_seq_restart() -> None:
    log = steady_log(5)  # bdseq 1, the last at 1040
    log.observe(ENV, 2, 0, 10.0, 1041.0)  # reconnected at once: seq starts again, none missed
    assert log.missed(ENV, 1045.0) == 0
    later = steady_log(5)
    later.observe(ENV, 2, 0, 10.0, 1075.0)  # 35 s without one: 1050, 1060 were missed
    assert later.missed(ENV, 1075.0) == 2
    # a connection back after hours counts the window it fills, no more
    back = steady_log(3)
    back.observe(ENV, 7, 0, 10.0, 9000.0)
    assert back.missed(ENV, 9000.0) == 5
    back.observe(ENV, 7, 1, 10.0, 9010.0)
    fading = back.missed(ENV, 9050.0)  # the silence fading out of the window
    assert fading is not None
    assert fading <= 4


def test_the_presence_core_keeps_the_log_and_starts_it_afresh_after_not_listening() -> None:
    clock = ManualClock(start=1000.0)
    presence = Presence(clock, FlapDetector(600, 6, 2), IdentityWatch(600, 300))
    for seq in (0, 1, 3):
        clock.advance(5.0)
        presence.on_status(OnlineStatus(env=ENV, bdseq=1, seq=seq, interval=5, boot="b"))
    assert presence.missed_heartbeats(ENV) == 1
    presence.rearm()  # the controller could not listen for a while
    assert presence.missed_heartbeats(ENV) is None
    clock.advance(5.0)
    presence.on_status(OnlineStatus(env=ENV, bdseq=1, seq=40, interval=5, boot="b"))
    assert presence.missed_heartbeats(ENV) == 0  # the jump in seq while away proves nothing
    presence.forget(ENV)
    assert presence.missed_heartbeats(ENV) is None


def test_a_seq_forged_ahead_is_dropped_when_the_real_ones_follow_on() -> None:
    log = steady_log(4)  # seq 0..3, every 10 s up to 1030
    assert log.observe(ENV, 1, 53, 10.0, 1031.0)  # someone published seq + 50
    assert log.missed(ENV, 1031.0) == 5, "never more than the window holds"
    assert log.observe(ENV, 1, 4, 10.0, 1040.0)  # the agent's own next one
    assert log.missed(ENV, 1041.0) == 0
    assert log.observe(ENV, 1, 5, 10.0, 1050.0)
    assert log.missed(ENV, 1051.0) == 0
