"""The agent: one thread, one loop, presence per the contract.

Each connection: take a new bdseq, set the will (offline/connection-lost with that bdseq),
CONNECT with a clean start; after CONNACK subscribe to ``cmd``; after its SUBACK publish
online (retained, with a message expiry of about three intervals), then subscribe to the
agent's own status topic to notice an offline that is not its own and re-assert online.
Heartbeats follow every interval. A lost connection is retried forever with capped,
jittered backoff; a session taken over by another runtime with the same identity gets a
long backoff instead. A stop publishes offline/shutdown, waits for its PUBACK, and sends a
normal DISCONNECT (so no will).
"""

from __future__ import annotations

import enum
import math
from typing import Final

import structlog

from edge_agent.commands import CommandHandler
from edge_agent.config import AgentConfig
from edge_agent.errors import BrokerUnavailable, StateDirError
from edge_agent.heartbeat import HeartbeatBuilder, message_expiry
from edge_agent.metrics import HostMetrics
from edge_agent.session import (
    Connected,
    ConnectRefused,
    Disconnected,
    MessageIn,
    Published,
    Session,
    SessionEvent,
    Subscribed,
)
from edge_agent.state import BdseqStore
from edge_agent.takeover import TakeoverCheck
from edge_agent.waker import Waker
from shared.backoff import Backoff
from shared.clock import Clock, SystemClock
from shared.codec import STATUS, encode
from shared.errors import DecodeError
from shared.messages import OfflineStatus

__all__ = ["Agent", "Phase"]

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for CONNACK, and then for the SUBACK of `cmd`
REASSERT_GAP: Final = 1.0  # at most one re-assertion of online per this many seconds
LOG_GAP: Final = 60.0  # at most one log line a minute about garbage on the status topic
STABLE_AFTER: Final = 10.0  # a connection that lasted this long resets the backoff
SHUTDOWN_WAIT: Final = 5.0  # seconds a stop waits for the broker to take offline/shutdown
TAKEOVER_CAP: Final = 600.0  # the longest wait after a takeover; also when it is forgotten

log = structlog.get_logger("edge_agent")


class Phase(enum.Enum):
    IDLE = "idle"  # no connection; the next attempt is at `retry_at`
    CONNECTING = "connecting"  # CONNECT sent, waiting for CONNACK
    SUBSCRIBING = "subscribing"  # waiting for the SUBACK of `cmd` before going online
    ONLINE = "online"  # heartbeating
    STOPPING = "stopping"  # offline/shutdown published, waiting for its PUBACK


_HANDSHAKE: Final = (Phase.CONNECTING, Phase.SUBSCRIBING)


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
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._store = store or BdseqStore(config.state_dir)
        self._session = session or Session(config.env_id, config.broker, config.keepalive)
        self._waker = waker
        root, env = config.topic_root, config.env_id
        self.status_topic = root.status(env)
        self.cmd_topic = root.cmd(env)
        self.events_topic = root.events(env)
        self._heartbeat = HeartbeatBuilder(
            env, config.heartbeat_interval, self._clock, HostMetrics().sample
        )
        self._commands = CommandHandler(env, self._clock)
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
        self._held: list[tuple[str, bytes]] = []  # unacknowledged events to send again
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

    def request_stop(self) -> None:
        """Ask the loop to stop cleanly. Safe to call from a signal handler."""
        self._stop_requested = True
        if self._waker is not None:
            self._waker.wake()

    # the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; every log line names the environment and the connection."""
        with structlog.contextvars.bound_contextvars(env=self.config.env_id):
            try:
                return self._run()
            finally:
                structlog.contextvars.unbind_contextvars("bdseq")

    def _run(self) -> int:
        log.info(
            "agent starting",
            broker=str(self.config.broker),
            state_dir=str(self.config.state_dir),
            interval=self.config.heartbeat_interval,
            boot=self.boot,
        )
        wake = self._waker.reader if self._waker is not None else None
        while True:
            self._step()
            if self._stopped:
                break
            timeout = max(0.0, self._next_wakeup() - self._clock.monotonic())
            events = self._session.poll(timeout, wake)
            if self._waker is not None:
                self._waker.drain()
            for event in events:
                self._handle(event)
        self._disconnect_cleanly()
        log.info("agent stopped")
        return 0

    def _step(self) -> None:
        now = self._clock.monotonic()
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
        return min(deadlines[self.phase], now + self.config.keepalive / 4)

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
        structlog.contextvars.bind_contextvars(bdseq=bdseq)
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
                if mid == self._shutdown_mid:
                    log.info("offline/shutdown acknowledged")
                    self._stopped = True
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
        self.phase = Phase.ONLINE
        self._publish_online(now)
        log.info("online", interval=self.config.heartbeat_interval)
        try:
            self._session.subscribe(self.status_topic, no_local=True)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed", detail=str(exc))
        held, self._held = self._held, []
        for topic, payload in held:
            self._session.publish(topic, payload)

    def _on_disconnected(self, now: float, event: Disconnected) -> None:
        was_connected_for = None if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        self._heartbeat_due = math.inf
        self._handshake_deadline = math.inf
        self._held.extend(
            (topic, payload)
            for topic, payload in self._session.take_unacked()
            if topic != self.status_topic
        )
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
            answer = self._commands.handle(payload)
            if answer is not None and self._session.connected:
                self._session.publish(self.events_topic, encode(answer))
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
        self._stop_deadline = now + SHUTDOWN_WAIT
        log.info("stopping", phase=self.phase.value)
        if self.phase in (Phase.SUBSCRIBING, Phase.ONLINE):
            self._publish_shutdown()
        elif self.phase is Phase.IDLE:
            self._stopped = True
        # CONNECTING: offline/shutdown goes out once the CONNACK arrives.

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
