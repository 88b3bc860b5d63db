"""The fleet simulator: many edge agents speaking the real edgeplane protocol from one process.

Each simulated agent has its own MQTT connection (client id = environment id), registers the
contract's will, subscribes to its ``cmd`` topic, publishes its retained online status with a
message expiry of about three intervals, heartbeats every interval from a random phase,
answers pings with pongs, and reconnects with capped, jittered backoff when it is dropped.
Connections come from :mod:`edge_agent.simulator.wire`: one ``asyncio.Protocol`` each and
one keepalive scheduler for all, so ten thousand idle agents cost little more than their sockets.

For benchmarks::

    async with Fleet(BrokerUrl.parse("mqtt://127.0.0.1:1883"), TopicRoot(), count=10_000,
                     interval=10, on_heartbeat=record) as fleet:
        await fleet.start()             # all connected, every first online acknowledged
        agent = fleet.agents[42]        # agent.env == "sim-00042"
        await agent.kill()              # no DISCONNECT: the broker publishes the will
        fleet.agents[7].freeze()        # heartbeats stop, the connection stays up
        fleet.agents[7].thaw()          # a heartbeat at once, then every interval again
    # leaving the block stops every agent still running cleanly (offline/shutdown)

``record(env, seq, t)`` is called for every heartbeat just before it is written, with
``t = time.monotonic()`` (a system-wide clock on Linux, comparable across processes).

With ``execution=Execution(state_root)`` the agents run deployments through the real
agent's command path instead of only answering pings: each gets, in
``state_root/{env}/``, the agent's :class:`~edge_agent.outbox.Outbox` (its event sink and
memory of command ids), a real :class:`~edge_agent.execution.executor.Executor` (preflight, steps as
subprocesses) and the :class:`~edge_agent.commands.CommandHandler` that feeds them, and
publishes the outbox's events in ``seq`` order as the agent does, deleting each on its
PUBACK and sending the rest again after a reconnect. Only the MQTT connection is the
simulator's own.

From the command line: ``edge-agent simulate --count N`` (or
``python -m edgeplane.edge_agent.simulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import heapq
import itertools
import random
import resource
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import structlog

from edgeplane.edge_agent.heartbeat import message_expiry
from edgeplane.edge_agent.simulator.wire import (
    ConnectionClosed,
    KeepaliveScheduler,
    Message,
    MqttClient,
    Properties,
    Will,
    WireError,
    connect,
)
from edgeplane.shared import __version__
from edgeplane.shared import settings as s
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.codec import COMMAND, encode
from edgeplane.shared.errors import DecodeError, SettingsError
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.messages import CommandRejected, OfflineStatus, OnlineStatus, Pong
from edgeplane.shared.topics import TopicRoot

if TYPE_CHECKING:
    from edgeplane.edge_agent.commands import CommandHandler
    from edgeplane.edge_agent.execution.executor import Executor
    from edgeplane.edge_agent.outbox import Outbox

__all__ = [
    "SETTINGS",
    "ConnectPacer",
    "Execution",
    "Fleet",
    "FleetStats",
    "HeartbeatHook",
    "SimulatedAgent",
    "add_arguments",
    "raise_open_files_limit",
    "run",
]

log = structlog.get_logger("edgeplane.edge_agent.simulator.fleet")

HeartbeatHook = Callable[[str, int, float], None]
"""Called as ``hook(env, seq, monotonic_publish_time)`` for every heartbeat published."""

GOODBYE_TIMEOUT: Final = 5.0  # how long a clean stop waits for the PUBACK of its offline
TAKEOVER_PAUSE: Final = 60.0  # after "session taken over": another runtime holds our identity
REPORT_EVERY: Final = 5.0  # seconds between progress / failure summaries in the log
SPARE_FILES: Final = 64  # open files the process needs besides one socket per agent
DISK_THREADS: Final = 16  # threads deleting acknowledged events from the agents' outboxes
EVENT_WINDOW: Final = 4  # outbox events awaiting PUBACK at once, per agent (heartbeats too)
WINDOW_RETRY: Final = 0.05  # seconds before trying again when the in-flight window is full

StopMode = Literal["shutdown", "kill"]


@dataclass
class FleetStats:
    """Counters over the fleet's life, for summaries and benchmarks."""

    connections: int = 0  # connections that got as far as their first online acknowledged
    failures: int = 0  # connection attempts that failed, and connections lost
    heartbeats: int = 0  # online messages acknowledged (the first of each connection too)
    events: int = 0  # pong / rejected events acknowledged
    refused: int = 0  # heartbeats the broker refused, or that found the in-flight window full
    last_error: str = ""


@dataclass(frozen=True)
class Execution:
    """Run deployments with the real agent's command path; each agent's state (outbox,
    executor record, deployment working directories) in ``state_root/{env}/``."""

    state_root: Path


class _CommandPath:
    """One simulated agent's real command path: outbox, executor and command handler, and
    which outbox events are on their way on the current connection."""

    def __init__(self, env: str, state_dir: Path, wake: Callable[[], None]) -> None:
        from edgeplane.edge_agent.commands import CommandHandler
        from edgeplane.edge_agent.execution.executor import Executor
        from edgeplane.edge_agent.outbox import Outbox
        from edgeplane.shared.clock import SystemClock

        state_dir.mkdir(parents=True, exist_ok=True)
        clock = SystemClock()
        self.outbox: Outbox = Outbox(state_dir, env, clock=clock, on_emit=wake)
        self.executor: Executor = Executor(
            env,
            state_dir=state_dir,
            models_dir=None,
            secrets=None,
            endpoints={},
            sink=self.outbox,
            clock=clock,
        )
        self.handler: CommandHandler = CommandHandler(
            env, clock, self.outbox, commands=self.outbox, executor=self.executor
        )
        self.executor.start()
        self.sent_up_to = 0  # the newest seq published on this connection
        self.in_flight = 0
        self.connection = 0  # events acknowledged on an older connection count for nothing
        self.acknowledged: list[int] = []  # PUBACKed, to delete in one transaction

    def new_connection(self) -> None:
        """Everything unacknowledged goes out again, oldest first."""
        self.connection += 1
        self.sent_up_to = 0
        self.in_flight = 0

    def close(self) -> None:
        self.executor.close()
        self.outbox.close()


class ConnectPacer:
    """Hands out connection slots at most ``rate`` a second, so a whole fleet (re)connecting
    at once does not overwhelm the broker."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"connect rate must be positive, not {rate}")
        self._gap = 1.0 / rate
        self._next = float("-inf")

    def reserve(self, now: float) -> float:
        """Take the next free slot; return how long to wait for it."""
        slot = max(now, self._next)
        self._next = slot + self._gap
        return slot - now


class SimulatedAgent:
    """One simulated edge agent with its own MQTT connection. Made by :class:`Fleet`.

    ``env`` is its environment id (and MQTT client id), ``bdseq`` the number of its current
    (or last) connection, ``seq`` the next heartbeat's sequence number, ``online`` whether
    it is connected and has announced itself, ``frozen`` whether heartbeats are held back.
    """

    __slots__ = (
        "_backoff",
        "_beat_token",
        "_client",
        "_cmd_topic",
        "_commands",
        "_events_topic",
        "_fleet",
        "_flush_due",
        "_settled",
        "_status_topic",
        "_stop_mode",
        "_task",
        "_wake",
        "bdseq",
        "env",
        "event_seq",
        "frozen",
        "online",
        "seq",
    )

    def __init__(self, fleet: Fleet, env: str) -> None:
        self._fleet = fleet
        self.env = env
        self.bdseq = fleet.bdseq_base - 1  # taken anew (+1) for every connection
        self.seq = 0
        self.event_seq = 0
        self.online = False
        self.frozen = False
        root = fleet.root
        self._status_topic = root.status(env)
        self._cmd_topic = root.cmd(env)
        self._events_topic = root.events(env)
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._stop_mode: StopMode | None = None
        self._backoff: Backoff | None = None
        self._beat_token = 0  # beats scheduled under an older token are stale
        self._settled = False
        self._flush_due = False
        self._commands: _CommandPath | None = None

    def _attach_commands(self, execution: Execution, loop: asyncio.AbstractEventLoop) -> None:
        """Give this agent the real command path (in the fleet's loop)."""
        if self._commands is None:
            self._commands = _CommandPath(
                self.env, execution.state_root / self.env, lambda: self._wake_flush(loop)
            )

    def _detach_commands(self) -> None:
        path, self._commands = self._commands, None
        if path is not None:
            path.close()

    # control ------------------------------------------------------------------------------
    async def kill(self) -> None:
        """Crash: close the socket without DISCONNECT (the broker publishes the will, an
        ``offline``/``connection-lost`` with this connection's ``bdseq``); never reconnect."""
        if self._stop_mode is None:
            self._stop_mode = "kill"
        if self._client is not None:
            self._client.abort()
        await self._finished()

    async def stop(self) -> None:
        """Stop cleanly: publish ``offline``/``shutdown``, wait for its PUBACK, DISCONNECT."""
        if self._stop_mode is None:
            self._stop_mode = "shutdown"
        await self._finished()

    def freeze(self) -> None:
        """Hold back heartbeats; the connection (and its keepalive pings) stays up."""
        self.frozen = True

    def thaw(self) -> None:
        """Resume heartbeats, the first one at once (like a process that was stopped)."""
        if self.frozen:
            self.frozen = False
            if self.online:
                self._schedule_beats(first_in=0.0)

    def stopping(self) -> bool:
        """A stop or kill was asked for: the agent will not (re)connect."""
        return self._stop_mode is not None

    async def _finished(self) -> None:
        self._wake_up()
        if self._task is not None:
            await asyncio.wait({self._task})

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _pause(self, delay: float | None, closed: asyncio.Future[Any] | None = None) -> None:
        """Sleep ``delay`` seconds (None: forever), less if woken by a stop or the
        connection closes."""
        wake = self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait(
                (wake,) if closed is None else (wake, closed),
                timeout=delay,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._wake = None

    # life ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        fleet = self._fleet
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping():
                await self._pause(fleet.pacer.reserve(loop.time()))
                if self.stopping():
                    break
                error = await self._one_connection()
                if self.stopping():
                    break
                if error is not None:
                    fleet._note_failure(self.env, error)
                await self._pause(self._retry_delay(error))
        finally:
            fleet._settle(self)

    def _retry_delay(self, error: WireError | None) -> float:
        if self._backoff is None:
            self._backoff = Backoff(initial=1.0, cap=60.0, rng=self._fleet.rng)
        if error is not None and error.reason_code == 0x8E:
            return TAKEOVER_PAUSE
        return self._backoff.next_delay()

    async def _one_connection(self) -> WireError | None:
        """Connect, announce, heartbeat until the connection ends or a stop is asked for.
        Returns why the connection ended (None after a clean stop)."""
        fleet = self._fleet
        self.bdseq += 1
        will = OfflineStatus(env=self.env, bdseq=self.bdseq, reason="connection-lost")
        try:
            client = await connect(
                fleet.broker,
                client_id=self.env,
                keepalive=fleet.keepalive,
                will=Will(self._status_topic, encode(will), qos=1, retain=True),
                on_message=self._on_message,
                pinger=fleet.pinger,
                ssl_context=fleet.ssl_context,
            )
        except WireError as exc:
            return exc
        self._client = client
        try:
            if not self.stopping():
                await client.subscribe(self._cmd_topic, qos=1)
                self.seq = 0
                await self._publish_online(client)
                self._announced()
                if self._commands is not None:
                    self._commands.new_connection()
                    self._send_events()
                self._schedule_beats(first_in=fleet.rng.uniform(0, fleet.interval))
                while not self.stopping() and not client.closed.done():
                    await self._pause(None, client.closed)
            if self._stop_mode == "shutdown":
                await self._goodbye(client)
                return None
            client.abort()
            return client.closed.result()
        except WireError as exc:
            client.abort()
            return exc
        finally:
            self._client = None
            if self.online:
                self.online = False
                fleet.online -= 1

    def _announced(self) -> None:
        self.online = True
        self._fleet.online += 1
        self._fleet.stats.connections += 1
        if self._backoff is not None:
            self._backoff.reset()
        self._fleet._settle(self)

    # heartbeats ---------------------------------------------------------------------------
    def _schedule_beats(self, first_in: float) -> None:
        """Start a new series of heartbeats (replacing any older one) in ``first_in`` s."""
        self._beat_token += 1
        self._fleet._schedule_beat(self, first_in, self._beat_token)

    def _beat(self, due: float, now: float, token: int) -> float | None:
        """Called by the fleet's heartbeat schedule: publish (unless frozen) and return
        when the next heartbeat is due, or None when this series is over."""
        client = self._client
        if token != self._beat_token or client is None or client.is_closed or self.stopping():
            return None
        if not self.frozen:
            self._send_heartbeat(client)
        interval = self._fleet.interval
        # Keep the beat on its grid unless it is so late that the grid is lost.
        return due + interval if now < due + interval else now + interval

    def _online_status(self) -> OnlineStatus:
        fleet = self._fleet
        rng = fleet.rng
        status = OnlineStatus(
            env=self.env,
            bdseq=self.bdseq,
            seq=self.seq,
            interval=fleet.interval,
            boot=fleet.boot,
            cpu=round(rng.uniform(1, 60), 1),
            mem=round(rng.uniform(20, 70), 1),
            disk=round(rng.uniform(10, 90), 1),
            ver=__version__,
            up=int(time.monotonic() - fleet.created),
        )
        self.seq += 1
        if fleet.on_heartbeat is not None:
            fleet.on_heartbeat(self.env, status.seq, time.monotonic())
        return status

    async def _publish_online(self, client: MqttClient) -> None:
        """The first online message of a connection, acknowledged before we go on."""
        payload = encode(self._online_status())
        properties = self._fleet.online_properties
        await client.publish(self._status_topic, payload, qos=1, retain=True, properties=properties)
        self._fleet.stats.heartbeats += 1

    def _send_heartbeat(self, client: MqttClient) -> None:
        payload = encode(self._online_status())
        fleet = self._fleet
        try:
            client.publish_nowait(
                self._status_topic,
                payload,
                qos=1,
                retain=True,
                properties=fleet.online_properties,
                on_done=fleet._heartbeat_done,
            )
        except WireError as exc:
            fleet._heartbeat_done(exc)

    async def _goodbye(self, client: MqttClient) -> None:
        """The contract's clean stop: offline/shutdown acknowledged, then DISCONNECT."""
        offline = OfflineStatus(env=self.env, bdseq=self.bdseq, reason="shutdown")
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await client.publish(self._status_topic, encode(offline), qos=1, retain=True)
        except (WireError, TimeoutError) as exc:
            log.warning("clean stop failed, dropping the connection", env=self.env, error=str(exc))
            client.abort()
            return
        await client.disconnect()

    # commands -----------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        if message.topic != self._cmd_topic:
            return
        if self._commands is not None:
            self._commands.handler.handle(message.payload)  # its events reach the outbox
            return
        self.event_seq += 1
        event: Pong | CommandRejected
        try:
            command = COMMAND.decode(message.payload)
        except DecodeError as exc:
            event = CommandRejected(env=self.env, seq=self.event_seq, reason=str(exc)[:256])
        else:
            event = Pong(env=self.env, seq=self.event_seq, cmd=command.id)
        client = self._client
        if client is not None:
            self._fleet._spawn(self._send_event(client, event), f"sim-event {self.env}")

    def _wake_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """The outbox has a new event (emitted on any thread): publish it from the loop."""
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon_threadsafe(self._send_events)

    def _send_events(self) -> None:
        """Publish outbox events not yet sent on this connection, oldest first, at most
        :data:`EVENT_WINDOW` awaiting their PUBACK (as the agent does)."""
        self._flush_due = False
        path, client = self._commands, self._client
        if path is None or client is None or client.is_closed or not self.online:
            return  # sent after the next online
        while path.in_flight < EVENT_WINDOW and path.outbox.last_seq > path.sent_up_to:
            batch = path.outbox.pending(path.sent_up_to, EVENT_WINDOW - path.in_flight)
            if not batch:
                path.sent_up_to = path.outbox.last_seq
                return
            for seq, payload in batch:
                done = functools.partial(self._event_done, path.connection, seq)
                try:
                    client.publish_nowait(self._events_topic, payload, qos=1, on_done=done)
                except WireError:  # the in-flight window is full (heartbeats): soon again
                    asyncio.get_running_loop().call_later(WINDOW_RETRY, self._send_events)
                    return
                path.sent_up_to = seq
                path.in_flight += 1

    def _event_done(self, connection: int, seq: int, error: WireError | None) -> None:
        path = self._commands
        if path is None or connection != path.connection:
            return
        path.in_flight -= 1
        if error is None:
            self._fleet._forget_event(path, seq)
            self._fleet.stats.events += 1
        self._send_events()

    async def _send_event(self, client: MqttClient, event: msgspec.Struct) -> None:
        try:
            await client.publish(self._events_topic, encode(event), qos=1)
        except WireError as exc:
            log.warning("event not delivered", env=self.env, event=repr(event), error=str(exc))
        else:
            self._fleet.stats.events += 1


class Fleet:
    """``count`` simulated agents in this process, one MQTT connection each.

    An async context manager: entering it starts the shared keepalive scheduler (and raises
    the soft open-files limit to the hard one), :meth:`start` connects the agents, leaving
    it stops every agent still running cleanly.

    Environment ids are ``{prefix}-{i:05d}`` for ``i`` in ``range(count)``; ``bdseq`` starts
    at the current unix time (so it differs across runs) and grows by one per connection;
    all agents share one boot id per fleet (``fleet.boot``).

    Parameters: ``broker`` and ``root`` (default ``edgeplane/v1``) say where; ``count``
    agents heartbeat every ``interval`` seconds (their online messages expire after about
    three intervals) and connect at most ``connect_rate`` a second, fleet-wide, at start
    and on every reconnect. ``on_heartbeat(env, seq, t)`` is called for every heartbeat
    just before it is written, ``t`` from ``time.monotonic()``. ``keepalive`` is the MQTT
    keepalive; ``beat_tick`` the granularity of the fleet's one heartbeat timer.
    ``execution`` gives every agent the real command path (see the module docstring); its
    executors' threads and outboxes are closed when the fleet is left.

    For benchmarks: ``agents`` (a list of :class:`SimulatedAgent`, in id order),
    ``online`` (how many are connected and announced now), ``stats`` (:class:`FleetStats`),
    :meth:`start`, :meth:`stop`.
    """

    def __init__(
        self,
        broker: BrokerUrl,
        root: TopicRoot | None = None,
        count: int = 1,
        interval: float = 10.0,
        prefix: str = "sim",
        connect_rate: float = 500.0,
        *,
        on_heartbeat: HeartbeatHook | None = None,
        keepalive: int = 30,
        beat_tick: float = 0.02,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
        execution: Execution | None = None,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        if not 0 < interval <= 86_400:
            raise ValueError(f"interval must be within (0, 86400] seconds, not {interval}")
        self.broker = broker
        self.root = root or TopicRoot()
        self.interval = interval
        self.keepalive = keepalive
        self.on_heartbeat = on_heartbeat
        self.ssl_context = ssl_context
        self.rng = rng or random.Random()
        self.execution = execution
        # Deleting an acknowledged event is a synchronous SQLite commit (an fsync): a real
        # agent waits for its own disk, so the fleet's loop must not wait for all of them.
        self._disk: concurrent.futures.ThreadPoolExecutor | None = None
        self.pacer = ConnectPacer(connect_rate)
        self.pinger = KeepaliveScheduler()
        self.beat_tick = beat_tick
        self._beats: list[tuple[float, int, SimulatedAgent, int]] = []
        self._beat_order = itertools.count()
        self.stats = FleetStats()
        self.online = 0
        """How many agents are connected and announced right now."""
        self.boot = secrets.token_hex(4)
        self.bdseq_base = int(time.time())
        self.created = time.monotonic()
        self.online_properties = Properties(message_expiry=message_expiry(interval))
        validate_env_id(f"{prefix}-{max(count - 1, 0):05d}")
        self.agents = [SimulatedAgent(self, f"{prefix}-{i:05d}") for i in range(count)]
        self._unsettled = count
        self._all_settled: asyncio.Future[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._helpers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        raise_open_files_limit()
        if self.execution is not None:
            loop = asyncio.get_running_loop()
            self._disk = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, "sim-outbox")
            for agent in self.agents:
                agent._attach_commands(self.execution, loop)
        self._all_settled = asyncio.get_running_loop().create_future()
        if self._unsettled == 0:
            self._all_settled.set_result(None)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._helpers = [
            self._tasks.create_task(self.pinger.run(), name="sim-keepalive"),
            self._tasks.create_task(self._run_beats(), name="sim-heartbeats"),
            self._tasks.create_task(self._report(), name="sim-report"),
        ]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tasks is not None
        try:
            await self.stop()
        finally:
            if self._disk is not None:
                self._disk.shutdown(wait=True)
                self._disk = None
            for agent in self.agents:
                agent._detach_commands()
            for helper in self._helpers:
                helper.cancel()
            await self._tasks.__aexit__(*exc_info)
            self._tasks = None

    async def start(self) -> None:
        """Connect every agent, at most ``connect_rate`` a second, and return once each has
        had its first online message acknowledged (or was killed or stopped before)."""
        if self._tasks is None or self._all_settled is None:
            raise RuntimeError("enter the fleet (async with Fleet(...)) before start()")
        for agent in self.agents:
            if agent._task is None:
                agent._task = self._tasks.create_task(agent._run(), name=f"sim {agent.env}")
        await asyncio.shield(self._all_settled)

    async def stop(self) -> None:
        """Stop every agent still running cleanly (offline/shutdown, then DISCONNECT)."""
        for agent in self.agents:
            if agent._stop_mode is None:
                agent._stop_mode = "shutdown"
            agent._wake_up()
        running = {a._task for a in self.agents if a._task is not None and not a._task.done()}
        if running:
            await asyncio.wait(running)

    # internals, called by the agents ------------------------------------------------------
    def _schedule_beat(self, agent: SimulatedAgent, delay: float, token: int) -> None:
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._beats, (due, next(self._beat_order), agent, token))

    async def _run_beats(self) -> None:
        """Every heartbeat of the fleet from one timer: each tick publishes those due.

        One timer instead of one per agent keeps the per-heartbeat cost low, and the
        heartbeats of one tick reach the broker together, so it wakes up less often."""
        loop = asyncio.get_running_loop()
        beats = self._beats
        while True:
            await asyncio.sleep(self.beat_tick)
            now = loop.time()
            while beats and beats[0][0] <= now:
                due, order, agent, token = heapq.heappop(beats)
                next_due = agent._beat(due, now, token)
                if next_due is not None:
                    heapq.heappush(beats, (next_due, order, agent, token))

    def _forget_event(self, path: _CommandPath, seq: int) -> None:
        """Delete an acknowledged event from its agent's outbox, off the loop; the events
        acknowledged within one turn of the loop in one transaction, as the agent does."""
        if not path.acknowledged:
            asyncio.get_running_loop().call_soon(self._forget_acknowledged, path)
        path.acknowledged.append(seq)

    def _forget_acknowledged(self, path: _CommandPath) -> None:
        seqs, path.acknowledged = path.acknowledged, []
        if self._disk is not None and seqs:
            self._disk.submit(_forget, path, seqs)

    def _heartbeat_done(self, error: WireError | None) -> None:
        if error is None:
            self.stats.heartbeats += 1
        elif not isinstance(error, ConnectionClosed):  # a lost connection is reported once
            self.stats.refused += 1
            self.stats.last_error = str(error)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        if self._tasks is not None:
            self._tasks.create_task(work, name=name)
        else:
            work.close()

    def _settle(self, agent: SimulatedAgent) -> None:
        """An agent is online for the first time, or ended without ever being."""
        if agent._settled:
            return
        agent._settled = True
        self._unsettled -= 1
        done = self._all_settled
        if self._unsettled == 0 and done is not None and not done.done():
            done.set_result(None)

    def _note_failure(self, env: str, error: WireError) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(error)
        log.debug("connection failed", env=env, error=str(error))

    async def _report(self) -> None:
        """Progress while connecting, and failures when they happen, every few seconds."""
        reported = 0
        while True:
            await asyncio.sleep(REPORT_EVERY)
            failures = self.stats.failures + self.stats.refused - reported
            if failures:
                reported = self.stats.failures + self.stats.refused
                log.warning(
                    "connections failing",
                    failures=failures,
                    seconds=REPORT_EVERY,
                    online=self.online,
                    count=len(self.agents),
                    last_error=self.stats.last_error,
                )
            elif self._unsettled:
                log.info("connecting", online=self.online, count=len(self.agents))


def _forget(path: _CommandPath, seqs: list[int]) -> None:
    from edgeplane.edge_agent.errors import OutboxError

    try:
        path.outbox.acked(*seqs)
    except OutboxError as exc:  # it stays in the outbox and goes out again: no loss
        log.warning("acknowledged event not deleted", env=path.outbox.env, error=str(exc))


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to the hard limit; return the limit.

    One agent is one socket: a fleet of thousands needs more than the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target


# --- command line -------------------------------------------------------------------------------
def _prefix(value: Any) -> str:
    prefix = s.text(value)
    validate_env_id(f"{prefix}-00000")
    return prefix


def _interval(value: Any) -> float:
    seconds = s.positive_float(value)
    if seconds > 86_400:
        raise ValueError(f"expected at most 86400 seconds, got {value!r}")
    return seconds


SETTINGS: Final = (
    s.Setting("count", s.positive_int, 100, "how many agents to simulate"),
    s.Setting("broker", s.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"),
    s.Setting("topic_root", s.topic_root, TopicRoot(), "topic root"),
    s.Setting("heartbeat_interval", _interval, 10.0, "seconds between an agent's heartbeats"),
    s.Setting("prefix", _prefix, "sim", "environment ids are PREFIX-00000, PREFIX-00001, ..."),
    s.Setting("connect_rate", s.positive_float, 500.0, "new connections a second, fleet-wide"),
    s.Setting(
        "duration",
        s.positive_float,
        None,
        "seconds to run once every agent is online (default: until Ctrl-C or SIGTERM)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (each also from ``EDGEPLANE_*`` environment variables)."""
    s.add_flags(parser, SETTINGS)


def run(args: argparse.Namespace) -> int:
    """Run the simulator until ``--duration`` passes or SIGINT/SIGTERM; 0 after a clean
    stop, 2 for a bad setting."""
    try:
        settings = s.resolve(SETTINGS, args)
        _check_open_files(settings["count"])
    except SettingsError as exc:
        print(f"edge-agent simulate: {exc}", file=sys.stderr)
        return 2
    if not structlog.is_configured():
        from edgeplane.shared.logs import configure_logging

        configure_logging()
    return asyncio.run(_simulate(settings))


def _check_open_files(count: int) -> None:
    limit = raise_open_files_limit()
    if count + SPARE_FILES > limit:
        raise SettingsError(
            f"--count: {count} agents need {count + SPARE_FILES} open files, but this process "
            f"may open at most {limit}; use at most {limit - SPARE_FILES}"
        )


async def _simulate(settings: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    fleet = Fleet(
        settings["broker"],
        settings["topic_root"],
        settings["count"],
        settings["heartbeat_interval"],
        settings["prefix"],
        settings["connect_rate"],
    )
    try:
        async with fleet:
            began = loop.time()
            if await _unless(stop, fleet.start()):
                print(_summary(fleet, loop.time() - began), flush=True)
                duration = settings["duration"]
                await _unless(stop, asyncio.sleep(duration) if duration else stop.wait())
            log.info("stopping every agent cleanly", online=fleet.online)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    stats = fleet.stats
    log.info(
        "simulation stopped",
        connections=stats.connections,
        failures=stats.failures,
        heartbeats=stats.heartbeats,
        events=stats.events,
    )
    return 0


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> bool:
    """Run ``work`` until it finishes (True) or ``stop`` is set first (False)."""
    async with asyncio.TaskGroup() as tasks:
        job = tasks.create_task(work, name="sim-main")
        stopper = tasks.create_task(stop.wait(), name="sim-stop-signal")
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finished = job.done()
        job.cancel()
        stopper.cancel()
    return finished


def _summary(fleet: Fleet, seconds: float) -> str:
    agents = fleet.agents
    names = f"{agents[0].env}..{agents[-1].env}" if agents else "none"
    return (
        f"{fleet.online}/{len(agents)} simulated agents online ({names}) on {fleet.broker} "
        f"under {fleet.root}, heartbeat every {fleet.interval:g}s; "
        f"connected in {seconds:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent simulate",
        description="Simulate a fleet of edge agents, one MQTT connection each.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
