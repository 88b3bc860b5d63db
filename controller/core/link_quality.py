"""Link quality per environment over the last hour: the share of heartbeats missed and the
reconnects (pure; times are the controller's clock at receipt, passed by the caller).

Memory is bounded per environment: :data:`BUCKETS` one-minute buckets, each counting the
heartbeats received, the heartbeats missed and the reconnects in that minute (one array of
small integers), and the last heartbeat's ``bdseq``, ``seq``, ``interval`` and time.

- Missed within one connection: a gap in ``seq``; across connections (a new ``bdseq``): the
  heartbeats the silence held, one per interval past the first, with half an interval of
  slack (as :mod:`.heartbeats` counts them). Missed heartbeats are spread evenly over the
  gap, so an outage longer than the hour counts only for its last hour.
- Since the last heartbeat: the silence the same way, counted when the figure is read.
- A reconnect is a new connection: a heartbeat with another ``bdseq`` than the one before,
  or the first one after the environment was judged offline (counted once).
- After the controller could not listen (a restart, a lost broker connection: :meth:`pause`)
  the next heartbeat starts afresh: the silence meanwhile proves nothing.
- A restart loses the buckets: :meth:`restore` stands the figures last shown in for the hour
  before (as :data:`SEED_WEIGHT` heartbeats and the reconnects, spread over its buckets), so
  a restarted controller shows the same figures and they fade out within the hour as the
  real ones come in, instead of dropping to zero (and re-publishing every such view).

New figures are worth a view only when they changed materially (the whole percent or the
reconnect count), and at most once per :data:`PUBLISH_EVERY` seconds per environment
(:meth:`LinkQuality.refresh`); a view published for another reason (a transition) takes
the figures of the moment along.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Final, NamedTuple

__all__ = ["BUCKETS", "BUCKET_SECONDS", "PUBLISH_EVERY", "LinkFigures", "LinkQuality"]

BUCKET_SECONDS: Final = 60.0
BUCKETS: Final = 60  # an hour of one-minute buckets
PUBLISH_EVERY: Final = 60.0  # seconds between two link-figure views of one environment
SLACK: Final = 0.5  # of an interval: a heartbeat this late is not missed yet
_RECEIVED, _MISSED, _RECONNECTS = 0, 1, 2
SEED_WEIGHT: Final = 1000  # heartbeats a restored figure stands for (0.1 % steps: exact)
_EMPTY: Final = array("I", bytes(4 * 3 * BUCKETS))


class LinkFigures(NamedTuple):
    """What the view shows: percent missed over the hour (one decimal), reconnects in it."""

    missed_pct: float
    reconnects: int

    def same_as(self, other: LinkFigures | None) -> bool:
        """No material change: the same whole percent and the same reconnect count
        (against nothing shown yet, a perfect link is no news)."""
        if other is None:
            return round(self.missed_pct) == 0 and self.reconnects == 0
        return (
            round(self.missed_pct) == round(other.missed_pct)
            and self.reconnects == other.reconnects
        )


@dataclass(slots=True)
class _Link:
    counts: array[int] = field(default_factory=lambda: array("I", _EMPTY))
    head: int = 0  # the minute (time // 60) of the newest bucket
    bdseq: int | None = None  # of the last heartbeat; None: start afresh
    seq: int = 0
    interval: float = 0.0
    at: float = 0.0
    published: float = -math.inf  # when refresh last gave new figures
    # the sums over the buckets, kept as they change (a figure costs no scan)
    received: int = 0
    missed: int = 0
    reconnects: int = 0


class LinkQuality:
    def __init__(self, publish_every: float = PUBLISH_EVERY) -> None:
        self._every = publish_every
        self._envs: dict[str, _Link] = {}

    def observe(
        self, env: str, bdseq: int, seq: int, interval: float, at: float, *, came_back: bool
    ) -> None:
        """One heartbeat of ``env`` received at ``at``. ``came_back``: it brought the
        environment online after it was judged offline. Duplicates change nothing."""
        link = self._envs.get(env)
        if link is None:
            link = self._envs[env] = _Link(head=_minute(at))
        elif link.bdseq == bdseq and seq == link.seq:
            return  # a duplicate
        elif link.bdseq == bdseq and seq < link.seq:
            # an old one again, or the one before was forged ahead: the agent is heard
            # (no silence counted), its seq is not taken
            link.at = max(at, link.at)
            return
        if not math.isfinite(interval) or interval <= 0:
            return
        at = max(at, link.at)  # a clock stepped back: as if at the newest time
        _advance(link, _minute(at))
        counts, base = link.counts, (link.head % BUCKETS) * 3
        counts[base + _RECEIVED] += 1
        link.received += 1
        if link.bdseq is not None:
            new_connection = link.bdseq != bdseq
            if new_connection:
                missed = _due_between(link.at, at, link.interval, arrived=True)
            else:
                missed = min(seq - link.seq - 1, math.ceil(BUCKETS * BUCKET_SECONDS / interval))
            if missed > 0:
                _spread(link, link.at, at, missed)
            came_back = came_back or new_connection
        if came_back:
            counts[base + _RECONNECTS] += 1
            link.reconnects += 1
        link.bdseq, link.seq, link.interval, link.at = bdseq, seq, interval, at

    def figures(self, env: str, now: float) -> LinkFigures | None:
        """``env``'s figures over the hour up to ``now``; None when nothing is known."""
        link = self._envs.get(env)
        if link is None:
            return None
        _advance(link, _minute(now))
        missed = link.missed
        if link.bdseq is not None:
            start = (link.head - BUCKETS + 1) * BUCKET_SECONDS
            missed += _due_between(max(link.at, start), now, link.interval)
        total = link.received + missed
        share = 0.0 if total == 0 else round(100.0 * missed / total, 1)
        return LinkFigures(share, link.reconnects)

    def refresh(self, env: str, now: float, shown: LinkFigures | None) -> LinkFigures | None:
        """New figures worth publishing for ``env``: they changed materially from
        ``shown``, and none were given in the last :data:`PUBLISH_EVERY` seconds; else
        None. Cheap (the sums are kept), so it can be asked at every heartbeat."""
        link = self._envs.get(env)
        if link is None or now - link.published < self._every:
            return None
        if _unchanged_good_link(link, shown):
            return None
        fresh = self.figures(env, now)
        if fresh is None or fresh.same_as(shown):
            return None
        link.published = now
        return fresh

    def restore(self, env: str, shown: LinkFigures, at: float) -> None:
        """After a restart: ``env``'s figures last shown stand for the hour up to ``at``.
        A perfect link needs nothing (the fresh count agrees with it)."""
        if shown.same_as(None):
            return
        link = self._envs[env] = _Link(head=_minute(at))
        missed = min(SEED_WEIGHT, round(shown.missed_pct * SEED_WEIGHT / 100))
        _seed(link, _RECEIVED, SEED_WEIGHT - missed)
        _seed(link, _MISSED, missed)
        _seed(link, _RECONNECTS, shown.reconnects)
        link.received, link.missed, link.reconnects = SEED_WEIGHT - missed, missed, shown.reconnects

    def pause(self) -> None:
        """The controller could not listen: each environment's next heartbeat starts a
        new stretch (no gap counted across the pause); the hour's buckets stay."""
        for link in self._envs.values():
            link.bdseq = None

    def forget(self, env: str) -> None:
        self._envs.pop(env, None)

    def __len__(self) -> int:
        return len(self._envs)


def _unchanged_good_link(link: _Link, shown: LinkFigures | None) -> bool:
    """The usual heartbeat of a good link, just observed: nothing missed in the hour (and
    no silence: one just came), the reconnects as shown. Spares the figure's tuple."""
    return (
        shown is not None
        and link.missed == 0
        and link.bdseq is not None
        and shown.reconnects == link.reconnects
        and round(shown.missed_pct) == 0
    )


def _minute(at: float) -> int:
    return int(at // BUCKET_SECONDS)


def _advance(link: _Link, minute: int) -> None:
    """Make ``minute`` the newest bucket, emptying the ones it passes (at most all)."""
    if minute <= link.head:
        return
    counts = link.counts
    for passed in range(max(link.head + 1, minute - BUCKETS + 1), minute + 1):
        base = (passed % BUCKETS) * 3
        link.received -= counts[base + _RECEIVED]
        link.missed -= counts[base + _MISSED]
        link.reconnects -= counts[base + _RECONNECTS]
        counts[base] = counts[base + 1] = counts[base + 2] = 0
    link.head = minute


def _seed(link: _Link, column: int, total: int) -> None:
    """Spread ``total`` evenly over the hour's buckets (the remainder in the newest)."""
    share, rest = divmod(total, BUCKETS)
    for age in range(BUCKETS):
        minute = link.head - age
        link.counts[(minute % BUCKETS) * 3 + column] += share + (1 if age < rest else 0)


def _due_between(first: float, last: float, interval: float, *, arrived: bool = False) -> int:
    """Heartbeats due every ``interval`` after ``first`` that had not come by ``last``
    (each given :data:`SLACK`); ``arrived``: one came at ``last``, standing for the last
    one due. Capped at an hour's worth."""
    if interval <= 0 or last <= first:
        return 0
    late = (last - first) / interval - SLACK
    due = math.ceil(late) - 1 if arrived else math.floor(late)
    cap = math.ceil(BUCKETS * BUCKET_SECONDS / interval)
    return max(0, min(due, cap))


def _spread(link: _Link, first: float, last: float, count: int) -> None:
    """Put ``count`` missed heartbeats, evenly between ``first`` and ``last``, into the
    buckets of the hour (those older than the hour are dropped)."""
    counts = link.counts
    step = (last - first) / (count + 1)
    oldest = link.head - BUCKETS + 1
    link.missed += count if step <= 0 else 0
    if step <= 0:
        counts[(link.head % BUCKETS) * 3 + _MISSED] += count
        return
    for minute in range(max(_minute(first), oldest), link.head + 1):
        # k-th missed heartbeat at first + k * step, for k = 1..count
        low = max(1, math.ceil((minute * BUCKET_SECONDS - first) / step))
        high = min(count, math.ceil(((minute + 1) * BUCKET_SECONDS - first) / step) - 1)
        if high >= low:
            counts[(minute % BUCKETS) * 3 + _MISSED] += high - low + 1
            link.missed += high - low + 1
