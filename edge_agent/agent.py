"""The agent: one thread, one loop, presence per the contract.

Each connection: take a new bdseq, set the will (offline/connection-lost with that bdseq),
CONNECT with a clean start; after CONNACK subscribe to ``cmd``; after its SUBACK publish
online (retained, with a message expiry of about three intervals), then subscribe to the
agent's own status topic to notice an offline that is not its own and re-assert online.
Heartbeats follow every interval. A lost connection is retried forever with capped,
jittered backoff; a session taken over by another runtime with the same identity gets a
long backoff instead. A stop publishes offline/shutdown, waits for its PUBACK, and sends a
normal DISCONNECT (so no will).

Events come from the outbox (:mod:`edge_agent.outbox`), which every event reaches first
(commands answered here, and the executor's thread). After each online publish the
backlog goes out in ``seq`` order, new events as they come, at most :data:`EVENT_WINDOW`
awaiting PUBACK at once; a PUBACK deletes its event from the outbox. A lost connection
forgets what was in flight: the next connection sends it again (the controller stores each
event once).

An ``update`` is applied at once (a new interval goes out in an online message right
away) and kept in the state directory. A ``retire`` stops the workflows, waits until the
broker has its ``ack`` event, publishes offline/retired and then an empty retained status
(both acknowledged), disconnects normally, wipes the secrets file and the state (leaving a
``retired`` marker) and ends the run, each wait bounded by :data:`RETIRE_WAIT` in all.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from edgeplane.edge_agent.commands import CommandHandler, Execution, UpdateOutcome
from edgeplane.edge_agent.config import (
    AgentConfig,
    UpdateRefused,
    plan_update,
    with_overrides,
)
from edgeplane.edge_agent.errors import AgentError, BrokerUnavailable, ModelsDirError, StateDirError
from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder, Inventory, message_expiry
from edgeplane.edge_agent.inventory import scan_models
from edgeplane.edge_agent.metrics import HostMetrics
from edgeplane.edge_agent.outbox import Outbox, outbox_files
from edgeplane.edge_agent.platform_facts import platform_facts
from edgeplane.edge_agent.session import (
    Connected,
    ConnectRefused,
    Disconnected,
    MessageIn,
    Published,
    Session,
    SessionEvent,
    Subscribed,
)
from edgeplane.edge_agent.state import BdseqStore, OverridesStore, retire_state_dir
from edgeplane.edge_agent.takeover import TakeoverCheck
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.codec import STATUS, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.logs import (
    bind_context,
    bound_context,
    get_logger,
    set_level,
    unbind_context,
)
from edgeplane.shared.messages import Ack, OfflineStatus, Retire, Update

__all__ = ["EVENT_WINDOW", "RETIRE_WAIT", "Agent", "AgentExecutor", "ExecutorFactory", "Phase"]

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for CONNACK, and then for the SUBACK of `cmd`
REASSERT_GAP: Final = 1.0  # at most one re-assertion of online per this many seconds
LOG_GAP: Final = 60.0  # at most one log line a minute about garbage on the status topic
STABLE_AFTER: Final = 10.0  # a connection that lasted this long resets the backoff
SHUTDOWN_WAIT: Final = 5.0  # seconds a stop waits for the broker to take offline/shutdown
TAKEOVER_CAP: Final = 600.0  # the longest wait after a takeover; also when it is forgotten
EVENT_WINDOW: Final = 100  # events published and awaiting their PUBACK at most
STOP_WORKFLOWS_WAIT: Final = 10.0  # seconds a retirement gives the workflows to stop
RETIRE_WAIT: Final = 30.0  # seconds a whole retirement may take
MODELS_LOG_GAP: Final = 600.0  # seconds between two log lines about an unusable models dir
# What the executor keeps in the state directory: wiped with the rest on retirement (step
# output files may hold what a step printed).
EXECUTOR_STATE: Final = ("executor.json", "deployments")

log = get_logger(__name__)


class Phase(enum.Enum):
    IDLE = "idle"  # no connection; the next attempt is at `retry_at`
    CONNECTING = "connecting"  # CONNECT sent, waiting for CONNACK
    SUBSCRIBING = "subscribing"  # waiting for the SUBACK of `cmd` before going online
    ONLINE = "online"  # heartbeating
    STOPPING = "stopping"  # offline/shutdown published, waiting for its PUBACK


_HANDSHAKE: Final = (Phase.CONNECTING, Phase.SUBSCRIBING)


class AgentExecutor(Execution, Protocol):
    """What the agent needs of :class:`edge_agent.execution.executor.Executor`."""

    def start(self) -> None: ...

    def running(self) -> list[str]: ...

    def stop_all(self, reason: str, timeout: float = ..., *, resume: bool = ...) -> None: ...

    def close(self) -> None: ...


class Wipeable(Protocol):
    def wipe(self) -> None: ...


# Builds the executor once the outbox exists: (event sink, endpoints in force). The agent
# changes the endpoints mapping in place when an update changes them.
ExecutorFactory = Callable[[EventSink, Mapping[str, str]], AgentExecutor]


class RetireStep(enum.Enum):
    STOPPING = "stopping"  # the workflows are being stopped (on another thread)
    ACKING = "acking"  # the retire ack is in the outbox, waiting for its PUBACK
    OFFLINE = "offline"  # offline/retired published, waiting for its PUBACK
    CLEARING = "clearing"  # the empty retained status published, waiting for its PUBACK
    DONE = "done"


@dataclass(slots=True)
class Retirement:
    cmd: str
    deadline: float
    step: RetireStep = RetireStep.STOPPING
    workflows_stopped: bool = False  # set by the stopping thread
    ack_seq: int = 0
    mid: int | None = None  # of the publish the current step waits for


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        session: Session | None = None,
        store: BdseqStore | None = None,
        waker: Waker | None = None,
        takeover_check: TakeoverCheck | None = None,
        outbox: Outbox | None = None,
        overrides: OverridesStore | None = None,
        executor: ExecutorFactory | None = None,
        secrets: Wipeable | None = None,
    ) -> None:
        self._local_config = config  # flags, environment, file: what the overrides go over
        self._clock = clock or SystemClock()
        self._overrides_store = overrides or OverridesStore(config.state_dir)
        self._overrides = self._overrides_store.load()
        config = self.config = with_overrides(config, self._overrides)
        self._store = store or BdseqStore(config.state_dir)
        self._session = session or Session(config.env_id, config.broker, config.keepalive)
        self._waker = waker
        root, env = config.topic_root, config.env_id
        self.status_topic = root.status(env)
        self.cmd_topic = root.cmd(env)
        self.events_topic = root.events(env)
        self._outbox = (
            Outbox(config.state_dir, env, clock=self._clock) if outbox is None else outbox
        )
        self._outbox.on_emit = self._wake
        self._endpoints = dict(config.endpoints)
        self._executor = None if executor is None else executor(self._outbox, self._endpoints)
        self._secrets = secrets
        self._models_logged_at = -math.inf
        self._heartbeat = HeartbeatBuilder(
            env,
            config.heartbeat_interval,
            self._clock,
            HostMetrics().sample,
            inventory=None if config.models_dir is None else self._scan_models,
            platform=platform_facts(),
        )
        self._commands = CommandHandler(
            env,
            self._clock,
            self._outbox,
            commands=self._outbox,
            executor=self._executor,
            on_update=self._apply_update,
            on_retire=self._begin_retirement,
        )
        self._backoff = Backoff(initial=0.5, cap=30.0)
        takeover_cap = max(TAKEOVER_CAP, config.takeover_backoff)
        self._takeover_backoff = Backoff(initial=config.takeover_backoff, cap=takeover_cap)
        self._expiry = message_expiry(config.heartbeat_interval)
        self._takeover_check = takeover_check or TakeoverCheck(
            env, config.broker, self.status_topic, self.boot, self._clock
        )

        self.phase = Phase.IDLE
        self._retry_at = self._clock.monotonic()
        self._handshake_deadline = math.inf
        self._heartbeat_due = math.inf
        self._connected_at: float | None = None
        self._cmd_sub_mid: int | None = None
        self._in_flight: dict[int, int] = {}  # mid -> seq of events awaiting their PUBACK
        self._sent_up_to = 0  # the highest seq published on this connection
        self._acknowledged: list[int] = []  # seqs PUBACKed, to delete after this poll
        self._retirement: Retirement | None = None
        self._ever_took_bdseq = False
        self._reasserted_at = -math.inf
        self._status_garbage_logged_at = -math.inf

        self._stop_requested = False
        self._stop_deadline = math.inf
        self._shutdown_mid: int | None = None
        self._stopped = False

    @property
    def boot(self) -> str:
        return self._heartbeat.boot

    def _stop_was_requested(self) -> bool:
        return self._stop_requested

    @property
    def retired(self) -> bool:
        return self._retirement is not None and self._retirement.step is RetireStep.DONE

    def request_stop(self) -> None:
        """Ask the loop to stop cleanly. Safe to call from a signal handler."""
        if self._retirement is not None:
            return  # a retirement ends the run anyway, within RETIRE_WAIT
        self._stop_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._waker is not None:
            self._waker.wake()

    # the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; every log line names the environment and the connection."""
        with bound_context(env=self.config.env_id):
            try:
                return self._run()
            finally:
                unbind_context("bdseq")

    def _run(self) -> int:
        log.info(
            "agent starting",
            broker=str(self.config.broker),
            state_dir=str(self.config.state_dir),
            interval=self.config.heartbeat_interval,
            boot=self.boot,
            models_dir=None if self.config.models_dir is None else str(self.config.models_dir),
            endpoints=sorted(self.config.endpoints),
            events_pending=len(self._outbox),
        )
        if self._executor is None:
            log.warning("this installation cannot run workflows: deployments will be refused")
        else:
            self._executor.start()
        try:
            self._loop()
        finally:
            self._forget_acknowledged()
            self._disconnect_cleanly()
            if self._executor is not None:
                self._executor.close()
            self._outbox.close()
        if self._retirement is not None:
            self._wipe()
            return 0
        log.info("agent stopped", events_pending=len(self._outbox))
        return 0

    def _loop(self) -> None:
        wake = self._waker.reader if self._waker is not None else None
        while True:
            self._step()
            self._send_events()
            if self._stopped:
                break
            timeout = max(0.0, self._next_wakeup() - self._clock.monotonic())
            events = self._session.poll(timeout, wake)
            if self._waker is not None:
                self._waker.drain()
            for event in events:
                self._handle(event)
            self._forget_acknowledged()

    def _step(self) -> None:
        now = self._clock.monotonic()
        if self._retirement is not None:
            self._advance_retirement(now, self._retirement)
            if self._stopped:
                return
        if self._stop_requested and self._stop_deadline == math.inf:
            self._begin_stop(now)
        if self._stop_requested:
            if now >= self._stop_deadline:
                log.warning("stop: no acknowledgement of offline/shutdown in time")
                self._stopped = True
            return
        if self.phase is Phase.IDLE and now >= self._retry_at:
            self._connect(now)
        elif self.phase in _HANDSHAKE and now >= self._handshake_deadline:
            log.warning("the broker did not answer in time, dropping the connection")
            self._handshake_deadline = math.inf
            self._session.abort()
        elif self.phase is Phase.ONLINE and now >= self._heartbeat_due:
            self._publish_online(now)

    def _next_wakeup(self) -> float:
        now = self._clock.monotonic()
        if self._stop_requested:
            return self._stop_deadline
        retire_deadline = math.inf if self._retirement is None else self._retirement.deadline
        deadlines = {
            Phase.IDLE: self._retry_at,
            Phase.CONNECTING: self._handshake_deadline,
            Phase.SUBSCRIBING: self._handshake_deadline,
            Phase.ONLINE: self._heartbeat_due,
            Phase.STOPPING: self._stop_deadline,
        }
        # paho sends its keepalive pings from the loop, once a keepalive has passed without
        # traffic: come round often enough that the ping is late by a quarter at most (the
        # broker gives up at one and a half).
        return min(deadlines[self.phase], now + self.config.keepalive / 4, retire_deadline)

    # connecting ---------------------------------------------------------------------------
    def _connect(self, now: float) -> None:
        try:
            bdseq = self._store.take()
        except StateDirError as exc:
            if not self._ever_took_bdseq:
                raise
            self._schedule_retry(now, self._backoff.next_delay(), "state-dir", str(exc))
            return
        self._ever_took_bdseq = True
        self._heartbeat.new_connection(bdseq)
        bind_context(bdseq=bdseq)
        try:
            self._session.connect((self.status_topic, encode(self._heartbeat.will())))
        except BrokerUnavailable as exc:
            self._schedule_retry(now, self._backoff.next_delay(), "unreachable", str(exc))
            return
        self.phase = Phase.CONNECTING
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        log.debug("connecting", broker=str(self.config.broker))

    def _schedule_retry(self, now: float, delay: float, why: str, detail: str) -> None:
        self.phase = Phase.IDLE
        self._retry_at = now + delay
        log.warning("broker connection failed", why=why, detail=detail, retry_in=round(delay, 2))

    # session events -----------------------------------------------------------------------
    def _handle(self, event: SessionEvent) -> None:
        now = self._clock.monotonic()
        match event:
            case Connected():
                self._on_connected(now)
            case ConnectRefused(reason=reason):
                log.error("broker refused the connection", reason=reason)
            case Subscribed(mid=mid, refused=refused):
                self._on_subscribed(now, mid, refused)
            case Published(mid=mid):
                self._on_published(mid)
            case MessageIn(topic=topic, payload=payload):
                self._on_message(now, topic, payload)
            case Disconnected():
                self._on_disconnected(now, event)

    def _on_connected(self, now: float) -> None:
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        self._connected_at = now
        if self._stop_requested:
            self._publish_shutdown()
            return
        self.phase = Phase.SUBSCRIBING
        log.info("connected", broker=str(self.config.broker))
        try:
            self._cmd_sub_mid = self._session.subscribe(self.cmd_topic)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed", detail=str(exc))
            self._session.abort()

    def _on_subscribed(self, now: float, mid: int, refused: tuple[str, ...]) -> None:
        if mid != self._cmd_sub_mid or self.phase is not Phase.SUBSCRIBING:
            if refused:
                log.error("broker refused a subscription", reasons=list(refused))
            return
        self._handshake_deadline = math.inf
        if refused:
            log.error(
                "broker refused the command subscription; commands will not arrive",
                topic=self.cmd_topic,
                reasons=list(refused),
            )
        retirement = self._retirement
        if retirement is not None and retirement.step in (RetireStep.OFFLINE, RetireStep.CLEARING):
            self._publish_retired(retirement)  # the connection was lost half-way: again
            return
        self.phase = Phase.ONLINE
        self._publish_online(now)
        log.info(
            "online", interval=self.config.heartbeat_interval, events_pending=len(self._outbox)
        )
        try:
            self._session.subscribe(self.status_topic, no_local=True)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed", detail=str(exc))
        self._sent_up_to = 0  # the backlog, from the oldest event not acknowledged

    def _on_disconnected(self, now: float, event: Disconnected) -> None:
        was_connected_for = None if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        self._heartbeat_due = math.inf
        self._handshake_deadline = math.inf
        # The outbox sends unacknowledged events again after the next online; paho must
        # not (it would, before the subscription and the online message).
        self._session.take_unacked()
        self._in_flight.clear()
        if self._retirement is not None:
            self._schedule_retry(now, self._backoff.next_delay(), "connection-lost", event.reason)
            return
        if self._stop_requested:
            self._stopped = True
            return
        if event.taken_over:
            self._on_taken_over(now, was_connected_for, other_boot=None)
            return
        if was_connected_for is not None:
            other_boot = self._other_runtime_online()
            if other_boot is not None:
                self._on_taken_over(self._clock.monotonic(), was_connected_for, other_boot)
                return
            if self._stop_was_requested():  # a signal may have come while looking
                self._stopped = True
                return
        if was_connected_for is not None and was_connected_for >= STABLE_AFTER:
            self._backoff.reset()
        self._schedule_retry(now, self._backoff.next_delay(), "connection-lost", event.reason)

    def _other_runtime_online(self) -> str | None:
        """After the broker dropped a connection: is another runtime online as this env?"""
        return self._takeover_check.run(self._waker, self._stop_was_requested)

    def _on_taken_over(
        self, now: float, was_connected_for: float | None, other_boot: str | None
    ) -> None:
        if was_connected_for is not None and was_connected_for >= TAKEOVER_CAP:
            self._takeover_backoff.reset()
        delay = self._takeover_backoff.next_delay()
        self.phase = Phase.IDLE
        self._retry_at = now + delay
        log.error(
            f"session taken over: another runtime is using the identity of environment "
            f"{self.config.env_id!r}; waiting before connecting again",
            env_id=self.config.env_id,
            other_boot=other_boot,
            retry_in=round(delay, 1),
        )

    def _on_message(self, now: float, topic: str, payload: bytes) -> None:
        if topic == self.cmd_topic:
            try:
                self._commands.handle(payload)
            except AgentError as exc:
                log.error("command not handled", error=str(exc))
        elif topic == self.status_topic:
            self._on_own_status(now, payload)

    def _on_own_status(self, now: float, payload: bytes) -> None:
        if self.phase is not Phase.ONLINE:
            return
        try:
            status = STATUS.decode(payload)
        except DecodeError as exc:
            if now - self._status_garbage_logged_at >= LOG_GAP:
                self._status_garbage_logged_at = now
                log.warning("unreadable message on own status topic", reason=exc.reason)
            return
        if not isinstance(status, OfflineStatus):
            return
        if status.bdseq != self._heartbeat.bdseq:
            log.warning(
                "status topic shows another connection's offline; re-asserting online",
                their_bdseq=status.bdseq,
                reason=status.reason,
            )
            self._reassert_online(now)
        else:
            log.warning("status topic shows this connection offline", reason=status.reason)

    # events -------------------------------------------------------------------------------
    def _send_events(self) -> None:
        """Publish outbox events not yet sent on this connection, oldest first."""
        if self.phase is not Phase.ONLINE or not self._session.connected:
            return
        while len(self._in_flight) < EVENT_WINDOW and self._outbox.last_seq > self._sent_up_to:
            newest = self._outbox.last_seq
            batch = self._outbox.pending(self._sent_up_to, EVENT_WINDOW - len(self._in_flight))
            if not batch:
                self._sent_up_to = newest
                return
            for seq, payload in batch:
                self._in_flight[self._session.publish(self.events_topic, payload)] = seq
                self._sent_up_to = seq

    def _forget_acknowledged(self) -> None:
        """Delete the events the broker acknowledged since the last poll: one transaction
        (a crash before it only means sending them again)."""
        if self._acknowledged:
            self._outbox.acked(*self._acknowledged)
            self._acknowledged.clear()

    def _on_published(self, mid: int) -> None:
        if mid == self._shutdown_mid:
            log.info("offline/shutdown acknowledged")
            self._stopped = True
            return
        seq = self._in_flight.pop(mid, None)
        if seq is not None:
            self._acknowledged.append(seq)
        retirement = self._retirement
        if retirement is not None and (seq == retirement.ack_seq or mid == retirement.mid):
            self._advance_retirement(self._clock.monotonic(), retirement, acknowledged=True)

    # update -------------------------------------------------------------------------------
    def _apply_update(self, command: Update) -> UpdateOutcome:
        try:
            overrides = plan_update(
                self._overrides,
                interval=command.interval,
                config=command.config,
                labels=command.labels,
            )
            self._overrides_store.save(overrides)
        except (UpdateRefused, StateDirError) as exc:
            log.warning("update refused", cmd=command.id, reason=str(exc))
            return False, str(exc)
        self._overrides = overrides
        self._apply(with_overrides(self._local_config, overrides))
        changed = [key for key in ("interval", "labels") if getattr(command, key)]
        changed += sorted(command.config)
        log.info("update applied", cmd=command.id, changed=changed)
        return True, "applied: " + (", ".join(changed) or "nothing to change")

    def _apply(self, config: AgentConfig) -> None:
        old, self.config = self.config, config
        if config.log_level != old.log_level:
            set_level(config.log_level)
        for name in set(self._endpoints) - set(config.endpoints):
            del self._endpoints[name]
        self._endpoints.update(config.endpoints)  # in place: the executor reads this mapping
        if config.heartbeat_interval != old.heartbeat_interval:
            self._heartbeat.interval = config.heartbeat_interval
            self._expiry = message_expiry(config.heartbeat_interval)
            if self.phase is Phase.ONLINE:
                self._publish_online(self._clock.monotonic())  # the new interval, now

    def _scan_models(self) -> Inventory:
        try:
            return scan_models(self.config.models_dir)
        except ModelsDirError as exc:
            now = self._clock.monotonic()
            if now - self._models_logged_at >= MODELS_LOG_GAP:
                self._models_logged_at = now
                log.warning("no model inventory", reason=str(exc))
            return {}

    # retirement ---------------------------------------------------------------------------
    def _begin_retirement(self, command: Retire) -> None:
        now = self._clock.monotonic()
        retirement = self._retirement = Retirement(cmd=command.id, deadline=now + RETIRE_WAIT)
        log.warning("retiring: stopping workflows", cmd=command.id)
        executor = self._executor
        if executor is None:
            retirement.workflows_stopped = True
            return

        def stop_workflows() -> None:
            try:
                executor.stop_all("retired", STOP_WORKFLOWS_WAIT, resume=False)
            except AgentError as exc:
                log.error("retiring: workflows not stopped cleanly", error=str(exc))
            finally:
                retirement.workflows_stopped = True
                self._wake()

        threading.Thread(target=stop_workflows, name="retire-stop", daemon=True).start()

    def _advance_retirement(
        self, now: float, retirement: Retirement, *, acknowledged: bool = False
    ) -> None:
        if now >= retirement.deadline and retirement.step is not RetireStep.DONE:
            log.warning(
                "retiring: the broker did not acknowledge everything in time; retiring anyway",
                step=retirement.step.value,
            )
            self._finish_retirement(retirement)
            return
        match retirement.step:
            case RetireStep.STOPPING if retirement.workflows_stopped:
                ack = self._outbox.emit(Ack, cmd=retirement.cmd, op="retire", ok=True)
                retirement.ack_seq = ack.seq
                retirement.step = RetireStep.ACKING
            case RetireStep.ACKING if acknowledged and self.phase is Phase.ONLINE:
                self._publish_retired(retirement)
            case RetireStep.OFFLINE if acknowledged:
                retirement.step = RetireStep.CLEARING
                retirement.mid = self._session.publish(self.status_topic, b"", retain=True)
            case RetireStep.CLEARING if acknowledged:
                log.info("retiring: retained status cleared")
                self._finish_retirement(retirement)

    def _publish_retired(self, retirement: Retirement) -> None:
        self.phase = Phase.STOPPING  # no more heartbeats
        retirement.step = RetireStep.OFFLINE
        payload = encode(self._heartbeat.offline("retired"))
        retirement.mid = self._session.publish(self.status_topic, payload, retain=True)

    def _finish_retirement(self, retirement: Retirement) -> None:
        retirement.step = RetireStep.DONE
        self._stopped = True

    def _wipe(self) -> None:
        """After the DISCONNECT: the credentials and the state go; the marker stays."""
        if self._secrets is not None:
            try:
                self._secrets.wipe()
            except AgentError as exc:
                log.error("retiring: the secrets file could not be wiped", error=str(exc))
        state_dir = self.config.state_dir
        wiped = [*outbox_files(state_dir), *(state_dir / name for name in EXECUTOR_STATE)]
        marker = retire_state_dir(state_dir, self.config.env_id, wiped, self._clock.time())
        log.warning("retired: this state directory will not run again", marker=str(marker))

    # publishing ---------------------------------------------------------------------------
    def _reassert_online(self, now: float) -> None:
        """Online at once; but if something keeps overwriting it, no faster than once a
        second (the next heartbeat is brought forward instead)."""
        if now - self._reasserted_at >= REASSERT_GAP:
            self._reasserted_at = now
            self._publish_online(now)
        else:
            self._heartbeat_due = min(self._heartbeat_due, self._reasserted_at + REASSERT_GAP)

    def _publish_online(self, now: float) -> None:
        message = self._heartbeat.online()
        self._session.publish(self.status_topic, encode(message), retain=True, expiry=self._expiry)
        self._heartbeat_due = now + self.config.heartbeat_interval
        log.debug("heartbeat", seq=message.seq)

    # stopping -----------------------------------------------------------------------------
    def _begin_stop(self, now: float) -> None:
        log.info("stopping", phase=self.phase.value)
        self._stop_workflows()
        now = self._clock.monotonic()
        self._stop_deadline = now + SHUTDOWN_WAIT
        if self.phase in (Phase.SUBSCRIBING, Phase.ONLINE):
            self._publish_shutdown()
        elif self.phase is Phase.IDLE:
            self._stopped = True
        # CONNECTING: offline/shutdown goes out once the CONNACK arrives.

    def _stop_workflows(self) -> None:
        """Stop the services (they start again with the agent) and the job running, and
        send the ``stopped`` events before offline/shutdown if the connection allows."""
        if self._executor is None or not self._executor.running():
            return
        try:
            self._executor.stop_all("agent stopping", STOP_WORKFLOWS_WAIT)
        except AgentError as exc:
            log.error("workflows not stopped cleanly", error=str(exc))
        self._send_events()

    def _publish_shutdown(self) -> None:
        self.phase = Phase.STOPPING
        payload = encode(self._heartbeat.offline("shutdown"))
        self._shutdown_mid = self._session.publish(self.status_topic, payload, retain=True)

    def _disconnect_cleanly(self) -> None:
        if not self._session.has_socket:
            return
        self._session.disconnect()
        deadline = self._clock.monotonic() + 1.0
        while self._session.has_socket and self._clock.monotonic() < deadline:
            self._session.poll(0.05)
