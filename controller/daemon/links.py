"""The work on each of the controller's two connections, from connect to a clean stop.

:class:`PresenceLink`, on the presence connection (a fresh session each time), runs:

``receiver``   every message to the intake (judged, then carried out: stored, then
               published) or, on the requests topic, to the request desk;
``subscriber`` the two rounds of the retained sync, then what waited for it;
``publisher``  the outbox, each item once the store committed what it shows;
``ticker``     time-driven judgements (heartbeat timeouts, flap and identity expiry) when
               the next one falls due, and views someone else wrote wrong, put right;
``stats``      the retained controller status kept right: its counts, and put back when
               something else overwrote it;
``requests-N`` a few workers answering operator requests, once the sync is done;
``pings``      the answers to other controllers asking whether we are alive (at once);
``rollouts``   the rollouts' runner: fed by their deployments' changes and a timer;
``rotation``   (under ``broker init``) credential rotation: what a restart interrupted,
               then the online messages that move a rotation on; ``rotation-ticker``
               the automatic rotation after ``rotate_after``; ``operator-ages`` the
               warnings about operators' credentials older than that.

:class:`EventLink`, on the events connection: a persistent session (a fixed client id per
topic root, clean start off), so the broker keeps the agents' events published while the
controller is down or cut off, and a deployment in flight is followed to its end across a
controller restart. Each event is acknowledged only once what it changed is
committed (``acks``), so one received just before a crash is sent again, not lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import structlog

from edgeplane.controller.core.acl import CONTROL_RESPONSE_TOPIC
from edgeplane.controller.core.operations import Operations
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.views import ViewGuard
from edgeplane.controller.daemon.beacon import StatusBeacon
from edgeplane.controller.daemon.identities import Identities
from edgeplane.controller.daemon.incident_desk import IncidentDesk
from edgeplane.controller.daemon.intake import Intake
from edgeplane.controller.daemon.publisher import PUBLISH_WINDOW, Publisher
from edgeplane.controller.daemon.request_desk import REQUEST_WORKERS, RequestDesk
from edgeplane.controller.daemon.rollout_desk import RolloutDesk
from edgeplane.controller.daemon.rotation_desk import RotationDesk
from edgeplane.controller.daemon.settings import ControllerSettings
from edgeplane.controller.daemon.store import Store
from edgeplane.controller.daemon.sync import SYNC_TIMEOUT, RetainedSync
from edgeplane.controller.errors import StoreError
from edgeplane.controller.mqtt import Connection, Message, Receipt, unique_client_id
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import Clock

__all__ = ["EVENT_SESSION_EXPIRY", "DaemonParts", "EventLink", "PresenceLink"]

TICK_CAP: Final = 0.1  # never sleep longer than this between ticks
BACKLOG_LIMIT: Final = 500  # received messages not yet judged, above which ticks wait
MAX_DEFER: Final = 5.0  # ... but never longer than this
DRAIN_TIMEOUT: Final = 10.0
EVENT_SESSION_EXPIRY: Final = 7 * 86_400  # seconds the broker keeps events for us
EVENTS_ID_FILE: Final = "events-session-id"  # beside the database

log: Final = structlog.get_logger("controller")


@dataclass(frozen=True, slots=True)
class DaemonParts:
    """What the links work with, made once per run by the service."""

    settings: ControllerSettings
    clock: Clock
    store: Store
    core: Presence
    operations: Operations
    intake: Intake
    sync: RetainedSync
    publisher: Publisher
    desk: RequestDesk
    beacon: StatusBeacon
    views: ViewGuard
    identities: Identities | None = None  # None: the broker has none (no broker init)
    rotation: RotationDesk | None = None  # credential rotation, with identities only
    rollouts: RolloutDesk | None = None  # the rollouts' runner
    incidents: IncidentDesk | None = None  # the incidents' book and notification seam


class PresenceLink:
    def __init__(self, parts: DaemonParts) -> None:
        self._settings = parts.settings
        self._clock = parts.clock
        self._store = parts.store
        self._core = parts.core
        self._ops = parts.operations
        self._intake = parts.intake
        self._sync = parts.sync
        self._publisher = parts.publisher
        self._desk = parts.desk
        self._beacon = parts.beacon
        self._ids = parts.identities
        self._admin = None if parts.identities is None else parts.identities.admin
        self._views = parts.views
        self._rotation = parts.rotation
        self._rollouts = parts.rollouts
        self._incidents = parts.incidents

    @property
    def broker_url(self) -> BrokerUrl:
        return self._settings.broker

    def connection(self) -> Connection:
        return Connection(
            self._settings.broker,
            unique_client_id("edgeplane-controller"),
            will=self._beacon.will(),
            warn_pending_above=PUBLISH_WINDOW + 50,
        )

    async def session(self, connection: Connection, stop: asyncio.Event) -> None:
        """Everything on one connection until ``stop``; then drain and say goodbye."""
        log.info("connected to the broker", broker=str(self._settings.broker))
        self._core.rearm()  # silence while we could not listen proves nothing
        self._sync.start()
        try:
            await self._run_session(connection, stop)
        finally:
            if self._admin is not None:
                self._admin.detach()

    async def _run_session(self, connection: Connection, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            # The receiver runs before we subscribe: the retained flood is judged as it
            # arrives instead of piling up behind the SUBACK.
            workers = [
                tasks.create_task(self._receive(connection), name="receiver"),
                tasks.create_task(self._subscribe(connection), name="subscriber"),
                tasks.create_task(self._tick(connection), name="ticker"),
                tasks.create_task(self._refresh_status(connection), name="stats"),
                tasks.create_task(self._sync_deadline(), name="sync-deadline"),
                tasks.create_task(self._desk.answer_pings(connection), name="pings"),
            ]
            workers += [
                tasks.create_task(self._desk.serve(), name=f"requests-{number}")
                for number in range(REQUEST_WORKERS)
            ]
            if self._rotation is not None:
                workers.append(tasks.create_task(self._rotation.serve(), name="rotation"))
                workers.append(tasks.create_task(self._rotation.tick(), name="rotation-ticker"))
            if self._rollouts is not None:
                workers.append(tasks.create_task(self._rollouts.serve(), name="rollouts"))
            if self._incidents is not None:
                workers.append(tasks.create_task(self._incidents.serve(), name="incidents"))
            if self._ids is not None:
                ages = self._ids.operator_credentials().watch()
                workers.append(tasks.create_task(ages, name="operator-ages"))
            publisher = tasks.create_task(self._publisher.run(connection), name="publisher")
            await stop.wait()
            await cancel_and_wait(workers)
            await self._store.flush()
            if self._beacon.gave_way_to is None:  # else: the views are the other one's
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_TIMEOUT):
                        await self._publisher.drain()
            await cancel_and_wait([publisher])
        await self._store.flush()
        await self._beacon.goodbye(connection)

    async def _receive(self, connection: Connection) -> None:
        requests = self._settings.topic_root.requests()
        controller_status = self._settings.topic_root.controller_status()
        judge, carry_out, take_request = (
            self._intake.judge,
            self._publisher.carry_out,
            self._desk.take,
        )
        admin = self._admin
        async for message in connection:
            if message.topic == requests:
                await take_request(message)
                continue
            if message.topic == controller_status:
                self._beacon.observe(message.payload, message.retained)  # then the sync's
            if admin is not None and message.topic == CONTROL_RESPONSE_TOPIC:
                admin.take(message.payload)
                continue
            taken = judge(message.topic, message.payload, message.retained)
            if taken is not None:
                await carry_out(taken.judgement, taken.effects)

    async def _subscribe(self, connection: Connection) -> None:
        if self._admin is not None:
            await connection.subscribe(CONTROL_RESPONSE_TOPIC)
            self._admin.attach(connection)
        await self._sync.subscribe(connection, self._beacon.birth)
        await self._finish_sync()
        if self._ids is not None:
            await self._ids.lock_out_retired(self._ops)

    async def _sync_deadline(self) -> None:
        await asyncio.sleep(SYNC_TIMEOUT)
        if self._sync.syncing:
            log.warning("no echo of the birth message; re-publishing views anyway")
            await self._finish_sync()

    async def _finish_sync(self) -> None:
        """Re-publish every view the broker lacks or holds wrong (it may have lost them),
        clear those of retired environments, and send what waited for the sync."""
        chosen = self._sync.finish(self._ops.expected_views())
        if chosen is None:
            return
        for env, view in chosen:
            await self._publisher.send_view(env, view)
        log.info("retained state synchronised", envs=len(self._core), republished=len(chosen))
        await self._publisher.carry_out(None, self._ops.after_sync())
        self._sync.synced.set()

    async def _tick(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        last_tick = loop.time()
        while True:
            wait = self._core.seconds_until_next()
            await asyncio.sleep(TICK_CAP if wait is None else min(wait, TICK_CAP))
            if connection.backlog > BACKLOG_LIMIT and loop.time() - last_tick < MAX_DEFER:
                # Far behind the broker (a retained flood): the heartbeats that keep
                # environments online may be waiting in the queue. Catch up first.
                continue
            last_tick = loop.time()
            judgement = self._core.tick()
            await self._publisher.carry_out(judgement or None, None)
            deadline = self._ops.next_deadline()
            if deadline is not None and deadline <= self._clock.time():
                await self._publisher.carry_out(None, self._ops.tick())
            await self._correct_views()

    async def _correct_views(self) -> None:
        due = self._views.due()
        for env in due:
            await self._publisher.send_view(env, self._ops.expected_view(env))
        if due:
            log.warning("views written by someone else put right", envs=due[:10], count=len(due))

    async def _refresh_status(self, connection: Connection) -> None:
        await self._beacon.keep(connection, self._settings.stats_interval, self._sync.synced)


def events_client_id(settings: ControllerSettings) -> str:
    """The client id of the persistent events session: random, kept beside the database
    (0600), so that it survives restarts and nobody can guess it. A guessable one would let
    any identity without a bound client id (an operator's) connect under it, take the
    session over and receive the events the broker keeps for the controller."""
    if str(settings.db_path) == ":memory:":
        return f"edgeplane-events-{secrets.token_hex(8)}"
    path = settings.db_path.parent / EVENTS_ID_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if not (len(token) == 16 and all(c in "0123456789abcdef" for c in token)):
        token = secrets.token_hex(8)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(token + "\n")
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc}") from exc
    return f"edgeplane-events-{token}"


class EventLink:
    """The events session. An event is acknowledged to the broker only once what it
    changed is committed (:class:`CommittedAcks`): a controller killed at any moment finds
    it stored, or gets it again from its session."""

    def __init__(self, parts: DaemonParts) -> None:
        self._settings = parts.settings
        self._client_id = events_client_id(parts.settings)
        self._intake = parts.intake
        self._publisher = parts.publisher
        self._store = parts.store

    def connection(self) -> Connection:
        return Connection(
            self._settings.broker,
            self._client_id,
            clean_start=False,
            session_expiry=EVENT_SESSION_EXPIRY,
            manual_ack=True,
        )

    async def session(self, connection: Connection, stop: asyncio.Event) -> None:
        await connection.subscribe(self._settings.topic_root.all_events())
        acks = CommittedAcks(connection, self._store)
        await until_stopped(self._receive(connection, acks), stop, acks.run())
        await self._store.flush()
        acks.send_committed()  # what this session took and stored: not sent again

    async def _receive(self, connection: Connection, acks: CommittedAcks) -> None:
        judge, carry_out, store = self._intake.judge, self._publisher.carry_out, self._store
        async for message in connection:
            taken = judge(message.topic, message.payload, message.retained)
            number = store.submitted  # nothing of its own: after what came before it
            if taken is not None:
                number = max(number, await carry_out(taken.judgement, taken.effects))
            acks.after(message, number)


class CommittedAcks:
    """Acknowledges each message, in the order received, once the store has committed the
    writes numbered up to what it changed."""

    def __init__(self, connection: Connection, store: Store) -> None:
        self._connection = connection
        self._store = store
        self._pending: collections.deque[tuple[Receipt, int]] = collections.deque()
        self._more = asyncio.Event()

    def after(self, message: Message, number: int) -> None:
        self._pending.append((message.receipt, number))
        self._more.set()

    async def run(self) -> None:
        while True:
            await self._more.wait()
            self._more.clear()
            while self._pending:
                number = self._pending[0][1]
                if self._store.committed < number:
                    self._store.hurry()
                    await self._store.wait_committed(number)
                self.send_committed()

    def send_committed(self) -> None:
        pending, committed, ack = self._pending, self._store.committed, self._connection.ack
        while pending and pending[0][1] <= committed:
            ack(pending.popleft()[0])


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until done: on Python 3.11 a cancellation that races a completing
    ``asyncio.wait_for`` (inside aiomqtt's publish) can be swallowed."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


async def until_stopped(
    work: Coroutine[Any, Any, None],
    stop: asyncio.Event,
    helper: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Run ``work`` (and ``helper`` beside it) until one ends (its exception propagates)
    or ``stop`` is set."""
    task = asyncio.create_task(work, name="receiver")
    running = [task, asyncio.create_task(stop.wait(), name="stop")]
    if helper is not None:
        running.append(asyncio.create_task(helper, name="acks"))
    try:
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(running)
    for done in running:
        if not done.cancelled():
            done.result()
