"""Link quality over the last hour: heartbeats missed (seq gaps, silences) and reconnects,
in one-minute buckets (pure: times given, or a ManualClock through Presence)."""

from __future__ import annotations

from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.link_quality import BUCKETS, LinkFigures, LinkQuality
from edgeplane.controller.core.presence import Presence
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import OnlineStatus

ENV = "edge-1"
T0 = 1_700_000_000.0  # a whole minute


def steady(
    link: LinkQuality, seqs: range | list[int], *, bdseq: int = 1, start: float = T0
) -> None:
    for seq in seqs:
        link.observe(ENV, bdseq, seq, 10.0, start + seq * 10.0, came_back=False)


def test_nothing_known_then_a_steady_link_misses_nothing() -> None:
    link = LinkQuality()
    assert link.figures(ENV, T0) is None
    steady(link, range(30))
    assert link.figures(ENV, T0 + 294.0) == LinkFigures(0.0, 0)


def test_a_gap_in_seq_is_the_share_of_the_hour_missed() -> None:
    link = LinkQuality()
    steady(link, [*range(10), *range(15, 20)])  # 10..14 never came: 5 of 20
    assert link.figures(ENV, T0 + 191.0) == LinkFigures(25.0, 0)


def test_duplicates_change_nothing() -> None:
    link = LinkQuality()
    steady(link, range(5))
    steady(link, [2, 3, 4])
    assert link.figures(ENV, T0 + 41.0) == LinkFigures(0.0, 0)


def test_silence_since_the_last_heartbeat_counts_when_read() -> None:
    link = LinkQuality()
    steady(link, range(10))  # the last at T0 + 90
    assert link.figures(ENV, T0 + 104.0) == LinkFigures(0.0, 0)  # half an interval of slack
    assert link.figures(ENV, T0 + 106.0) == LinkFigures(round(100 / 11, 1), 0)
    assert link.figures(ENV, T0 + 190.0) == LinkFigures(round(100 * 9 / 19, 1), 0)


def test_misses_older_than_the_hour_leave_the_window() -> None:
    link = LinkQuality()
    steady(link, [0, 1, 2, 8, 9])  # 3..7 missed in the first minute
    assert link.figures(ENV, T0 + 91.0) == LinkFigures(50.0, 0)
    # an hour of steady heartbeats later, the first minute has left the window
    steady(link, range(10, 10 + 6 * BUCKETS + 6))
    figures = link.figures(ENV, T0 + (16 + 6 * BUCKETS) * 10.0 - 9.0)
    assert figures == LinkFigures(0.0, 0)


def test_an_outage_longer_than_the_hour_counts_only_its_last_hour() -> None:
    link = LinkQuality()
    steady(link, range(6))
    # reconnected three hours later: the silence is spread over the gap, the hour kept
    link.observe(ENV, 2, 0, 10.0, T0 + 3 * 3600.0, came_back=True)
    figures = link.figures(ENV, T0 + 3 * 3600.0 + 1.0)
    assert figures is not None
    assert 99.0 < figures.missed_pct < 100.0
    assert figures.reconnects == 1


def test_reconnects_are_new_connections_in_the_hour_counted_once() -> None:
    link = LinkQuality()
    steady(link, range(3), bdseq=1)
    steady(link, range(3), bdseq=2, start=T0 + 30.0)  # a new bdseq right away: none missed
    link.observe(ENV, 2, 3, 10.0, T0 + 200.0, came_back=True)  # online after offline
    link.observe(ENV, 3, 0, 10.0, T0 + 210.0, came_back=True)  # both: one reconnect
    figures = link.figures(ENV, T0 + 211.0)
    assert figures is not None
    assert figures.reconnects == 3
    assert link.figures(ENV, T0 + 4000.0) == LinkFigures(100.0, 0)  # silent for the hour


def test_pause_starts_afresh_without_counting_the_gap() -> None:
    link = LinkQuality()
    steady(link, range(3))
    link.pause()
    link.observe(ENV, 1, 40, 10.0, T0 + 400.0, came_back=False)  # 37 seq later, unseen
    assert link.figures(ENV, T0 + 401.0) == LinkFigures(0.0, 0)


def test_memory_is_an_hour_of_buckets_whatever_the_rate() -> None:
    link = LinkQuality()
    for seq in range(20_000):
        link.observe(ENV, 1, seq, 1.0, T0 + seq, came_back=False)
    state = link._envs[ENV]
    assert len(state.counts) == 3 * BUCKETS
    assert link.figures(ENV, T0 + 20_000.0) == LinkFigures(0.0, 0)


def test_refresh_at_most_once_a_minute_and_only_on_a_material_change() -> None:
    link = LinkQuality()
    steady(link, range(3))
    shown = LinkFigures(0.0, 0)
    assert link.refresh(ENV, T0 + 21.0, shown) is None  # the same: nothing to publish
    steady(link, [5])  # 3 and 4 missed: 2 of 6
    fresh = link.refresh(ENV, T0 + 51.0, shown)
    assert fresh == LinkFigures(33.3, 0)
    steady(link, [9])
    assert link.refresh(ENV, T0 + 91.0, fresh) is None  # changed, but within the minute
    # 5 missed in gaps and one silent since T0 + 90, of 11
    assert link.refresh(ENV, T0 + 111.0, fresh) == LinkFigures(54.5, 0)
    assert LinkFigures(10.2, 1).same_as(LinkFigures(9.8, 1))
    assert not LinkFigures(10.6, 1).same_as(LinkFigures(10.2, 1))
    assert not LinkFigures(10.0, 2).same_as(LinkFigures(10.0, 1))


def online(seq: int, bdseq: int = 1) -> OnlineStatus:
    return OnlineStatus(env=ENV, bdseq=bdseq, seq=seq, interval=10.0, boot="b1")


def test_presence_publishes_a_changed_figure_at_most_once_a_minute() -> None:
    clock = ManualClock(T0)
    core = Presence(clock, FlapDetector(), IdentityWatch())
    first = core.on_status(online(0))
    assert [(v.missed_pct, v.reconnects_1h) for v in first.views] == [(0.0, 0)]
    clock.advance(10)
    assert not core.on_status(online(1)).views  # nothing changed: nothing published
    clock.advance(10)
    gap = core.on_status(online(5))  # 2, 3, 4 missed
    assert [(v.missed_pct, v.reconnects_1h) for v in gap.views] == [(50.0, 0)]
    clock.advance(10)
    assert not core.on_status(online(9)).views  # more missed, but within the minute
    clock.advance(60)
    later = core.on_status(online(15))
    assert [v.missed_pct for v in later.views] == [round(100 * 11 / 16, 1)]
    assert core.link_figures(ENV) == LinkFigures(round(100 * 11 / 16, 1), 0)


def test_presence_counts_a_return_after_offline_as_a_reconnect() -> None:
    clock = ManualClock(T0)
    core = Presence(clock, FlapDetector(), IdentityWatch())
    core.on_status(online(0))
    clock.advance(35)
    assert core.tick().views[-1].status == "offline"
    clock.advance(5)
    back = core.on_status(online(1, bdseq=2))
    assert [(v.status, v.reconnects_1h) for v in back.views] == [("online", 1)]


def test_restored_figures_stand_for_the_hour_before_and_fade_out() -> None:
    link = LinkQuality()
    link.restore(ENV, LinkFigures(12.3, 2), T0)
    assert link.figures(ENV, T0) == LinkFigures(12.3, 2)
    steady(link, range(6), start=T0 + 5.0)  # the first heartbeats after the restart
    kept = link.refresh(ENV, T0 + 56.0, LinkFigures(12.3, 2))
    assert kept is None  # no material change: no view re-published
    steady(link, range(6, 6 * 70), start=T0 + 5.0)  # 70 perfect minutes later
    assert link.figures(ENV, T0 + 70 * 60.0) == LinkFigures(0.0, 0)
    perfect = LinkQuality()
    perfect.restore(ENV, LinkFigures(0.2, 0), T0)  # a perfect link needs no seed
    assert perfect.figures(ENV, T0) is None


def test_real_heartbeats_below_a_seq_forged_ahead_keep_the_agent_heard() -> None:
    link = LinkQuality()
    steady(link, range(10))  # up to T0 + 90
    link.observe(ENV, 1, 59, 10.0, T0 + 91.0, came_back=False)  # forged: seq + 50
    before = link.figures(ENV, T0 + 92.0)
    for seq in range(10, 30):  # the agent's own, below the forged seq: heard, not silence
        link.observe(ENV, 1, seq, 10.0, T0 + seq * 10.0, came_back=False)
    after = link.figures(ENV, T0 + 292.0)
    assert before is not None
    assert after is not None
    assert after.missed_pct <= before.missed_pct, "no silence counted while it is heard"
