"""The controller's presence service: the thin shell around the pure core.

One connection loop (reconnecting with capped, jittered backoff) runs, per connection:

``receiver``   decodes every message with the shared codecs, judges it (pure, cheap) and
               hands the judgement to the store's bounded queue, and its views and alerts
               to the outbox;
``publisher``  publishes the outbox in order once the store has committed what each item
               shows, with a bounded number of publishes in flight;
``ticker``     asks the core for time-driven judgements (heartbeat timeouts, flap and
               identity expiry) when the next one falls due;
``stats``      refreshes the retained controller status with its counters;
``requests``   a few workers that answer operator requests (MQTT 5 request/response) off
               the receive path, once the retained state is synchronised.

Agents' events arrive on a second connection with a persistent session (a fixed client id
per topic root, clean start off): the broker keeps the events published while the
controller is down or cut off, so a deployment in flight is followed to its end across a
controller restart. Each event is logged once (dedupe by env, src, seq) and moves its
deployment on (:mod:`controller.core.operations`).

After each (re)subscription the broker delivers the retained statuses and views. Until the
echo of our own birth message comes back (everything retained was delivered before it), the
retained views are collected; then every view that the broker lacks or holds wrong is
re-published, and no other: a restart produces no view messages for unchanged
environments.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.badinput import BadInput
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.operations import CONTROLLER_SRC, Effects, Operations, Outgoing
from edgeplane.controller.core.presence import Judgement, Presence, Transition
from edgeplane.controller.daemon.requests import RequestHandler, failed
from edgeplane.controller.daemon.settings import ControllerSettings
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.controller.mqtt import make_client, unique_client_id
from edgeplane.shared import __version__
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.codec import CONTROLLER_STATUS, EVENT, STATUS, VIEW, check_env, encode
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import AgentStatus, Alert, ControllerStatus, EnvView, OnlineStatus
from edgeplane.shared.rpc import REQUEST_EXPIRY, Reply
from edgeplane.shared.topics import TopicKind

__all__ = ["PresenceService"]

PUBLISH_WINDOW: Final = 100  # publishes in flight at once (bounded: no flood at startup)
OUTBOX_SIZE: Final = 20_000
SYNC_TIMEOUT: Final = 30.0  # give up waiting for the birth echo after this long
SUBSCRIBE_TIMEOUT: Final = 60.0  # a broker busy sending a fleet's retained state is slow
TICK_CAP: Final = 0.1  # never sleep longer than this between ticks
BACKLOG_LIMIT: Final = 500  # received messages not yet judged, above which ticks wait
MAX_DEFER: Final = 5.0  # ... but never longer than this
DRAIN_TIMEOUT: Final = 10.0
REQUEST_WORKERS: Final = 4
REQUEST_QUEUE: Final = 1000
RECENT_REQUESTS: Final = 4096  # correlation data remembered to run a re-delivery once
EVENT_SESSION_EXPIRY: Final = 7 * 86_400  # seconds the broker keeps events for us
MAX_TOPIC_BYTES: Final = 65_535

log = structlog.get_logger("controller")


class Taken(NamedTuple):
    """What one received message changed: presence, and/or rows and messages."""

    judgement: Judgement | None
    effects: Effects | None


@dataclass(frozen=True, slots=True)
class PendingRequest:
    payload: bytes
    response_topic: str
    correlation: bytes | None


class PresenceService:
    """``await PresenceService(settings).run(stop)`` runs until ``stop`` is set."""

    def __init__(self, settings: ControllerSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._root = settings.topic_root
        self.boot = uuid.uuid4().hex[:16]
        self.started = self._clock.time()
        self.core = Presence(
            self._clock,
            FlapDetector(settings.flap_window, settings.flap_high, settings.flap_low),
            IdentityWatch(settings.identity_window, settings.identity_quiet),
        )
        self.bad = BadInput(self._clock)
        self._outbox: asyncio.Queue[tuple[int, Outgoing]] = asyncio.Queue(OUTBOX_SIZE)
        self._unsent: list[Outgoing] = []  # taken from the outbox, not yet acknowledged
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)
        self._syncing = False
        self._echo = asyncio.Event()  # our birth came back: what was retained is all here
        self._broker_views: dict[str, EnvView | None] = {}
        self._sent_while_syncing: set[str] = set()
        self._synced = asyncio.Event()  # requests wait for the retained state
        self._requests: asyncio.Queue[PendingRequest] = asyncio.Queue(REQUEST_QUEUE)
        self.ops = Operations(self._root, self._clock, self.core, command_ttl=settings.command_ttl)
        self._handler: RequestHandler | None = None
        self._recent_requests: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    # --- lifecycle ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        db = self.settings.db_path
        async with open_store(db) as store:
            since = self._clock.time() - self.settings.flap_window
            records, recent = await store.load(transitions_since=since)
            self.core.restore(records, recent)
            await self._restore_operations(store)
            log.info(
                "controller starting",
                db=str(db),
                broker=str(self.settings.broker),
                topic_root=str(self._root),
                restored=len(records),
                records=len(self.ops.registry),
                deployments=len(self.ops.book),
                boot=self.boot,
            )
            async with asyncio.TaskGroup() as tasks:
                events = tasks.create_task(self._event_loop(store, stop), name="events")
                await self._connection_loop(store, stop)
                await events
        log.info("controller stopped", **self._counters())

    async def _restore_operations(self, store: Store) -> None:
        """Records, inventories, deployments in progress and the event streams already
        logged; and the default cloud environment, made sure of."""
        self.ops = Operations(
            self._root,
            self._clock,
            self.core,
            command_ttl=self.settings.command_ttl,
            records=await store.records(),
            inventories=await store.inventories(),
            deployments=await store.active_deployments(),
            seen=await store.stream_heads(),
            controller_seq=await store.last_seq(CONTROLLER_SRC),
        )
        self._handler = RequestHandler(self.ops, store, max_payload=self.settings.max_payload)
        await self._carry_out(store, None, self.ops.ensure_default())

    async def _connection_loop(self, store: Store, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while not stop.is_set():
            failure: BaseException | None = None
            try:
                async with self._client() as client:
                    backoff.reset()
                    log.info("connected to the broker", broker=str(self.settings.broker))
                    await self._session(client, store, stop)
                    await self._say_goodbye(client, store)
                    return
            except* aiomqtt.MqttError as group:
                failure = group.exceptions[0]
            delay = backoff.next_delay()
            log.warning(
                "broker connection lost; retrying",
                broker=str(self.settings.broker),
                error=str(failure),
                retry_in=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        await store.flush()

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self._root.controller_status(),
            encode(self._status("offline")),
            qos=1,
            retain=True,
        )
        client = make_client(
            self.settings.broker, unique_client_id("edgeplane-controller"), will=will
        )
        client.pending_calls_threshold = PUBLISH_WINDOW + 50
        return client

    async def _session(self, client: aiomqtt.Client, store: Store, stop: asyncio.Event) -> None:
        self.core.rearm()  # silence while we could not listen proves nothing
        self._start_sync()
        async with asyncio.TaskGroup() as tasks:
            # The receiver runs before we subscribe: the retained flood is judged as it
            # arrives instead of piling up behind the SUBACK.
            workers = [
                tasks.create_task(self._receive(client, store), name="receiver"),
                tasks.create_task(self._subscribe(client, store), name="subscriber"),
                tasks.create_task(self._tick(client, store), name="ticker"),
                tasks.create_task(self._refresh_status(client), name="stats"),
                tasks.create_task(self._sync_deadline(store), name="sync-deadline"),
            ]
            workers += [
                tasks.create_task(self._serve_requests(store), name=f"requests-{number}")
                for number in range(REQUEST_WORKERS)
            ]
            publisher = tasks.create_task(self._publish(client, store), name="publisher")
            await stop.wait()
            await _cancel_and_wait(workers)
            await store.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), DRAIN_TIMEOUT)
            await _cancel_and_wait([publisher])

    def _start_sync(self) -> None:
        self._syncing = True
        self._synced.clear()
        self._echo.clear()
        self._broker_views.clear()
        self._sent_while_syncing.clear()

    async def _subscribe(self, client: aiomqtt.Client, store: Store) -> None:
        """Subscribe in two rounds, each ended by the echo of a birth message (the broker
        sends a subscription's retained messages before anything published after it): the
        statuses first, then the views, so the two retained floods never pile up at once."""
        root = self._root
        qos1 = SubscribeOptions(qos=1)
        statuses = [
            (root.all_status(), qos1),
            (root.controller_status(), qos1),
            (root.requests(), qos1),
        ]
        await client.subscribe(statuses, timeout=SUBSCRIBE_TIMEOUT)
        await self._publish_birth(client)
        await self._echo.wait()
        self._echo.clear()
        # Views only serve the comparison: QoS 0 spares the broker's in-flight window and
        # a PUBACK each; no local: not the ones we publish ourselves.
        views = SubscribeOptions(qos=0, noLocal=True)
        await client.subscribe(root.all_views(), options=views, timeout=SUBSCRIBE_TIMEOUT)
        await self._publish_birth(client)
        await self._echo.wait()
        await self._finish_sync(store)

    async def _publish_birth(self, client: aiomqtt.Client) -> None:
        await client.publish(
            self._root.controller_status(),
            encode(self._status("online")),
            qos=1,
            retain=True,
            timeout=SUBSCRIBE_TIMEOUT,
        )

    async def _say_goodbye(self, client: aiomqtt.Client, store: Store) -> None:
        """Clean stop: the retained controller status says offline, with the last counts."""
        await store.flush()
        await client.publish(
            self._root.controller_status(), encode(self._status("offline")), qos=1, retain=True
        )

    # --- receiving ----------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client, store: Store) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic = message.topic.value
            if topic == self._root.requests():
                await self._take_request(topic, payload, message.retain, message.properties)
                continue
            taken = self._judge(topic, payload, message.retain)
            if taken is not None:
                await self._carry_out(store, taken.judgement, taken.effects)

    async def _carry_out(
        self, store: Store, judgement: Judgement | None, effects: Effects | None
    ) -> int:
        """Store, then (once committed) publish; returns the store number to wait for."""
        number = 0
        if judgement:
            number = await store.submit(judgement)
            await self._queue_outgoing(number, judgement)
            self._log_judgement(judgement)
        if effects is not None:
            if effects.writes:
                number = await store.submit(effects.writes)
            for item in effects.outgoing:
                await self._outbox.put((number, item))
        return number

    def _judge(self, topic: str, payload: bytes, retained: bool) -> Taken | None:
        """Decode and judge one message; None when it changes nothing. Never raises."""
        try:
            parsed = self._root.parse(topic)
            limit = self.settings.max_payload
            if parsed.kind is TopicKind.STATUS:
                status = STATUS.decode(payload, limit=limit)
                check_env(status.env, parsed.env or "")
                judgement = self.core.on_status(status, retained=retained)
                if judgement.stale:
                    log.debug("stale offline ignored", env=status.env, bdseq=status.bdseq)
                came_online = any(t.to_status == "online" for t in judgement.transitions)
                if came_online or _reports_inventory(status):
                    return Taken(judgement, self.ops.after_status(status, came_online))
                return Taken(judgement, None)  # a plain heartbeat: the hot path
            if parsed.kind is TopicKind.EVENTS:
                return self._take_event(parsed.env or "", payload)
            if parsed.kind is TopicKind.VIEW:
                self._note_broker_view(parsed.env or "", payload)
                return None
            if parsed.kind is TopicKind.CONTROLLER_STATUS:
                self._note_controller_status(payload)
        except InvalidTopic as exc:
            self._drop("bad-topic", topic, str(exc))
        except DecodeError as exc:
            self._drop(exc.reason, topic, exc.detail)
        return None

    def _take_event(self, env: str, payload: bytes) -> Taken | None:
        event = EVENT.decode(payload, limit=self.settings.max_payload)
        check_env(event.env, env)
        if event.src == CONTROLLER_SRC:
            return None  # our own, stored before it was published
        effects = self.ops.on_event(event)
        if effects is None:
            log.debug("duplicate event", env=event.env, src=event.src, seq=event.seq)
            return None
        return Taken(None, effects)

    # --- events: their own connection, with a persistent session --------------------------
    async def _event_loop(self, store: Store, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)
        while not stop.is_set():
            try:
                async with self._event_client() as client:
                    backoff.reset()
                    await client.subscribe(self._root.all_events(), qos=1)
                    await _until_stopped(self._receive_events(client, store), stop)
                    return
            except aiomqtt.MqttError as exc:
                log.debug("event connection lost; retrying", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_delay())

    def _event_client(self) -> aiomqtt.Client:
        digest = hashlib.sha256(str(self._root).encode()).hexdigest()[:12]
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = EVENT_SESSION_EXPIRY
        return make_client(
            self.settings.broker,
            f"edgeplane-events-{digest}",
            clean_start=False,
            properties=properties,
        )

    async def _receive_events(self, client: aiomqtt.Client, store: Store) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            taken = self._judge(message.topic.value, payload, message.retain)
            if taken is not None:
                await self._carry_out(store, taken.judgement, taken.effects)

    # --- requests -----------------------------------------------------------------------
    async def _take_request(
        self, topic: str, payload: bytes, retained: bool, properties: Any
    ) -> None:
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        if not isinstance(response_topic, str) or not response_topic:
            self._drop("no-response-topic", topic, "a request without a response topic")
            return
        if not _publishable(response_topic):
            self._drop("bad-response-topic", topic, f"response topic {response_topic[:100]!r}")
            return
        if retained:  # a stale request left on the broker must not run at every start
            self._drop("retained-request", topic, "a retained request")
            return
        if correlation and self._seen_before((response_topic, bytes(correlation))):
            # QoS 1 may deliver a request twice: the first is answered, a deploy runs once
            log.debug("duplicate request ignored", response_topic=response_topic[:200])
            return
        pending = PendingRequest(payload, response_topic, correlation)
        try:
            self._requests.put_nowait(pending)
        except asyncio.QueueFull:
            busy = failed("unavailable", "the controller is too busy; try again in a moment")
            await self._outbox.put((0, self._reply_message(pending, busy)))

    def _seen_before(self, key: tuple[str, bytes]) -> bool:
        """Whether this (response topic, correlation data) came lately; remembers it."""
        if key in self._recent_requests:
            return True
        self._recent_requests[key] = None
        if len(self._recent_requests) > RECENT_REQUESTS:
            self._recent_requests.popitem(last=False)
        return False

    async def _serve_requests(self, store: Store) -> None:
        assert self._handler is not None
        while True:
            pending = await self._requests.get()
            await self._synced.wait()
            reply, effects = await self._handler.handle(pending.payload)
            number = await self._carry_out(store, None, effects)
            await self._outbox.put((number, self._reply_message(pending, reply)))

    def _reply_message(self, pending: PendingRequest, reply: Reply) -> Outgoing:
        return Outgoing(
            pending.response_topic,
            encode(reply),
            False,
            expiry=REQUEST_EXPIRY,
            correlation=pending.correlation,
        )

    def _drop(self, reason: str, topic: str, detail: str) -> None:
        decision = self.bad.drop(reason)
        if decision.log:
            log.warning(
                "bad input dropped",
                reason=reason,
                topic=topic[:200],
                detail=detail[:300],
                suppressed_before=decision.suppressed,
            )

    def _log_judgement(self, judgement: Judgement) -> None:
        for transition in judgement.transitions:
            _log_transition(transition)
        for edge in judgement.alerts:
            log.warning("alert", env=edge.env, kind=edge.kind, state=edge.state, detail=edge.detail)

    # --- the end of the retained messages -----------------------------------------------
    def _note_broker_view(self, env: str, payload: bytes) -> None:
        """A view the broker holds: collected while syncing. An empty one (cleared) is no
        error; garbage is counted like any other bad input, and ours replaces it."""
        if self._syncing:
            self._broker_views[env] = None
        if not payload:
            return
        view = VIEW.decode(payload, limit=self.settings.max_payload)
        check_env(view.env, env)
        if self._syncing:
            self._broker_views[env] = view

    def _note_controller_status(self, payload: bytes) -> None:
        if not payload:
            return  # cleared
        status = CONTROLLER_STATUS.decode(payload, limit=self.settings.max_payload)
        if self._syncing and status.boot == self.boot and status.status == "online":
            self._echo.set()

    async def _sync_deadline(self, store: Store) -> None:
        await asyncio.sleep(SYNC_TIMEOUT)
        if self._syncing:
            log.warning("no echo of the birth message; re-publishing views anyway")
            await self._finish_sync(store)

    async def _finish_sync(self, store: Store) -> None:
        """Re-publish every view the broker lacks or holds wrong (it may have lost them),
        clear those of retired environments, and send what waited for the sync."""
        if not self._syncing:
            return
        self._syncing = False
        republished = 0
        for env, view in self.ops.expected_views().items():
            if env in self._sent_while_syncing:
                continue
            held = self._broker_views.get(env)
            if view is None:
                if held is not None:
                    await self._outbox.put((0, Outgoing(self._root.view(env), b"", True)))
                    republished += 1
            elif not _same_judgement(held, view):
                await self._outbox.put((0, self._view_message(view)))
                republished += 1
        self._broker_views.clear()
        self._sent_while_syncing.clear()
        log.info("retained state synchronised", envs=len(self.core), republished=republished)
        await self._carry_out(store, None, self.ops.after_sync())
        self._synced.set()

    # --- publishing ---------------------------------------------------------------------
    async def _queue_outgoing(self, number: int, judgement: Judgement) -> None:
        for presence_view in judgement.views:
            view = self.ops.public_view(presence_view)
            if view is None:
                continue  # retired: its view stays cleared
            if self._syncing:
                self._sent_while_syncing.add(view.env)  # the broker will have this one
            await self._outbox.put((number, self._view_message(view)))
        for edge in judgement.alerts:
            await self._outbox.put((number, self._alert_message(edge)))

    async def _publish(self, client: aiomqtt.Client, store: Store) -> None:
        async with asyncio.TaskGroup() as in_flight:
            for item in self._take_unsent():
                await self._window.acquire()
                in_flight.create_task(self._publish_one(client, item, queued=False))
            while True:
                number, item = await self._outbox.get()
                try:
                    await store.wait_committed(number)
                    await self._window.acquire()
                except asyncio.CancelledError:
                    self._unsent.append(item)
                    self._outbox.task_done()
                    raise
                in_flight.create_task(self._publish_one(client, item, queued=True))

    async def _publish_one(self, client: aiomqtt.Client, item: Outgoing, *, queued: bool) -> None:
        try:
            await client.publish(
                item.topic, item.payload, qos=1, retain=item.retain, properties=_properties(item)
            )
        except (aiomqtt.MqttError, asyncio.CancelledError):
            self._unsent.append(item)
            raise
        finally:
            self._window.release()
            if queued:
                self._outbox.task_done()

    def _take_unsent(self) -> Iterator[Outgoing]:
        unsent, self._unsent = self._unsent, []
        return iter(unsent)

    def _view_message(self, view: EnvView) -> Outgoing:
        return Outgoing(self._root.view(view.env), encode(view), True)

    def _alert_message(self, edge: AlertEdge) -> Outgoing:
        alert = Alert(
            kind=edge.kind, state=edge.state, env=edge.env, ts=edge.at, detail=edge.detail[:256]
        )
        return Outgoing(self._root.alerts(edge.env), encode(alert), False)

    # --- time ---------------------------------------------------------------------------
    async def _tick(self, client: aiomqtt.Client, store: Store) -> None:
        loop = asyncio.get_running_loop()
        last_tick = loop.time()
        while True:
            wait = self.core.seconds_until_next()
            await asyncio.sleep(TICK_CAP if wait is None else min(wait, TICK_CAP))
            if len(client.messages) > BACKLOG_LIMIT and loop.time() - last_tick < MAX_DEFER:
                # Far behind the broker (a retained flood): the heartbeats that keep
                # environments online may be waiting in the queue. Catch up first.
                continue
            last_tick = loop.time()
            judgement = self.core.tick()
            await self._carry_out(store, judgement or None, None)
            deadline = self.ops.next_deadline()
            if deadline is not None and deadline <= self._clock.time():
                await self._carry_out(store, None, self.ops.tick())

    async def _refresh_status(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            await client.publish(
                self._root.controller_status(), encode(self._status("online")), qos=1, retain=True
            )
            log.info("controller stats", **self._counters())

    def _status(self, state: str) -> ControllerStatus:
        return ControllerStatus(
            status="online" if state == "online" else "offline",
            boot=self.boot,
            ver=__version__,
            since=self.started,
            envs=len(self.core),
            online=self.core.online_count(),
            stale=self.core.stale,
            dropped=self.bad.counts,
            duplicates=self.ops.seen.duplicates,
        )

    def _counters(self) -> dict[str, object]:
        return {
            "envs": len(self.core),
            "online": self.core.online_count(),
            "stale": self.core.stale,
            "dropped": self.bad.counts,
            "duplicates": self.ops.seen.duplicates,
        }


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until done: on Python 3.11 a cancellation that races a completing
    ``asyncio.wait_for`` (inside aiomqtt's publish) can be swallowed."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``work`` until it ends (its exception propagates) or ``stop`` is set."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel_and_wait([task, stopping])
    if not task.cancelled():
        task.result()


def _same_judgement(held: EnvView | None, ours: EnvView) -> bool:
    """Whether the broker's view says what ours says (``last_seen`` moves with every
    heartbeat and is not re-published for that alone)."""
    return held is not None and (
        held.status,
        held.since,
        held.flapping,
        held.reason,
        held.interval,
        held.registered,
    ) == (ours.status, ours.since, ours.flapping, ours.reason, ours.interval, ours.registered)


def _reports_inventory(status: AgentStatus) -> bool:
    return isinstance(status, OnlineStatus) and (
        status.models is not None or status.platform is not None
    )


def _properties(item: Outgoing) -> Properties | None:
    """MQTT 5 publish properties: a message expiry, a reply's correlation data."""
    if item.expiry is None and item.correlation is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if item.expiry is not None:
        properties.MessageExpiryInterval = item.expiry
    if item.correlation is not None:
        properties.CorrelationData = item.correlation
    return properties


def _publishable(topic: str) -> bool:
    """A topic one may publish to: no wildcards, no NUL, within MQTT's length."""
    return (
        not any(ch in topic for ch in "+#\x00")
        and len(topic.encode("utf-8", "replace")) <= MAX_TOPIC_BYTES
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
