"""The agent's link to the broker: one connection after another, each announced per the
contract.

Each connection: take a new bdseq, set the will (offline/connection-lost with that bdseq),
CONNECT with a clean start; after CONNACK subscribe to ``cmd``; after its SUBACK publish
online (retained, with a message expiry of about three intervals), then subscribe to the
agent's own status topic to notice an offline that is not its own and re-assert online.
Heartbeats follow every interval. A lost connection is retried forever with capped,
jittered backoff. A session taken over by another runtime with the same identity
(:mod:`edge_agent.takeover` tells one from the other) is taken back at once the first
time, with the other runtime's boot id in the first online message (``taken_over_by``),
so the controller raises ``identity-conflict`` within seconds; a takeover again within
:data:`TAKEOVER_CAP` gets the long backoff, so two runtimes never fight in a tight loop.

:class:`BrokerLink` keeps the phase of the connection and its deadlines; the agent's loop
(:mod:`edge_agent.agent`) decides, around it, what a stop or a retirement changes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Final

from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.credentials import CredentialStore, Login
from edgeplane.edge_agent.errors import BrokerUnavailable, StateDirError
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder, message_expiry
from edgeplane.edge_agent.session import Disconnected, MqttSession
from edgeplane.edge_agent.state import BdseqStore
from edgeplane.edge_agent.takeover import TakeoverCheck
from edgeplane.edge_agent.waker import Waker
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock
from edgeplane.shared.codec import STATUS, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.logs import bind_context, get_logger
from edgeplane.shared.messages import OfflineReason, OfflineStatus

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "LOCKOUT_CAP",
    "LOCKOUT_INITIAL",
    "STABLE_AFTER",
    "TAKEOVER_CAP",
    "BrokerLink",
    "Phase",
]

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for CONNACK, and then for the SUBACK of `cmd`
REASSERT_GAP: Final = 1.0  # at most one re-assertion of online per this many seconds
LOG_GAP: Final = 60.0  # at most one log line a minute about garbage on the status topic
STABLE_AFTER: Final = 10.0  # a connection that lasted this long resets the backoff
TAKEOVER_CAP: Final = 600.0  # the longest wait after a takeover; also when it is forgotten
MAX_REFUSED_TOLD: Final = 1_000_000  # refusals counted for the next connection's report
# Every stored login refused (a locked-out agent): waits of 5-10 s growing to 150-300 s, so
# it neither hammers the broker nor needs a restart once an operator fixes its login.
LOCKOUT_INITIAL: Final = 10.0
LOCKOUT_CAP: Final = 300.0

log = get_logger(__name__)


class Phase(enum.Enum):
    IDLE = "idle"  # no connection; the next attempt is at `retry_at`
    CONNECTING = "connecting"  # CONNECT sent, waiting for CONNACK
    SUBSCRIBING = "subscribing"  # waiting for the SUBACK of `cmd` before going online
    ONLINE = "online"  # heartbeating
    STOPPING = "stopping"  # a final status published (shutdown, retired): no heartbeats


_HANDSHAKE: Final = (Phase.CONNECTING, Phase.SUBSCRIBING)


class BrokerLink:
    """The connection state machine of one agent; every method runs on the loop's thread."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        session: MqttSession,
        store: BdseqStore,
        heartbeat: HeartbeatBuilder,
        takeover_check: TakeoverCheck,
        clock: Clock,
        waker: Waker | None,
        logins: CredentialStore | None = None,
    ) -> None:
        self.env = config.env_id
        self.broker = config.broker
        self.keepalive = config.keepalive
        self.status_topic = config.topic_root.status(config.env_id)
        self.cmd_topic = config.topic_root.cmd(config.env_id)
        self.session = session
        self.heartbeat = heartbeat
        self._store = store
        self._takeover_check = takeover_check
        self._clock = clock
        self._waker = waker
        self._logins = logins
        self._login: Login | None = None  # this connection's
        self._switching = False  # logging in again with a new credential
        self._backoff = Backoff(initial=0.5, cap=30.0)
        self._lockout = Backoff(initial=LOCKOUT_INITIAL, cap=LOCKOUT_CAP)
        self._locked_out = False  # the last attempt's refusal was of the last stored login
        self._refused_bdseq: int | None = None  # of a CONNECT refused: the broker kept no will
        takeover_cap = max(TAKEOVER_CAP, config.takeover_backoff)
        self._takeover_backoff = Backoff(initial=config.takeover_backoff, cap=takeover_cap)
        self._takeovers = 0  # in a row, each within TAKEOVER_CAP of the connection before
        self.interval = config.heartbeat_interval
        self._expiry = message_expiry(config.heartbeat_interval)

        self.phase = Phase.IDLE
        self._retry_at = clock.monotonic()
        self._handshake_deadline = math.inf
        self._heartbeat_due = math.inf
        self._connected_at: float | None = None
        self._cmd_sub_mid: int | None = None
        self._status_sub_mid: int | None = None
        self._status_refusal_told = False
        self._ever_took_bdseq = False
        self._reasserted_at = -math.inf
        self._status_garbage_logged_at = -math.inf

    @property
    def online(self) -> bool:
        """Online and still connected: events may go out."""
        return self.phase is Phase.ONLINE and self.session.connected

    # the loop's turns -----------------------------------------------------------------------
    def step(self, now: float) -> None:
        """Whatever is due: a connection attempt, giving up a handshake, a heartbeat."""
        if self.phase is Phase.IDLE and now >= self._retry_at:
            self._connect(now)
        elif self.phase in _HANDSHAKE and now >= self._handshake_deadline:
            log.warning("the broker did not answer in time, dropping the connection")
            self._handshake_deadline = math.inf
            self.session.abort()
        elif self.phase is Phase.ONLINE and now >= self._heartbeat_due:
            self._publish_online(now)

    def next_deadline(self, now: float) -> float:
        deadlines = {
            Phase.IDLE: self._retry_at,
            Phase.CONNECTING: self._handshake_deadline,
            Phase.SUBSCRIBING: self._handshake_deadline,
            Phase.ONLINE: self._heartbeat_due,
            Phase.STOPPING: math.inf,
        }
        # paho sends its keepalive pings from the loop, once a keepalive has passed without
        # traffic: come round often enough that the ping is late by a quarter at most (the
        # broker gives up at one and a half).
        return min(deadlines[self.phase], now + self.keepalive / 4)

    # connecting -----------------------------------------------------------------------------
    def _connect(self, now: float) -> None:
        try:
            bdseq = self._next_bdseq()
        except StateDirError as exc:
            if not self._ever_took_bdseq:
                raise
            self.retry(now, "state-dir", str(exc))
            return
        self._ever_took_bdseq = True
        self.heartbeat.new_connection(bdseq)
        bind_context(bdseq=bdseq)
        self._use_login()
        try:
            self.session.connect((self.status_topic, encode(self.heartbeat.will())))
        except BrokerUnavailable as exc:
            self.retry(now, "unreachable", str(exc))
            return
        self.phase = Phase.CONNECTING
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        log.debug("connecting", broker=str(self.broker))

    def _next_bdseq(self) -> int:
        """A new bdseq, unless the broker refused the last CONNECT: it kept nothing of that
        connection (no will, no online), so its bdseq is used again."""
        refused, self._refused_bdseq = self._refused_bdseq, None
        return refused if refused is not None else self._store.take()

    def _use_login(self) -> None:
        self._login = None if self._logins is None else self._logins.choose()
        if self._login is not None:
            self.session.set_login(self._login.username, self._login.password.reveal())
            self.heartbeat.cred_gen = self._login.generation
            self.heartbeat.cred_proof = self._login.reported_proof

    def retry(self, now: float, why: str, detail: str) -> None:
        """Connect again after the next backoff delay (the long one when locked out)."""
        locked_out, self._locked_out = self._locked_out, False
        delay = (self._lockout if locked_out else self._backoff).next_delay()
        self.phase = Phase.IDLE
        self._retry_at = now + delay
        if locked_out:
            self._say_locked_out(delay)
        else:
            log.warning(
                "broker connection failed", why=why, detail=detail, retry_in=round(delay, 2)
            )

    def _say_locked_out(self, delay: float) -> None:
        username = "" if self._login is None else self._login.username
        log.error(
            f"the broker refused every stored login of environment {self.env!r} (last tried: "
            f"user name {username!r}); its credential was removed or replaced. Re-enrol this "
            "gateway: an operator writes a new bootstrap file for it, then restart the agent "
            "with edge-agent run --config FILE",
            username=username,
            retry_in=round(delay, 1),
        )

    def on_connected(self, now: float) -> None:
        """CONNACK: the handshake goes on (the caller subscribes, or ends a stop)."""
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        self._connected_at = now
        self._lockout.reset()
        if self._logins is not None and self._login is not None:
            self._logins.accepted(self._login)

    def on_refused(self, reason: str) -> None:
        """CONNACK refused the connection: a refused login makes way for the next one at
        once; the last one refused, the link backs off long (see :meth:`retry`)."""
        self._refused_bdseq = self.heartbeat.bdseq
        self.heartbeat.refused = min(self.heartbeat.refused + 1, MAX_REFUSED_TOLD)
        self.heartbeat.refused_reason = reason
        login = self._login
        if self._logins is None or login is None or not self._logins.refused(login, reason):
            log.error("broker refused the connection", reason=reason)
            return
        if self._logins.all_refused:
            self._locked_out = True  # said once, with the wait, when the link retries
            return
        log.error(
            "broker refused the login; trying the next stored credential",
            username=login.username,
            reason=reason,
        )
        self._backoff.reset()  # the next credential at once, not after a long wait

    def log_in_again(self, now: float) -> None:
        """A new credential arrived: end this connection cleanly (no will) and connect
        again at once, with it."""
        if self.phase not in (Phase.ONLINE, *_HANDSHAKE):
            return  # not connected: the next connection uses it anyway
        self._switching = True
        self.phase = Phase.CONNECTING  # between connections: no heartbeats, no events
        self._heartbeat_due = math.inf
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT  # aborted if it hangs
        log.info("logging in again with a new credential")
        self.session.disconnect()

    def subscribe_commands(self) -> None:
        self.phase = Phase.SUBSCRIBING
        log.info("connected", broker=str(self.broker))
        try:
            self._cmd_sub_mid = self.session.subscribe(self.cmd_topic)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed", detail=str(exc))
            self.session.abort()

    def on_subscribed(self, mid: int, refused: tuple[str, ...]) -> bool:
        """True when this is the SUBACK of ``cmd`` that ends the handshake."""
        if mid != self._cmd_sub_mid or self.phase is not Phase.SUBSCRIBING:
            if refused and mid == self._status_sub_mid:
                self._status_refused()
            elif refused:
                log.error("broker refused a subscription", reasons=list(refused))
            return False
        self._handshake_deadline = math.inf
        if refused:
            log.error(
                "broker refused the command subscription; commands will not arrive",
                topic=self.cmd_topic,
                reasons=list(refused),
            )
        return True

    def go_online(self, now: float, events_pending: int) -> None:
        self.phase = Phase.ONLINE
        self._publish_online(now)
        log.info("online", interval=self.interval, events_pending=events_pending)
        try:
            self._status_sub_mid = self.session.subscribe(self.status_topic, no_local=True)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed", detail=str(exc))

    def _status_refused(self) -> None:
        # Under `broker init` an environment's role may not read its own status topic, and
        # nobody else may write it either: there is nothing to re-assert against.
        if not self._status_refusal_told:
            self._status_refusal_told = True
            log.info(
                "this identity may not read its own status topic (a scoped broker role); "
                "its online is not re-asserted between heartbeats",
                topic=self.status_topic,
            )

    # losing it ------------------------------------------------------------------------------
    def connection_lost(self, now: float) -> float | None:
        """Forget the connection; how long it had been up (None: it never was)."""
        was_connected_for = None if self._connected_at is None else now - self._connected_at
        self._connected_at = None
        self._heartbeat_due = math.inf
        self._handshake_deadline = math.inf
        # The outbox sends unacknowledged events again after the next online; paho must
        # not (it would, before the subscription and the online message).
        self.session.take_unacked()
        return was_connected_for

    def reconnect_after(
        self,
        now: float,
        event: Disconnected,
        was_connected_for: float | None,
        stop_requested: Callable[[], bool],
    ) -> bool:
        """Schedule the next connection: soon, or late after a takeover. False when a stop
        was requested while looking for another runtime (then nothing is scheduled)."""
        if self._switching:
            self._switching = False
            self.phase = Phase.IDLE
            self._retry_at = now
            return True
        if event.taken_over:
            self._taken_over(now, was_connected_for, other_boot=None)
            return True
        if was_connected_for is not None:
            other_boot = self._takeover_check.run(self._waker, stop_requested)
            if other_boot is not None:
                self._taken_over(self._clock.monotonic(), was_connected_for, other_boot)
                return True
            if stop_requested():  # a signal may have come while looking
                return False
        if was_connected_for is not None and was_connected_for >= STABLE_AFTER:
            self._backoff.reset()
        self.retry(now, "connection-lost", event.reason)
        return True

    def _taken_over(
        self, now: float, was_connected_for: float | None, other_boot: str | None
    ) -> None:
        if was_connected_for is not None and was_connected_for >= TAKEOVER_CAP:
            self._takeover_backoff.reset()
            self._takeovers = 0
        self._takeovers += 1
        # The first time, at once: the controller then sees this boot come back and raises
        # identity-conflict. After that, the long backoff.
        delay = 0.0 if self._takeovers == 1 else self._takeover_backoff.next_delay()
        self.heartbeat.taken_over_by = other_boot or "unknown"
        self.phase = Phase.IDLE
        self._retry_at = now + delay
        then = (
            "connecting again at once to say so"
            if delay == 0
            else "waiting before connecting again"
        )
        log.error(
            f"session taken over: another runtime is using the identity of environment "
            f"{self.env!r}; {then}",
            env_id=self.env,
            other_boot=other_boot,
            retry_in=round(delay, 1),
        )

    # the own status topic -------------------------------------------------------------------
    def on_own_status(self, now: float, payload: bytes) -> None:
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
        if status.bdseq != self.heartbeat.bdseq:
            log.warning(
                "status topic shows another connection's offline; re-asserting online",
                their_bdseq=status.bdseq,
                reason=status.reason,
            )
            self._reassert_online(now)
        else:
            log.warning("status topic shows this connection offline", reason=status.reason)

    def _reassert_online(self, now: float) -> None:
        """Online at once; but if something keeps overwriting it, no faster than once a
        second (the next heartbeat is brought forward instead)."""
        if now - self._reasserted_at >= REASSERT_GAP:
            self._reasserted_at = now
            self._publish_online(now)
        else:
            self._heartbeat_due = min(self._heartbeat_due, self._reasserted_at + REASSERT_GAP)

    # publishing -----------------------------------------------------------------------------
    def set_interval(self, seconds: float) -> None:
        """A new heartbeat interval, sent at once in an online message when online."""
        self.interval = self.heartbeat.interval = seconds
        self._expiry = message_expiry(seconds)
        if self.phase is Phase.ONLINE:
            self._publish_online(self._clock.monotonic())

    def _publish_online(self, now: float) -> None:
        message = self.heartbeat.online()
        self.session.publish(self.status_topic, encode(message), retain=True, expiry=self._expiry)
        self._heartbeat_due = now + self.interval
        log.debug("heartbeat", seq=message.seq)

    def publish_offline(self, reason: OfflineReason) -> int:
        """The final status of this connection (no heartbeats after it); its mid."""
        self.phase = Phase.STOPPING
        payload = encode(self.heartbeat.offline(reason))
        return self.session.publish(self.status_topic, payload, retain=True)

    def clear_status(self) -> int:
        """The empty retained status (nothing left to show); its mid."""
        return self.session.publish(self.status_topic, b"", retain=True)

    def disconnect_cleanly(self) -> None:
        """A normal DISCONNECT (no will), waiting a second at most for the socket to close."""
        if not self.session.has_socket:
            return
        self.session.disconnect()
        deadline = self._clock.monotonic() + 1.0
        while self.session.has_socket and self._clock.monotonic() < deadline:
            self.session.poll(0.05)
