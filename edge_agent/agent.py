"""The agent: one thread, one loop, presence per the contract.

The loop polls the MQTT session (:mod:`edge_agent.session`), hands what happened to the
part whose job it is and runs whatever is due, each turn:

- :class:`~edge_agent.link.BrokerLink`: connections, the will, online, heartbeats,
  re-assertion, reconnecting (and waiting out a takeover);
- :class:`~edge_agent.event_pump.EventPump`: events from the outbox to the broker;
- :class:`~edge_agent.commands.CommandHandler`: what arrives on ``cmd``;
- :class:`~edge_agent.live_config.LiveConfig`: an ``update`` applied and kept;
- :class:`~edge_agent.stopping.CleanStop`: offline/shutdown before DISCONNECT;
- :class:`~edge_agent.retirement.Retirement`: the end of the environment.

The agent decides between them: a stop that comes during a handshake ends it, a lost
connection while retiring is simply made again, and a retirement cannot be stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

from edgeplane.edge_agent.commands import ENROL_HINT, CommandHandler, Execution
from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.credentials import CredentialStore
from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.event_pump import EventPump
from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder
from edgeplane.edge_agent.inventory import InventoryScanner
from edgeplane.edge_agent.link import BrokerLink
from edgeplane.edge_agent.live_config import LiveConfig
from edgeplane.edge_agent.metrics import HostMetrics
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.edge_agent.platform_facts import platform_facts
from edgeplane.edge_agent.retirement import Retirement, Wipeable, wipe_retired
from edgeplane.edge_agent.session import (
    Connected,
    ConnectRefused,
    Disconnected,
    MessageIn,
    MqttSession,
    Published,
    SessionEvent,
    Subscribed,
)
from edgeplane.edge_agent.state import BdseqStore, OverridesStore
from edgeplane.edge_agent.stopping import CleanStop
from edgeplane.edge_agent.takeover import TakeoverCheck
from edgeplane.edge_agent.trusted_keys import TrustedKeys
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.logs import bound_context, get_logger, unbind_context
from edgeplane.shared.messages import Credentials, Retire

__all__ = ["Agent", "AgentExecutor", "ExecutorFactory"]

log = get_logger(__name__)


class AgentExecutor(Execution, Protocol):
    """What the agent needs of :class:`edge_agent.execution.executor.Executor`."""

    def start(self) -> None: ...

    def running(self) -> list[str]: ...

    def stop_all(self, reason: str, timeout: float = ..., *, resume: bool = ...) -> None: ...

    def close(self) -> None: ...


# Builds the executor once the outbox exists: (event sink, endpoints in force). The agent
# changes the endpoints mapping in place when an update changes them.
ExecutorFactory = Callable[[EventSink, Mapping[str, str]], AgentExecutor]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        session: MqttSession | None = None,
        store: BdseqStore | None = None,
        waker: Waker | None = None,
        takeover_check: TakeoverCheck | None = None,
        outbox: Outbox | None = None,
        overrides: OverridesStore | None = None,
        executor: ExecutorFactory | None = None,
        secrets: Wipeable | None = None,
        logins: CredentialStore | None = None,
        box_key: str = "",
    ) -> None:
        self._clock = clock = clock or SystemClock()
        self._settings = LiveConfig(
            config,
            overrides or OverridesStore(config.state_dir),
            on_interval=lambda seconds: self._link.set_interval(seconds),
        )
        config = self._settings.config
        env = config.env_id
        store = store or BdseqStore(config.state_dir)  # creates the state dir: before the rest
        self._session = session or MqttSession(env, config.broker, config.keepalive)
        self._waker = waker
        self._secrets = secrets
        self._outbox = Outbox(config.state_dir, env, clock=clock) if outbox is None else outbox
        self._outbox.on_emit = self._wake
        self._executor = (
            None if executor is None else executor(self._outbox, self._settings.endpoints)
        )
        heartbeat = self._heartbeat_builder(config)
        heartbeat.box_key = box_key
        self._logins = logins or CredentialStore(config.state_dir, env, config.broker.identity)
        self._link = BrokerLink(
            config,
            session=self._session,
            store=store,
            heartbeat=heartbeat,
            takeover_check=takeover_check
            or TakeoverCheck(
                env, config.broker, config.topic_root.status(env), heartbeat.boot, clock
            ),
            clock=clock,
            waker=waker,
            logins=self._logins,
        )
        self._pump = EventPump(
            self._outbox, self._session, config.topic_root.events(env), lambda: self._link.online
        )
        self._stop = CleanStop(self._link, self._pump, self._executor, clock)
        self._retirement: Retirement | None = None
        self._trusted = TrustedKeys(config.state_dir, config.trusted_keys())
        self._commands = CommandHandler(
            env,
            clock,
            self._outbox,
            commands=self._outbox,
            key_store=self._trusted,
            executor=self._executor,
            on_update=self._settings.apply_update,
            on_retire=self._begin_retirement,
            on_credentials=self._take_credentials,
        )

    def _heartbeat_builder(self, config: AgentConfig) -> HeartbeatBuilder:
        models = config.models_dir
        return HeartbeatBuilder(
            config.env_id,
            config.heartbeat_interval,
            self._clock,
            HostMetrics().sample,
            inventory=None if models is None else InventoryScanner(models, self._clock),
            platform=platform_facts(),
        )

    @property
    def config(self) -> AgentConfig:
        """The settings in force (the local ones with the controller's updates over them)."""
        return self._settings.config

    @property
    def boot(self) -> str:
        return self._link.heartbeat.boot

    @property
    def retired(self) -> bool:
        return self._retirement is not None and self._retirement.finished

    def request_stop(self) -> None:
        """Ask the loop to stop cleanly. Safe to call from a signal handler."""
        if self._retirement is not None:
            return  # a retirement ends the run anyway, within RETIRE_WAIT
        self._stop.request()
        self._wake()

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()

    @property
    def _over(self) -> bool:
        return self._stop.finished or self.retired

    # the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; every log line names the environment and the connection."""
        with bound_context(env=self.config.env_id):
            try:
                return self._run()
            finally:
                unbind_context("bdseq")

    def _run(self) -> int:
        config = self.config
        log.info(
            "agent starting",
            broker=str(config.broker),
            state_dir=str(config.state_dir),
            interval=config.heartbeat_interval,
            boot=self.boot,
            models_dir=None if config.models_dir is None else str(config.models_dir),
            endpoints=sorted(config.endpoints),
            events_pending=len(self._outbox),
            command_keys=self._trusted.key_ids(),
        )
        if not self._trusted.keys():
            log.warning(ENROL_HINT)
        if self._executor is None:
            log.warning("this installation cannot run workflows: deployments will be refused")
        else:
            self._executor.start()
        try:
            self._loop()
        finally:
            self._pump.forget_acknowledged()
            self._link.disconnect_cleanly()
            if self._executor is not None:
                self._executor.close()
            self._outbox.close()
        if self._retirement is not None:
            wipe_retired(config.state_dir, config.env_id, self._secrets, self._clock.time())
            return 0
        log.info("agent stopped", events_pending=len(self._outbox))
        return 0

    def _loop(self) -> None:
        wake = self._waker.reader if self._waker is not None else None
        while True:
            self._step()
            self._pump.send()
            if self._over:
                break
            timeout = max(0.0, self._next_wakeup() - self._clock.monotonic())
            events = self._session.poll(timeout, wake)
            if self._waker is not None:
                self._waker.drain()
            for event in events:
                self._handle(event)
            self._pump.forget_acknowledged()

    def _step(self) -> None:
        now = self._clock.monotonic()
        if self._retirement is not None:
            self._retirement.advance(now)
            if self._over:
                return
        if self._stop.requested:
            self._stop.step(now)
            return
        self._link.step(now)

    def _next_wakeup(self) -> float:
        if self._stop.requested:
            # A signal between the last step and now requested the stop, which has not
            # begun (no deadline yet): come round at once to begin it.
            deadline = self._stop.deadline
            return self._clock.monotonic() if deadline == math.inf else deadline
        retiring = math.inf if self._retirement is None else self._retirement.deadline
        return min(self._link.next_deadline(self._clock.monotonic()), retiring)

    # session events -----------------------------------------------------------------------
    def _handle(self, event: SessionEvent) -> None:
        now = self._clock.monotonic()
        match event:
            case Connected():
                self._link.on_connected(now)
                if self._stop.requested:
                    self._stop.publish_shutdown()
                else:
                    self._link.subscribe_commands()
            case ConnectRefused(reason=reason):
                self._link.on_refused(reason)
            case Subscribed(mid=mid, refused=refused):
                self._on_subscribed(now, mid, refused)
            case Published(mid=mid):
                self._on_published(now, mid)
            case MessageIn(topic=topic, payload=payload):
                self._on_message(now, topic, payload)
            case Disconnected():
                self._on_disconnected(now, event)

    def _on_subscribed(self, now: float, mid: int, refused: tuple[str, ...]) -> None:
        if not self._link.on_subscribed(mid, refused):
            return
        retirement = self._retirement
        if retirement is not None and retirement.past_its_ack:
            retirement.publish_retired()  # the connection was lost half-way: again
            return
        self._link.go_online(now, events_pending=len(self._outbox))
        self._pump.restart()

    def _on_published(self, now: float, mid: int) -> None:
        if self._stop.on_published(mid):
            return
        seq = self._pump.on_published(mid)
        if self._retirement is not None:
            self._retirement.on_published(now, mid, seq)

    def _on_message(self, now: float, topic: str, payload: bytes) -> None:
        if topic == self._link.cmd_topic:
            try:
                self._commands.handle(payload)
            except AgentError as exc:
                log.error("command not handled", error=str(exc))
        elif topic == self._link.status_topic:
            self._link.on_own_status(now, payload)

    def _on_disconnected(self, now: float, event: Disconnected) -> None:
        was_connected_for = self._link.connection_lost(now)
        self._pump.forget_in_flight()
        if self._retirement is not None:
            self._link.retry(now, "connection-lost", event.reason)
        elif self._stop.requested or not self._link.reconnect_after(
            now, event, was_connected_for, lambda: self._stop.requested
        ):
            self._stop.finished = True

    # credentials --------------------------------------------------------------------------
    def _take_credentials(self, command: Credentials) -> tuple[bool, str]:
        taken = self._logins.take(command)
        if taken.switch:
            self._link.log_in_again(self._clock.monotonic())
        return taken.ok, taken.detail

    # retirement ---------------------------------------------------------------------------
    def _begin_retirement(self, command: Retire) -> None:
        retirement = Retirement(
            command.id, now=self._clock.monotonic(), outbox=self._outbox, link=self._link
        )
        self._retirement = retirement
        retirement.stop_workflows(self._executor, self._wake)
