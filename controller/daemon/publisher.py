"""Store, then publish: what the controller judged goes to the database first, and out only
once it is committed, so a crash never loses a transition that was already published.

:meth:`Publisher.carry_out` hands a judgement (and the effects of operations) to the
store's bounded queue and its views, alerts and commands to the outbox. :meth:`run`
publishes the outbox in order, each item once the store has committed what it shows, with
at most :data:`PUBLISH_WINDOW` publishes in flight (no flood at startup). What a lost
connection left unsent goes out first on the next one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import Final

import structlog

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.incidents import IncidentEdge
from edgeplane.controller.core.operations import Effects, Operations, Outgoing
from edgeplane.controller.core.presence import Judgement, Transition
from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.command_keys import CommandKeys
from edgeplane.controller.daemon.incident_desk import IncidentDesk
from edgeplane.controller.daemon.store import Store
from edgeplane.controller.daemon.sync import RetainedSync
from edgeplane.controller.mqtt import Connection
from edgeplane.shared.codec import encode
from edgeplane.shared.errors import BrokerUnavailable
from edgeplane.shared.messages import Alert, EnvView
from edgeplane.shared.topics import TopicRoot

__all__ = ["OUTBOX_SIZE", "PUBLISH_WINDOW", "Publisher"]

PUBLISH_WINDOW: Final = 100  # publishes in flight at once (bounded: no flood at startup)
OUTBOX_SIZE: Final = 20_000

log = structlog.get_logger("controller")


class Publisher:
    """The outbox of one controller, kept across connections. Commands are signed as they
    enter it (so a command sent again is the same bytes), with the key ``keys`` names for
    their environment (the old or the new one while the key is rotated)."""

    def __init__(
        self,
        root: TopicRoot,
        store: Store,
        operations: Operations,
        sync: RetainedSync,
        keys: CommandKeys,
    ) -> None:
        self._root = root
        self._keys = keys
        self._store = store
        self._ops = operations
        self._sync = sync
        self._outbox: asyncio.Queue[tuple[int, Outgoing]] = asyncio.Queue(OUTBOX_SIZE)
        self._unsent: list[Outgoing] = []  # taken from the outbox, not yet acknowledged
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)
        # Told every batch of effects carried out (the rollouts follow their deployments).
        self.watchers: list[Callable[[Effects], None]] = []
        # The incidents' desk: told everything carried out, its rows stored after it.
        self.incidents: IncidentDesk | None = None

    async def carry_out(self, judgement: Judgement | None, effects: Effects | None) -> int:
        """Store, then (once committed) publish; returns the store number to wait for."""
        number = 0
        edges, carried, clear = self._incident_edges(judgement, effects)
        if judgement:
            number = await self._store.submit(judgement)
            await self._queue_judged(number, judgement)
            _log_judgement(judgement)
        if effects is not None:
            for watcher in self.watchers:
                watcher(effects)
            if effects.writes:
                number = await self._store.submit(effects.writes)
            for item in effects.outgoing:
                await self._outbox.put((number, self._signed(item)))
        if edges:
            writes = Writes(incidents=[edge.incident for edge in edges], urgent=True)
            number = await self._store.submit(writes)
        edges += carried
        if edges and self.incidents is not None:
            self.incidents.queue_notices(number, edges)
            _log_incidents(edges)
            shown = {view.env for view in judgement.views} if judgement else set()
            await self._queue_counted(number, edges, shown)
        for item in clear:
            await self._outbox.put((number, item))
        return number

    def _incident_edges(
        self, judgement: Judgement | None, effects: Effects | None
    ) -> tuple[list[IncidentEdge], list[IncidentEdge], list[Outgoing]]:
        if self.incidents is None:
            return [], [], []
        return self.incidents.take(judgement, effects)

    async def send(self, item: Outgoing, after: int = 0) -> None:
        """Publish ``item`` once the store number ``after`` is committed."""
        await self._outbox.put((after, self._signed(item)))

    def _signed(self, item: Outgoing) -> Outgoing:
        if not item.command:
            return item
        env = self._root.parse(item.topic).env or ""
        payload = self._keys.signer_for(env).seal(item.payload)
        return dataclasses.replace(item, payload=payload, command=False)

    async def send_view(self, env: str, view: EnvView | None) -> None:
        """Publish ``env``'s view, or clear it (None)."""
        item = Outgoing(self._root.view(env), b"", True) if view is None else self._view(view)
        await self._outbox.put((0, item))

    async def drain(self) -> None:
        """Wait until everything queued is published."""
        await self._outbox.join()

    async def _queue_judged(self, number: int, judgement: Judgement) -> None:
        for presence_view in judgement.views:
            view = self._ops.public_view(presence_view)
            if view is None:
                continue  # retired: its view stays cleared
            self._sync.note_sent(view.env)
            await self._outbox.put((number, self._view(view)))
        for edge in judgement.alerts:
            await self._outbox.put((number, self._alert(edge)))
            await self._outbox.put((number, self._alert_state(edge)))

    async def _queue_counted(self, number: int, edges: list[IncidentEdge], shown: set[str]) -> None:
        """The views of environments whose count of open incidents changed (``shown``:
        those whose view goes out anyway)."""
        changed = {e.incident.env for e in edges if e.edge in ("opened", "resolved")} - shown
        for env in sorted(changed):
            view = self._ops.expected_view(env)
            if view is not None:
                self._sync.note_sent(env)
                await self._outbox.put((number, self._view(view)))

    def _view(self, view: EnvView) -> Outgoing:
        return Outgoing(self._root.view(view.env), encode(view), True)

    def _alert(self, edge: AlertEdge) -> Outgoing:
        return Outgoing(self._root.alerts(edge.env), _alert_payload(edge), False)

    def _alert_state(self, edge: AlertEdge) -> Outgoing:
        """The same edge, retained per environment and kind: a late subscriber sees it."""
        return Outgoing(self._root.alert_state(edge.env, edge.kind), _alert_payload(edge), True)

    # --- on a connection ------------------------------------------------------------------
    async def run(self, connection: Connection) -> None:
        """Publish on ``connection`` until cancelled or it is lost."""
        async with asyncio.TaskGroup() as in_flight:
            for item in self._take_unsent():
                await self._window.acquire()
                in_flight.create_task(self._publish_one(connection, item, queued=False))
            while True:
                number, item = await self._outbox.get()
                try:
                    await self._store.wait_committed(number)
                    await self._window.acquire()
                except asyncio.CancelledError:
                    self._unsent.append(item)
                    self._outbox.task_done()
                    raise
                in_flight.create_task(self._publish_one(connection, item, queued=True))

    async def _publish_one(self, connection: Connection, item: Outgoing, *, queued: bool) -> None:
        try:
            await connection.publish(
                item.topic,
                item.payload,
                retain=item.retain,
                expiry=item.expiry,
                correlation=item.correlation,
            )
        except (BrokerUnavailable, asyncio.CancelledError):
            self._unsent.append(item)
            raise
        finally:
            self._window.release()
            if queued:
                self._outbox.task_done()

    def _take_unsent(self) -> Iterator[Outgoing]:
        unsent, self._unsent = self._unsent, []
        return iter(unsent)


def _log_judgement(judgement: Judgement) -> None:
    for transition in judgement.transitions:
        _log_transition(transition)
    for edge in judgement.alerts:
        log.warning("alert", env=edge.env, kind=edge.kind, state=edge.state, detail=edge.detail)


def _alert_payload(edge: AlertEdge) -> bytes:
    alert = Alert(
        kind=edge.kind, state=edge.state, env=edge.env, ts=edge.at, detail=edge.detail[:256]
    )
    return encode(alert)


def _log_incidents(edges: list[IncidentEdge]) -> None:
    for edge in edges:
        if edge.edge == "repeated":
            continue  # counted on the incident; a flood of repeats is not a flood of lines
        incident = edge.incident
        emit = log.warning if edge.edge == "opened" else log.info
        emit(
            "incident " + edge.edge,
            incident=incident.id,
            env=incident.env,
            kind=incident.kind,
            severity=incident.severity,
            detail=incident.detail,
        )


def _log_transition(transition: Transition) -> None:
    log.info(
        "transition",
        env=transition.env,
        from_status=transition.from_status,
        to_status=transition.to_status,
        reason=transition.reason,
        during_downtime=transition.during_downtime,
    )
