"""The judgement of who is online: a pure core over decoded status messages and a clock.

Nothing here does I/O. The service feeds in every valid status message (and calls
:meth:`Presence.tick` when :meth:`Presence.seconds_until_next` says so); each call returns a
:class:`Judgement`: the records to store, the transitions and alert edges to record, and the
views to publish once they are stored.

The rules (the contract's, judged by the controller's own clock at receipt):

- an ``online`` message: the environment is online (``reason`` ``heartbeat``);
- an ``offline`` with the bdseq of the current online connection: offline, with the
  payload's reason (``connection-lost``, ``shutdown``, ``retired``);
- an ``offline`` with any other bdseq is stale: ignored and counted;
- no heartbeat for more than 3 x the declared interval: offline (``heartbeat-timeout``).

Each heartbeat also goes past :mod:`.pressure` (cpu, memory, disk against thresholds: the
view's ``pressure`` and the pressure alert edges) and :mod:`.link_quality` (the view's
``missed_pct`` and ``reconnects_1h``, re-published only when they change materially, at
most once a minute); a plain heartbeat that changes neither publishes nothing.

Deadlines use the monotonic clock; what is stored and shown uses wall time. A message that
arrives as a *retained* message was published while the controller was not listening (down
or disconnected): a transition it causes is marked ``during_downtime``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.heartbeats import HeartbeatLog
from edgeplane.controller.core.link_quality import LinkFigures, LinkQuality
from edgeplane.controller.core.pressure import PressureWatch
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import EnvView, OfflineStatus, OnlineStatus, ViewStatus

__all__ = [
    "TIMEOUT_FACTOR",
    "EnvRecord",
    "FlapTracker",
    "IdentityTracker",
    "Judgement",
    "LoginReport",
    "Presence",
    "Transition",
]

TIMEOUT_FACTOR: Final = 3.0
HEARTBEAT: Final = "heartbeat"
HEARTBEAT_TIMEOUT: Final = "heartbeat-timeout"
_PRESENCE: Final = ("online", "offline")


class FlapTracker(Protocol):
    """What the core needs of controller.core.flapping.FlapDetector (wall-clock times)."""

    def record(self, env: str, at: float) -> AlertEdge | None: ...
    def expire(self, now: float) -> list[AlertEdge]: ...
    def next_deadline(self) -> float | None: ...
    def restore(self, env: str, transitions: Iterable[float], flapping: bool) -> None: ...
    def forget(self, env: str) -> None: ...


class IdentityTracker(Protocol):
    """What the core needs of controller.core.identity.IdentityWatch (wall-clock times)."""

    def observe(
        self, env: str, boot: str, at: float, taken_over_by: str = ""
    ) -> AlertEdge | None: ...
    def conflict(self, env: str, at: float, why: str) -> AlertEdge | None: ...
    def expire(self, now: float) -> list[AlertEdge]: ...
    def next_deadline(self) -> float | None: ...
    def in_conflict(self, env: str) -> bool: ...
    def restore(self, env: str, conflict: bool, at: float) -> None: ...
    def forget(self, env: str) -> None: ...


@dataclass(slots=True)
class EnvRecord:
    """Everything the controller knows about one environment; one row in the store."""

    env: str
    status: ViewStatus = "unknown"
    since: float = 0.0  # wall time of the last transition
    reason: str = ""
    last_seen: float | None = None  # wall time of the last heartbeat
    bdseq: int | None = None  # of the current (or last) connection
    seq: int | None = None  # of the last heartbeat
    boot: str = ""
    interval: float | None = None
    flapping: bool = False
    conflict: bool = False
    pressure: tuple[str, ...] = ()  # resources with an open pressure episode
    link: LinkFigures | None = None  # the link quality figures last shown

    def view(self) -> EnvView:
        return EnvView(
            env=self.env,
            status=self.status,
            since=self.since,
            flapping=self.flapping,
            reason=self.reason,
            last_seen=self.last_seen,
            interval=self.interval,
            pressure=list(self.pressure),
            missed_pct=None if self.link is None else self.link.missed_pct,
            reconnects_1h=None if self.link is None else self.link.reconnects,
        )

    def snapshot(self) -> EnvRecord:
        return EnvRecord(
            self.env,
            self.status,
            self.since,
            self.reason,
            self.last_seen,
            self.bdseq,
            self.seq,
            self.boot,
            self.interval,
            self.flapping,
            self.conflict,
            self.pressure,
            self.link,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of an environment's judged status (``unknown`` only ever as ``from``)."""

    env: str
    from_status: ViewStatus
    to_status: ViewStatus
    reason: str
    at: float
    during_downtime: bool = False


@dataclass(frozen=True, slots=True)
class LoginReport:
    """What an agent said of its logins in the first online message of a connection: the
    CONNECTs the broker refused since its connection before (0: none), and why."""

    env: str
    refused: int
    reason: str
    at: float


@dataclass(slots=True)
class Judgement:
    """What one message or tick changed. Views and alerts go out only after the records,
    transitions and alerts are stored."""

    records: list[EnvRecord] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    alerts: list[AlertEdge] = field(default_factory=list)
    views: list[EnvView] = field(default_factory=list)
    stale: bool = False
    logins: list[LoginReport] = field(default_factory=list)  # (stored with the records)

    def extend(self, other: Judgement) -> None:
        self.records.extend(other.records)
        self.transitions.extend(other.transitions)
        self.alerts.extend(other.alerts)
        self.views.extend(other.views)
        self.logins.extend(other.logins)

    def __bool__(self) -> bool:
        return bool(self.records or self.transitions or self.alerts or self.views)


class Presence:
    """The judged state of every environment seen, and the rules that change it."""

    def __init__(
        self,
        clock: Clock,
        flaps: FlapTracker,
        identity: IdentityTracker,
        pressure: PressureWatch | None = None,
        link: LinkQuality | None = None,
    ) -> None:
        self._clock = clock
        self._flaps = flaps
        self._identity = identity
        self._pressure = pressure or PressureWatch()
        self._link = link or LinkQuality()
        self._envs: dict[str, EnvRecord] = {}
        self._deadlines = TimerHeap()
        self._beats = HeartbeatLog()
        self.stale = 0  # offline messages ignored as stale

    # --- reading ------------------------------------------------------------------------
    def get(self, env: str) -> EnvRecord | None:
        return self._envs.get(env)

    def records(self) -> Iterable[EnvRecord]:
        return self._envs.values()

    def __len__(self) -> int:
        return len(self._envs)

    def online_count(self) -> int:
        return sum(1 for record in self._envs.values() if record.status == "online")

    def missed_heartbeats(self, env: str) -> int | None:
        """Heartbeats of ``env`` missed in the last 5 intervals (:mod:`.heartbeats`); None
        when none was received since the controller last started listening."""
        return self._beats.missed(env, self._clock.time())

    def link_figures(self, env: str) -> LinkFigures | None:
        """``env``'s link quality over the last hour, now (:mod:`.link_quality`)."""
        return self._link.figures(env, self._clock.time())

    def heartbeat_deadline(self, env: str) -> float | None:
        """The monotonic time at which ``env`` times out, if it is online."""
        return self._deadlines.deadline(env)

    # --- restoring ----------------------------------------------------------------------
    def restore(
        self,
        records: Iterable[EnvRecord],
        recent_transitions: Mapping[str, Sequence[float]] | None = None,
        pressure: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Take back the stored state after a restart, without any transition or alert.

        Online environments get a fresh deadline of 3 x interval from now: their retained
        status (or next heartbeat) confirms them, or they time out. ``pressure``: the
        resources of each environment whose pressure episode is open (raised, not cleared).
        """
        recent_transitions = recent_transitions or {}
        pressure = pressure or {}
        now = self._clock.time()
        for stored in records:
            record = stored.snapshot()
            self._envs[record.env] = record
            self._pressure.restore(record.env, pressure.get(record.env, ()))
            if record.link is not None:
                self._link.restore(record.env, record.link, now)
            record.pressure = self._pressure.active(record.env)
            recent = recent_transitions.get(record.env, ())
            if recent or record.flapping:  # a steady environment has nothing to restore
                self._flaps.restore(record.env, recent, record.flapping)
            if record.conflict:
                self._identity.restore(record.env, True, now)
        self.rearm()

    def rearm(self) -> None:
        """Fresh heartbeat deadlines for every online environment (after a restart or a
        reconnect to the broker: silence while we could not listen proves nothing, and
        neither do the heartbeats missed meanwhile: their log starts afresh)."""
        self._beats.reset()
        self._link.pause()
        mono = self._clock.monotonic()
        for record in self._envs.values():
            if record.status == "online":
                self._deadlines.set(record.env, mono + _timeout(record.interval))

    def forget(self, env: str) -> EnvRecord | None:
        """Drop everything known of ``env`` (its record, deadline, flap and identity state),
        without a transition or an alert; the record as it was, None if there was none.
        A status that arrives later starts it afresh."""
        self._deadlines.cancel(env)
        self._beats.forget(env)
        self._link.forget(env)
        self._pressure.forget(env)
        self._flaps.forget(env)
        self._identity.forget(env)
        return self._envs.pop(env, None)

    # --- judging ------------------------------------------------------------------------
    def on_status(
        self, message: OnlineStatus | OfflineStatus, *, retained: bool = False
    ) -> Judgement:
        if isinstance(message, OnlineStatus):
            return self._on_online(message, retained)
        return self._on_offline(message, retained)

    def _on_online(self, message: OnlineStatus, retained: bool) -> Judgement:
        judgement = Judgement()
        now = self._clock.time()
        record = self._envs.get(message.env)
        if record is None:
            record = self._envs[message.env] = EnvRecord(message.env, since=now)
        elif retained and record.bdseq == message.bdseq and record.seq == message.seq:
            # The very heartbeat we judged already, delivered again on (re)subscription.
            return judgement
        self._beats.observe(message.env, message.bdseq, message.seq, message.interval, now)
        came_back = record.status == "offline"
        self._link.observe(
            message.env, message.bdseq, message.seq, message.interval, now, came_back=came_back
        )
        record.last_seen = now
        record.bdseq = message.bdseq
        record.seq = message.seq
        record.boot = message.boot
        record.interval = message.interval
        self._deadlines.set(message.env, self._clock.monotonic() + _timeout(message.interval))
        self._observe_boot(record, now, judgement, message.taken_over_by)
        if message.seq == 0:  # a connection's first: how its logins went
            judgement.logins.append(
                LoginReport(message.env, message.refused, message.refused_reason, now)
            )
        shown = self._judge_resources(record, message, now, judgement)
        if record.status != "online":
            self._transition(record, "online", HEARTBEAT, now, retained, judgement)
        elif shown or self._refresh_link(record, now):
            judgement.views.append(record.view())
        judgement.records.append(record.snapshot())
        return judgement

    def _judge_resources(
        self, record: EnvRecord, message: OnlineStatus, now: float, judgement: Judgement
    ) -> bool:
        """The pressure edges of one heartbeat; whether the view changed."""
        edges = self._pressure.observe(record.env, message.cpu, message.mem, message.disk, now)
        if not edges:
            return False
        judgement.alerts.extend(edges)
        record.pressure = self._pressure.active(record.env)
        return True

    def _refresh_link(self, record: EnvRecord, now: float) -> bool:
        """Whether the link figures changed materially (at most one look per minute)."""
        fresh = self._link.refresh(record.env, now, record.link)
        if fresh is None:
            return False
        record.link = fresh
        return True

    def _on_offline(self, message: OfflineStatus, retained: bool) -> Judgement:
        judgement = Judgement()
        now = self._clock.time()
        record = self._envs.get(message.env)
        if record is None:
            record = self._envs[message.env] = EnvRecord(message.env, since=now)
        if record.bdseq is not None and record.bdseq != message.bdseq:
            self.stale += 1
            judgement.stale = True
            return judgement
        record.bdseq = message.bdseq
        self._deadlines.cancel(message.env)
        if record.status != "offline":
            self._transition(record, "offline", message.reason, now, retained, judgement)
        judgement.records.append(record.snapshot())
        return judgement

    def conflict(self, env: str, why: str) -> Judgement:
        """``identity-conflict`` for ``env``, known by other means than its boot ids (an
        online with a box key that is not the pinned one)."""
        judgement = Judgement()
        edge = self._identity.conflict(env, self._clock.time(), why)
        if edge is not None:
            self._apply_edge(edge, judgement)
        return judgement

    def tick(self) -> Judgement:
        """Judge what time alone decides: heartbeat timeouts, flap windows, quiet identities."""
        judgement = Judgement()
        now = self._clock.time()
        for env in self._deadlines.pop_due(self._clock.monotonic()):
            record = self._envs[env]
            if record.status == "online":
                self._transition(record, "offline", HEARTBEAT_TIMEOUT, now, False, judgement)
                judgement.records.append(record.snapshot())
        for edge in self._flaps.expire(now):
            self._apply_edge(edge, judgement)
        for edge in self._identity.expire(now):
            self._apply_edge(edge, judgement)
        return judgement

    def seconds_until_next(self) -> float | None:
        """How long until :meth:`tick` has something to do (None: nothing scheduled)."""
        waits: list[float] = []
        deadline = self._deadlines.next_deadline()
        if deadline is not None:
            waits.append(deadline - self._clock.monotonic())
        now = self._clock.time()
        for wall_deadline in (self._flaps.next_deadline(), self._identity.next_deadline()):
            if wall_deadline is not None:
                waits.append(wall_deadline - now)
        return max(0.0, min(waits)) if waits else None

    # --- helpers ------------------------------------------------------------------------
    def _transition(
        self,
        record: EnvRecord,
        to_status: ViewStatus,
        reason: str,
        now: float,
        during_downtime: bool,
        judgement: Judgement,
    ) -> None:
        from_status = record.status
        judgement.transitions.append(
            Transition(record.env, from_status, to_status, reason, now, during_downtime)
        )
        record.status = to_status
        record.since = now
        record.reason = reason
        record.link = self._link.figures(record.env, now) or record.link
        if from_status in _PRESENCE and to_status in _PRESENCE:
            edge = self._flaps.record(record.env, now)
            if edge is not None:
                self._apply_edge(edge, judgement, publish_view=False)
        judgement.views.append(record.view())

    def _observe_boot(
        self, record: EnvRecord, now: float, judgement: Judgement, taken_over_by: str = ""
    ) -> None:
        edge = self._identity.observe(record.env, record.boot, now, taken_over_by)
        if edge is not None:
            self._apply_edge(edge, judgement)

    def _apply_edge(
        self, edge: AlertEdge, judgement: Judgement, *, publish_view: bool = True
    ) -> None:
        record = self._envs.get(edge.env)
        judgement.alerts.append(edge)
        if record is None:
            return
        active = edge.state == "raised"
        if edge.kind == "flapping":
            record.flapping = active
            if publish_view:
                judgement.views.append(record.view())
                judgement.records.append(record.snapshot())
        else:
            record.conflict = active
            if publish_view:
                judgement.records.append(record.snapshot())


def _timeout(interval: float | None) -> float:
    if interval is None or not math.isfinite(interval):
        return TIMEOUT_FACTOR * 60.0
    return TIMEOUT_FACTOR * interval
