"""The incidents' desk: the book fed off what the publisher carries out, the operators'
acknowledgements and resolutions, and the one seam for notifications.

:meth:`IncidentDesk.take` is handed every judgement and batch of effects the publisher
carries out (presence transitions, alert edges, logged events, retirements) and says what
changed: incident rows to store with them and, for a retired or forgotten environment, its
retained alert states to clear. A plain heartbeat costs one dictionary look-up (the
heartbeat log is asked only after a gap in ``seq`` or while an incident of missed
heartbeats is open) and changes nothing.

**The notification seam**: every incident edge (opened, repeated, acknowledged, resolved)
is handed, as a :class:`IncidentNotice`, to each callable in
:attr:`IncidentDesk.sinks`, once the store has committed it (:meth:`serve`, a task of the
presence link). A sink must not block (a notifier queues the body and returns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, get_args

import structlog

from edgeplane.controller.core.incidents import EdgeName, Incident, IncidentBook, IncidentEdge
from edgeplane.controller.core.operations import Effects, Outgoing
from edgeplane.controller.core.presence import Judgement, Presence
from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.store import Store
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import AlertKind
from edgeplane.shared.notices import IncidentNotice
from edgeplane.shared.rpc import IncidentInfo, IncidentStep
from edgeplane.shared.topics import TopicRoot

__all__ = ["NOTICES_QUEUED", "IncidentDesk", "incident_info"]

NOTICES_QUEUED: Final = 10_000  # edges waiting for their commit; more are dropped, logged

log = structlog.get_logger("controller")


def incident_info(incident: Incident) -> IncidentInfo:
    return IncidentInfo(
        id=incident.id,
        env=incident.env,
        kind=incident.kind,
        severity=incident.severity,
        state=incident.state,
        opened=incident.opened,
        updated=incident.updated,
        detail=incident.detail,
        count=incident.count,
        timeline=[
            IncidentStep(state=s.state, at=s.at, note=s.note, by=s.by) for s in incident.timeline
        ],
    )


def _carried(edge: IncidentEdge | None) -> tuple[IncidentEdge, Effects] | None:
    if edge is None:
        return None
    return edge, Effects(writes=Writes(incidents=[edge.incident], urgent=True))


def _last_edge(incident: Incident) -> EdgeName:
    return incident.timeline[-1].state if incident.timeline else "opened"


class IncidentDesk:
    def __init__(
        self, root: TopicRoot, clock: Clock, book: IncidentBook, store: Store, presence: Presence
    ) -> None:
        self._root = root
        self._clock = clock
        self.book = book
        self._store = store
        self._presence = presence
        self._beats: dict[str, tuple[int, int]] = {}  # env -> (bdseq, seq) last seen
        self._notices: asyncio.Queue[tuple[int, list[IncidentNotice]]] = asyncio.Queue(
            NOTICES_QUEUED
        )
        # The notification seam: called with each edge once it is committed.
        self.sinks: list[Callable[[IncidentNotice], None]] = []

    # --- off the publisher -----------------------------------------------------------------
    def take(
        self, judgement: Judgement | None, effects: Effects | None
    ) -> tuple[list[IncidentEdge], list[IncidentEdge], list[Outgoing]]:
        """The incident edges of what is carried out: those it made now (whose rows are to
        be stored) and those already in ``effects`` (an operator's, the rotation's: stored
        with them); and retained states to clear."""
        edges: list[IncidentEdge] = []
        carried: list[IncidentEdge] = []
        clear: list[Outgoing] = []
        if judgement is not None:
            for transition in judgement.transitions:
                edges += self.book.on_transition(transition)
            for alert in judgement.alerts:
                edges += self.book.on_alert(alert)
            for login in judgement.logins:
                edges += self.book.on_login(login.env, login.refused, login.reason, login.at)
            for record in judgement.records:
                if record.bdseq is not None and record.seq is not None:
                    edges += self._beat(record.env, record.bdseq, record.seq)
        if effects is not None:
            writes = effects.writes
            carried = [IncidentEdge(_last_edge(i), i) for i in writes.incidents]
            for entry in writes.events:
                edges += self.book.on_event(entry.event, entry.at)
            retired = [r.id for r in writes.records if r.retired is not None]
            for env in retired:
                edges += self.book.forget(env, "the environment was retired")
                clear += self._gone(env)
            for forgotten in writes.forgotten:
                resolved = self.book.forget(forgotten.env, "the environment was forgotten")
                if not forgotten.history:
                    edges += resolved  # its history stays; with it, its rows are deleted
                clear += self._gone(forgotten.env)
        return edges, carried, clear

    def queue_notices(self, number: int, edges: list[IncidentEdge]) -> None:
        """Hand ``edges`` to the sinks once the store number ``number`` is committed."""
        if not edges or not self.sinks:
            return
        notices = [IncidentNotice(edge=e.edge, incident=incident_info(e.incident)) for e in edges]
        try:
            self._notices.put_nowait((number, notices))
        except asyncio.QueueFull:
            log.warning("incident notices dropped", count=len(notices), queued=NOTICES_QUEUED)

    async def serve(self) -> None:
        """Hand each committed edge to the sinks, in order, until cancelled."""
        while True:
            number, notices = await self._notices.get()
            await self._store.wait_committed(number)
            for notice in notices:
                for sink in self.sinks:
                    try:
                        sink(notice)
                    except Exception:  # a sink's bug must not stop the others
                        log.exception("incident sink failed", incident=notice.incident.id)

    # --- operators and the rotation ----------------------------------------------------------
    def acknowledge(
        self, incident_id: str, note: str, by: str
    ) -> tuple[IncidentEdge, Effects] | None:
        """The edge and its effects to carry out (the reply waits for their commit); None
        when no open incident has this id."""
        return _carried(self.book.acknowledge(incident_id, note, by or "operator"))

    def resolve(self, incident_id: str, note: str, by: str) -> tuple[IncidentEdge, Effects] | None:
        return _carried(self.book.resolve(incident_id, note, by or "operator"))

    def credential_problem(self, env: str, detail: str) -> Effects:
        """A credential rotation of ``env`` failed: its effects to carry out."""
        edge = self.book.credential_problem(env, detail)
        return Effects(writes=Writes(incidents=[edge.incident], urgent=True))

    # --- inside ------------------------------------------------------------------------------
    def _beat(self, env: str, bdseq: int, seq: int) -> list[IncidentEdge]:
        """A heartbeat of ``env``: the heartbeat log is asked after a gap in ``seq`` of
        one connection, or while an incident of missed heartbeats is open. A new
        connection is no gap (its silence before was an offline, or a reconnect)."""
        last = self._beats.get(env)
        self._beats[env] = (bdseq, seq)
        if last is None or last[0] != bdseq or seq == last[1]:
            return []  # the first seen since the start, a new connection, a duplicate
        # (a seq below the last: a replay, or the last was forged ahead; the log decides)
        steady = seq == last[1] + 1
        if steady and not self.book.is_open(env, "heartbeats-missed"):
            return []  # the hot path: the next heartbeat of a steady connection
        now = self._clock.time()
        return self.book.on_missed(env, self._presence.missed_heartbeats(env), now)

    def _gone(self, env: str) -> list[Outgoing]:
        """A retired or forgotten environment: its retained alert states, cleared."""
        self._beats.pop(env, None)
        return [
            Outgoing(self._root.alert_state(env, kind), b"", True) for kind in get_args(AlertKind)
        ]
