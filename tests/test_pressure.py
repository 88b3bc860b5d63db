"""Resource pressure from heartbeats: 3 in a row raise, 3 below the clearing level clear,
one edge each per episode (pure: times given, or a ManualClock through Presence)."""

from __future__ import annotations

import pytest

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.pressure import CONSECUTIVE, PressureWatch, clearing_level
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import OnlineStatus
from edgeplane.shared.resources import DEFAULT_THRESHOLDS, threshold_percent

ENV = "edge-1"


def feed(watch: PressureWatch, disks: list[float | None], start: float = 0.0) -> list[AlertEdge]:
    edges: list[AlertEdge] = []
    for n, disk in enumerate(disks):
        edges.extend(watch.observe(ENV, None, None, disk, start + n * 10.0))
    return edges


def test_three_consecutive_heartbeats_over_raise_once() -> None:
    watch = PressureWatch()
    assert feed(watch, [97.0, 97.0]) == []
    edges = feed(watch, [96.5], start=20.0)
    assert edges == [AlertEdge(ENV, "disk-pressure", "raised", 20.0, "disk 96.5 % >= 90 %")]
    assert watch.active(ENV) == ("disk",)
    assert feed(watch, [99.0] * 10, start=30.0) == []  # one edge per episode, not a stream


def test_a_heartbeat_under_the_threshold_restarts_the_count() -> None:
    watch = PressureWatch()
    assert feed(watch, [95.0, 95.0, 80.0, 95.0, 95.0]) == []
    assert [e.state for e in feed(watch, [95.0], start=50.0)] == ["raised"]


def test_clearing_needs_three_below_the_threshold_minus_the_margin() -> None:
    watch = PressureWatch()
    feed(watch, [97.0] * CONSECUTIVE)
    assert clearing_level(90.0) == 85.0
    # hovering between 85 and 90 neither clears nor counts towards clearing
    assert feed(watch, [89.0, 84.0, 84.0, 87.0, 84.0, 84.0], start=100.0) == []
    edges = feed(watch, [50.0], start=200.0)
    assert edges == [AlertEdge(ENV, "disk-pressure", "cleared", 200.0, "disk 50 % < 85 %")]
    assert watch.active(ENV) == ()
    assert feed(watch, [50.0] * 5, start=300.0) == []


def test_a_heartbeat_without_the_figure_changes_nothing() -> None:
    watch = PressureWatch()
    assert feed(watch, [97.0, None, 97.0, None]) == []
    assert [e.state for e in feed(watch, [97.0], start=50.0)] == ["raised"]
    assert feed(watch, [None] * 5, start=60.0) == []
    assert watch.active(ENV) == ("disk",)


def test_each_resource_has_its_own_episode_and_threshold() -> None:
    watch = PressureWatch({"cpu": 50.0, "mem": 80.0})
    edges: list[AlertEdge] = []
    for n in range(CONSECUTIVE):
        edges.extend(watch.observe(ENV, 60.0, 85.0, 10.0, float(n)))
    assert [(e.kind, e.detail) for e in edges] == [
        ("cpu-pressure", "cpu 60 % >= 50 %"),
        ("memory-pressure", "mem 85 % >= 80 %"),
    ]
    assert watch.active(ENV) == ("cpu", "mem")
    assert watch.thresholds() == {"cpu": 50.0, "mem": 80.0, "disk": 90.0}


def test_restore_and_forget_emit_nothing() -> None:
    watch = PressureWatch()
    watch.restore(ENV, ["disk"])
    assert watch.active(ENV) == ("disk",)
    assert feed(watch, [97.0] * 5) == []  # still the same episode: not raised twice
    assert [e.state for e in feed(watch, [10.0] * 3, start=100.0)] == ["cleared"]
    feed(watch, [97.0, 97.0])
    watch.forget(ENV)
    assert watch.active(ENV) == ()
    assert feed(watch, [97.0]) == []  # the count started afresh


@pytest.mark.parametrize("bad", [0, -1, 100.5, "x", True, float("nan")])
def test_a_bad_threshold_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="percentage above 0 and at most 100"):
        threshold_percent(bad)


def test_the_defaults_are_ninety_percent() -> None:
    assert DEFAULT_THRESHOLDS == {"cpu": 90.0, "mem": 90.0, "disk": 90.0}
    assert threshold_percent("100") == 100.0


def online(seq: int, disk: float | None, *, bdseq: int = 1) -> OnlineStatus:
    return OnlineStatus(env=ENV, bdseq=bdseq, seq=seq, interval=10.0, boot="b1", disk=disk)


def test_presence_raises_stores_and_shows_the_episode_once() -> None:
    clock = ManualClock()
    core = Presence(clock, FlapDetector(), IdentityWatch())
    core.on_status(online(0, 97.0))
    clock.advance(10)
    assert core.on_status(online(1, 97.0)).alerts == []
    clock.advance(10)
    judged = core.on_status(online(2, 97.0))
    assert [(a.kind, a.state) for a in judged.alerts] == [("disk-pressure", "raised")]
    assert [v.pressure for v in judged.views] == [["disk"]]
    assert judged.records[-1].pressure == ("disk",)
    clock.advance(10)
    assert not core.on_status(online(3, 97.0)).views  # a plain heartbeat publishes nothing
    for seq in (4, 5, 6):
        clock.advance(10)
        judged = core.on_status(online(seq, 50.0))
    assert [(a.kind, a.state) for a in judged.alerts] == [("disk-pressure", "cleared")]
    assert [v.pressure for v in judged.views] == [[]]


def test_presence_keeps_an_episode_offline_restores_it_and_forgets_it() -> None:
    clock = ManualClock()
    core = Presence(clock, FlapDetector(), IdentityWatch())
    for seq in range(3):
        core.on_status(online(seq, 97.0))
    clock.advance(100)
    judged = core.tick()  # timed out: offline, the episode stays
    assert judged.views[-1].status == "offline"
    assert judged.views[-1].pressure == ["disk"]
    record = core.get(ENV)
    assert record is not None
    again = Presence(clock, FlapDetector(), IdentityWatch())
    again.restore([record], pressure={ENV: ["disk"]})
    restored = again.get(ENV)
    assert restored is not None
    assert restored.pressure == ("disk",)
    raised = [a for seq in range(3) for a in again.on_status(online(seq, 97.0, bdseq=2)).alerts]
    assert raised == []  # restored: not raised twice
    again.forget(ENV)
    judged = again.on_status(online(0, 97.0, bdseq=3))
    assert judged.alerts == []
    assert judged.records[-1].pressure == ()
