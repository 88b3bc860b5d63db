"""One simulated edge agent: its own MQTT connection, the contract's will, its ``cmd``
subscription, retained online heartbeats built by the agent's own
:class:`~edgeplane.edge_agent.heartbeat.HeartbeatBuilder`, answers to pings (or the real
command path), reconnects with capped, jittered backoff, and the three ways to end: a clean
stop, a kill, or a freeze of its heartbeats."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import structlog

from edgeplane.edge_agent.heartbeat import HeartbeatBuilder
from edgeplane.edge_agent.simulator.host import AgentHost
from edgeplane.edge_agent.simulator.wire.client import MqttClient
from edgeplane.edge_agent.simulator.wire.errors import WireError
from edgeplane.edge_agent.simulator.wire.handshake import connect
from edgeplane.edge_agent.simulator.wire.packets import LastWill, Publish
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.codec import COMMAND, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import CommandRejected, Pong

if TYPE_CHECKING:
    from edgeplane.edge_agent.simulator.command_path import CommandPath

__all__ = ["SimulatedAgent"]

log = structlog.get_logger("edgeplane.edge_agent.simulator.agent")

GOODBYE_TIMEOUT: Final = 5.0  # how long a clean stop waits for the PUBACK of its offline
TAKEOVER_PAUSE: Final = 60.0  # after "session taken over": another runtime holds our identity
SESSION_TAKEN_OVER: Final = 0x8E

StopMode = Literal["shutdown", "kill"]


class SimulatedAgent:
    """One simulated edge agent with its own MQTT connection. Made by :class:`~.fleet.Fleet`.

    ``env`` is its environment id (and MQTT client id), ``bdseq`` the number of its current
    (or last) connection (the first takes ``last_bdseq + 1``), ``seq`` the next heartbeat's
    sequence number, ``online`` whether it is connected and has announced itself,
    ``frozen`` whether heartbeats are held back.
    """

    __slots__ = (
        "_backoff",
        "_bdseq",
        "_beat_token",
        "_client",
        "_cmd_topic",
        "_commands",
        "_events_topic",
        "_heartbeats",
        "_host",
        "_settled",
        "_setup",
        "_status_topic",
        "_stop_mode",
        "_task",
        "_wake",
        "env",
        "event_seq",
        "frozen",
        "online",
    )

    def __init__(self, host: AgentHost, env: str, last_bdseq: int) -> None:
        self._host = host
        self._setup = setup = host.setup  # the same for the fleet's life
        self.env = env
        self._bdseq = last_bdseq  # taken anew (+1) for every connection
        self._heartbeats = HeartbeatBuilder(
            env, setup.interval, setup.clock, setup.metrics, boot=setup.boot
        )
        self.event_seq = 0
        self.online = False
        self.frozen = False
        self._status_topic = setup.root.status(env)
        self._cmd_topic = setup.root.cmd(env)
        self._events_topic = setup.root.events(env)
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._stop_mode: StopMode | None = None
        self._backoff: Backoff | None = None
        self._beat_token = 0  # beats scheduled under an older token are stale
        self._settled = False
        self._commands: CommandPath | None = None

    @property
    def bdseq(self) -> int:
        return self._bdseq

    @property
    def seq(self) -> int:
        return self._heartbeats.seq

    @property
    def task(self) -> asyncio.Task[None] | None:
        """Its life, once launched (:meth:`launch`): done when it stopped or was killed."""
        return self._task

    def attach_commands(self, path: CommandPath) -> None:
        """Run commands through the real command path instead of only answering pings."""
        self._commands = path

    def detach_commands(self) -> None:
        path, self._commands = self._commands, None
        if path is not None:
            path.close()

    # control ------------------------------------------------------------------------------
    def launch(self, tasks: asyncio.TaskGroup) -> None:
        """Begin its life (connect, announce, heartbeat...) in ``tasks``, unless begun."""
        if self._task is None:
            self._task = tasks.create_task(self._run(), name=f"sim {self.env}")

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
        self.request_stop()
        await self._finished()

    def request_stop(self) -> None:
        """Ask for :meth:`stop` without waiting for it (unless a kill was asked first)."""
        if self._stop_mode is None:
            self._stop_mode = "shutdown"
        self._wake_up()

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
        host = self._host
        try:
            while not self.stopping():
                await self._pause(host.connect_delay())
                if self.stopping():
                    break
                error = await self._one_connection()
                if self.stopping():
                    break
                if error is not None:
                    host.connection_failed(self.env, error)
                await self._pause(self._retry_delay(error))
        finally:
            self._settle()

    def _retry_delay(self, error: WireError | None) -> float:
        if self._backoff is None:
            self._backoff = Backoff(initial=1.0, cap=60.0, rng=self._setup.rng)
        if error is not None and error.reason_code == SESSION_TAKEN_OVER:
            return TAKEOVER_PAUSE
        return self._backoff.next_delay()

    async def _one_connection(self) -> WireError | None:
        """Connect, announce, heartbeat until the connection ends or a stop is asked for.
        Returns why the connection ended (None after a clean stop)."""
        setup = self._setup
        self._bdseq += 1
        self._heartbeats.new_connection(self._bdseq)
        will = encode(self._heartbeats.will())
        try:
            client = await connect(
                setup.broker,
                client_id=self.env,
                keepalive=setup.keepalive,
                will=LastWill(self._status_topic, will, qos=1, retain=True),
                on_message=self._on_message,
                pinger=setup.pinger,
                ssl_context=setup.ssl_context,
            )
        except WireError as exc:
            return exc
        self._client = client
        try:
            if not self.stopping():
                await self._announce(client)
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
            if self._commands is not None:
                self._commands.disconnected()
            if self.online:
                self.online = False
                self._host.agent_offline()

    async def _announce(self, client: MqttClient) -> None:
        """The contract's order: subscribe to ``cmd``, then the first online message,
        acknowledged; then the heartbeats from a random phase, and the outbox's events."""
        setup = self._setup
        await client.subscribe(self._cmd_topic, qos=1)
        payload = self._online_payload()
        await client.publish(
            self._status_topic, payload, qos=1, retain=True, properties=setup.online_properties
        )
        self._host.heartbeat_done(None)
        self.online = True
        self._host.agent_online()
        if self._backoff is not None:
            self._backoff.reset()
        self._settle()
        if self._commands is not None:
            self._commands.connected(client)
        self._schedule_beats(first_in=setup.rng.uniform(0, setup.interval))

    def _settle(self) -> None:
        if not self._settled:
            self._settled = True
            self._host.agent_settled()

    # heartbeats ---------------------------------------------------------------------------
    def _schedule_beats(self, first_in: float) -> None:
        """Start a new series of heartbeats (replacing any older one) in ``first_in`` s."""
        self._beat_token += 1
        self._setup.beats.add(self, first_in, self._beat_token)

    def beat(self, due: float, now: float, token: int) -> float | None:
        """Called by the fleet's :class:`~.heartbeats.BeatSchedule`: publish (unless
        frozen) and return when the next heartbeat is due, or None when this series is over."""
        client = self._client
        if token != self._beat_token or client is None or client.is_closed or self.stopping():
            return None
        if not self.frozen:
            self._send_heartbeat(client)
        interval = self._setup.interval
        # Keep the beat on its grid unless it is so late that the grid is lost.
        return due + interval if now < due + interval else now + interval

    def _online_payload(self) -> bytes:
        status = self._heartbeats.online()
        self._host.heartbeat_sent(self.env, status.seq)
        return encode(status)

    def _send_heartbeat(self, client: MqttClient) -> None:
        host = self._host
        try:
            client.publish_nowait(
                self._status_topic,
                self._online_payload(),
                qos=1,
                retain=True,
                properties=self._setup.online_properties,
                on_done=host.heartbeat_done,
            )
        except WireError as exc:
            host.heartbeat_done(exc)

    async def _goodbye(self, client: MqttClient) -> None:
        """The contract's clean stop: offline/shutdown acknowledged, then DISCONNECT."""
        offline = encode(self._heartbeats.offline("shutdown"))
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await client.publish(self._status_topic, offline, qos=1, retain=True)
        except (WireError, TimeoutError) as exc:
            log.warning("clean stop failed, dropping the connection", env=self.env, error=str(exc))
            client.abort()
            return
        await client.disconnect()

    # commands -----------------------------------------------------------------------------
    def _on_message(self, message: Publish) -> None:
        if message.topic != self._cmd_topic:
            return
        if self._commands is not None:
            self._commands.handle(message.payload)
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
            self._host.spawn(self._send_event(client, event), f"sim-event {self.env}")

    async def _send_event(self, client: MqttClient, event: msgspec.Struct) -> None:
        try:
            await client.publish(self._events_topic, encode(event), qos=1)
        except WireError as exc:
            log.warning("event not delivered", env=self.env, event=repr(event), error=str(exc))
        else:
            self._host.event_delivered()
