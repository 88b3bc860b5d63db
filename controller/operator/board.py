"""What ``edgeplane status``, ``edgeplane watch`` and, with the controller down,
``edgeplane env show`` show: the controller's retained views, whether they are still kept
(the controller's own status), and the age of each environment's last heartbeat.

**Stale views.** A view is the controller's judgement; it is kept true only while the
controller runs. The board also reads the retained ``R/controller/status``: when it is not
``online`` (an offline goodbye or will, or none retained at all) every row is *stale*, the
note on top says since when (:func:`stale_note`), and where the agent's own retained status
says otherwise than the view (the view says online, the agent's status says
offline/connection-lost; or an online whose heartbeats stopped more than 3 intervals ago)
the row shows what the agent's status says, with the view's status beside it.

**Heartbeat age.** It comes from the agents' retained status, not from the view (which the
controller re-publishes only when the status or flapping changes). An online status is
retained with an MQTT 5 message expiry of ``max(1, ceil(3 x interval))`` seconds, and a
broker hands a new subscriber the *remaining* expiry, so ``age = full expiry - remaining``,
by the broker's clock (no clock of ours is compared with a payload's). Mosquitto counts it
right (to within a second: it counts whole seconds). rumqttd, the embedded broker, does
not: for every topic filter any client subscribes, matching the message or not, it takes
the message's whole age (whole seconds) off the stored expiry again (measured: a 30 s
expiry read once a second gave 30, 29, 27, 24, 20, 15 ...), so its remaining expiry says
how often anyone subscribed, not how old the message is.

The board tells the two apart without trusting anyone's clock: its first two filters are
two equal ones of the status topics (``R/env/+/status`` and ``R/+/+/status``), so the
broker sends each retained status twice, at once. A broker that counts right sends the same
remaining expiry twice (give or take the seconds between the copies); rumqttd sends the
second copy with ``floor(age)`` seconds less (one filter's take), which is the age itself.
Once any environment's two copies differ by more than the seconds between them plus one,
the broker is known to consume its expiry, and every age on this board is read from the
difference (``floor(age) + 0.5``: within half a second); until then from the remaining
expiry of the first copy. That leaves one case: on rumqttd, an age between 1 and 2 s gives
no evidence, and its expiry is too high by one second for every filter another client
subscribed in that second. (A retained status that rumqttd's takes have used up is gone
until the next heartbeat; its row falls back to the view's ``last_seen``.) The twin filter
is dropped once the retained messages are in (``watch``), so live heartbeats come once.

Why not another source: a send time in the heartbeat would need the agent's clock to
agree with the operator's (gateways drift) and 16 more bytes in a message held to 160
(it is at 154); the view's ``last_seen`` moves only when the controller re-publishes the
view, at a transition.

A live heartbeat (not retained) is 0 s old when it arrives. Without an expiry (an offline
will, or a broker that drops it) the view's ``last_seen`` is used instead.

**The retained burst.** A broker sends a subscription's retained messages at once; the
board is complete once no retained message has come for ``quiet`` seconds
(:func:`collect_board`, and ``watch``'s first frame through the same :class:`_Feed`). One
task reads the connection and feeds the board; nothing that waits on a timer ever takes a
message, so no message is lost to a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from edgeplane.controller.mqtt import Connection, ConnectionState, Subscription, unique_client_id
from edgeplane.controller.operator.env_text import link_text
from edgeplane.controller.operator.output import ago, when
from edgeplane.controller.operator.output import render_table as table
from edgeplane.controller.reconnect import Reconnect, Retry
from edgeplane.controller.tasks import cancel_and_wait
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import CONTROLLER_STATUS, STATUS, VIEW, check_env
from edgeplane.shared.errors import BrokerUnavailable, DecodeError, InvalidTopic
from edgeplane.shared.messages import (
    AgentStatus,
    ControllerStatus,
    EnvView,
    OfflineStatus,
    OnlineStatus,
)
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = [
    "STALE_EXIT",
    "Board",
    "Row",
    "collect_board",
    "follow_board",
    "render_json",
    "render_row",
    "render_table",
    "stale_note",
]

STALE_EXIT: Final = 3  # exit status of a command that showed stale views (controller offline)
QUIET: Final = 0.5  # seconds without a retained message: the broker has sent them all
FIRST_FRAME_WAIT: Final = 15.0  # watch: the most seconds to wait for the retained burst
EXPIRY_FACTOR: Final = 3  # an online status expires after this many intervals (the agent's)
UNSUBSCRIBE_WAIT: Final = 5.0  # seconds for the broker to acknowledge the twin's end
RETRY_PAUSE: Final = 1.0  # watch: seconds before the first attempt to connect again ...
RETRY_PAUSE_CAP: Final = 5.0  # ... doubling up to this


@dataclass(frozen=True, slots=True)
class Row:
    env: str
    status: str  # as shown: the view's, or (stale) what the agent's own status says
    since: float | None  # the view's last transition; None when ``status`` is the agent's
    flapping: bool
    reason: str
    heartbeat_age: float | None  # seconds, None when never heard
    registered: bool = True  # False: an agent connected as an environment with no record
    stale: bool = False  # the controller is not online: the view is as of when it stopped
    view_status: str = ""  # what the view says ("" : as ``status``)
    stale_since: float | None = None  # when the controller stopped, when known
    pressure: tuple[str, ...] = ()  # resources with an open pressure episode
    missed_pct: float | None = None  # link quality over the last hour (None: unmeasured)
    reconnects_1h: int | None = None
    incidents: int = 0  # the view's count of open incidents

    @property
    def shown_status(self) -> str:
        """The status as the table shows it: ``online (unregistered)`` for an agent that
        has no environment record (it never receives commands), ``online (stale)`` when
        the controller is not there to keep the view, ``offline (stale view: online)``
        when the agent's own status contradicts the stale view."""
        marks = [] if self.registered else ["unregistered"]
        if self.stale:
            contradicted = self.view_status and self.view_status != self.status
            marks.append(f"stale view: {self.view_status}" if contradicted else "stale")
        return f"{self.status} ({', '.join(marks)})" if marks else self.status


@dataclass(slots=True)
class _Retained:
    """The copies of one retained online status (the twin subscription sends two)."""

    key: tuple[int, int, str]  # bdseq, seq, boot: the copies are of one message
    interval: float
    copies: list[tuple[float, int | None]] = field(default_factory=list)  # arrival, expiry


class Board:
    """The latest view, agent status and heartbeat time of every environment, and the
    controller's status, fed message by message."""

    def __init__(self, root: TopicRoot, clock: Callable[[], float] = time.time) -> None:
        self._root = root
        self._clock = clock
        self._views: dict[str, EnvView] = {}
        self._agents: dict[str, AgentStatus] = {}  # each agent's own latest status
        self._live: dict[str, float] = {}  # env -> wall time a live heartbeat arrived
        self._retained: dict[str, _Retained] = {}  # env -> its retained online, unread
        self.consumes_expiry = False  # the broker takes the age off at every delivery
        self.controller: ControllerStatus | None = None
        self._controller_lost_at: float | None = None  # a live offline arrived then

    def __len__(self) -> int:
        return len(self._views)

    # taking messages ---------------------------------------------------------------------
    def take(self, topic: str, payload: bytes, retained: bool, expiry_left: int | None) -> bool:
        """Take one message; True when what the table shows changed. Bad input is skipped."""
        try:
            parsed = self._root.parse(topic)
            env = parsed.env or ""
            if parsed.kind is TopicKind.VIEW:
                return self._take_view(env, payload)
            if parsed.kind is TopicKind.STATUS and payload:
                return self._take_status(env, payload, retained, expiry_left)
            if parsed.kind is TopicKind.CONTROLLER_STATUS:
                return self._take_controller(payload, retained)
        except (InvalidTopic, DecodeError):
            pass
        return False

    def _take_view(self, env: str, payload: bytes) -> bool:
        if not payload:  # a cleared view: the environment was retired
            return self._views.pop(env, None) is not None
        self._views[env] = VIEW.decode(payload)
        return True

    def _take_status(self, env: str, payload: bytes, retained: bool, left: int | None) -> bool:
        status = STATUS.decode(payload)
        check_env(status.env, env)
        self._agents[env] = status
        if not isinstance(status, OnlineStatus):
            return True
        if not retained:
            self._live[env] = self._clock()
            self._retained.pop(env, None)
            return True
        key = (status.bdseq, status.seq, status.boot)
        entry = self._retained.get(env)
        if entry is None or entry.key != key or len(entry.copies) >= 2:
            entry = self._retained[env] = _Retained(key, status.interval)
        entry.copies.append((self._clock(), left))
        self._live.pop(env, None)
        self.consumes_expiry = self.consumes_expiry or _consumed(entry)
        return True

    def _take_controller(self, payload: bytes, retained: bool) -> bool:
        self.controller = CONTROLLER_STATUS.decode(payload) if payload else None
        lost = self.controller is not None and self.controller.status != "online"
        self._controller_lost_at = self._clock() if lost and not retained else None
        return True

    # the controller ----------------------------------------------------------------------
    @property
    def controller_online(self) -> bool:
        return self.controller is not None and self.controller.status == "online"

    @property
    def stale(self) -> bool:
        """The views are not being kept: no controller says it is online."""
        return not self.controller_online

    @property
    def stale_since(self) -> float | None:
        """When the controller stopped, when that is known: the time of its clean goodbye,
        or when its will arrived while this board was reading."""
        status = self.controller
        if status is None or status.status == "online":
            return None
        if self._controller_lost_at is not None:
            return self._controller_lost_at
        return status.at if status.reason == "shutdown" else None

    # rows --------------------------------------------------------------------------------
    def rows(self) -> list[Row]:
        now = self._clock()
        stale, stale_since = self.stale, self.stale_since
        rows = []
        for env in sorted(self._views):
            view = self._views[env]
            heard = self._heard_at(env, view)
            age = None if heard is None else max(0.0, now - heard)
            status: str = view.status
            reason: str = view.reason
            since: float | None = view.since
            truth = self._agents_word(env, view, age) if stale else None
            if truth is not None:
                (status, reason), since = truth, None
            rows.append(
                Row(
                    env,
                    status,
                    since,
                    view.flapping,
                    reason,
                    age,
                    registered=view.registered,
                    stale=stale,
                    view_status=view.status,
                    stale_since=stale_since,
                    pressure=tuple(view.pressure),
                    missed_pct=view.missed_pct,
                    reconnects_1h=view.reconnects_1h,
                    incidents=view.open_incidents,
                )
            )
        return rows

    def _heard_at(self, env: str, view: EnvView) -> float | None:
        """Wall time of the environment's last heartbeat (see the module docstring)."""
        if env in self._live:
            return self._live[env]
        entry = self._retained.get(env)
        if entry is None or entry.copies[0][1] is None:
            return view.last_seen
        (first_at, first_left), *second = entry.copies
        assert first_left is not None
        if self.consumes_expiry and second and second[0][1] is not None:
            second_at, second_left = second[0]
            assert second_left is not None
            return second_at - (first_left - second_left) - 0.5
        return first_at - max(0, _full_expiry(entry.interval) - first_left)

    def _agents_word(self, env: str, view: EnvView, age: float | None) -> tuple[str, str] | None:
        """What the agent's own status says, where it contradicts the (stale) view."""
        own = self._agents.get(env)
        if own is None or view.status == "retired":
            return None
        word: tuple[str, str]
        if isinstance(own, OfflineStatus):
            word = ("offline", own.reason)
        elif age is not None and age > EXPIRY_FACTOR * own.interval:
            word = ("offline", "heartbeat-timeout")
        else:
            word = ("online", "heartbeat")
        return None if word[0] == view.status else word


def _full_expiry(interval: float) -> int:
    """The message expiry the agent gives an online status sent every ``interval``."""
    return max(1, math.ceil(EXPIRY_FACTOR * interval))


def _consumed(entry: _Retained) -> bool:
    """Whether the two copies of one retained status show a broker that takes the age off
    the stored expiry at every delivery (more than the seconds between the copies, + 1)."""
    if len(entry.copies) < 2:
        return False
    (first_at, first_left), (second_at, second_left) = entry.copies
    if first_left is None or second_left is None:
        return False
    return first_left - second_left > (second_at - first_at) + 1


# --- rendering --------------------------------------------------------------------------
def stale_note(board: Board, clock: Callable[[], float] = time.time) -> str | None:
    """The line on top of stale views (None when the controller is online)."""
    status = board.controller
    if status is None:
        return (
            "no controller status under this topic root (no controller has run here, or its "
            "status was cleared): views may be stale"
        )
    if status.status == "online":
        return None
    since = board.stale_since
    up = f"; it was up since {when(status.since, clock=clock)}" if status.since else ""
    if status.reason == "shutdown":
        at = f" since {when(since, clock=clock)}" if since is not None else ""
        return f"controller offline{at} (shutdown): views are as of then"
    if status.reason == "connection-lost":
        lost = f" at {when(since, clock=clock)}" if since is not None else ""
        connected = f" (connected at {when(status.at, clock=clock)})" if status.at else ""
        return (
            f"controller offline: its connection was lost{lost}{connected}{up}: views are "
            "as of then"
        )
    return f"controller offline{up}: views may be stale"


def render_row(row: Row) -> dict[str, Any]:
    """One row as ``status --json`` prints it."""
    return {
        "env": row.env,
        "status": row.status,
        "since": row.since,
        "flapping": row.flapping,
        "reason": row.reason,
        "heartbeat_age": None if row.heartbeat_age is None else round(row.heartbeat_age, 1),
        "registered": row.registered,
        "stale": row.stale,
        "view_status": row.view_status or row.status,
        "stale_since": row.stale_since,
        "pressure": list(row.pressure),
        "missed_pct": row.missed_pct,
        "reconnects_1h": row.reconnects_1h,
        "open_incidents": row.incidents,
    }


def render_json(rows: list[Row]) -> str:
    return json.dumps([render_row(row) for row in rows], indent=2)


def render_table(rows: list[Row], now: float | None = None) -> str:
    if not rows:
        return "no environments known (no retained views under this topic root)"
    now = time.time() if now is None else now
    header = (
        "ENV",
        "STATUS",
        "SINCE",
        "FLAPPING",
        "INCIDENTS",
        "LAST HEARTBEAT",
        "LINK",
        "PRESSURE",
        "REASON",
    )
    lines = [
        (
            row.env,
            row.shown_status,
            "-" if row.since is None else ago(max(0.0, now - row.since)),
            "yes" if row.flapping else "no",
            str(row.incidents) if row.incidents else "-",
            "never" if row.heartbeat_age is None else ago(row.heartbeat_age),
            link_text(row.missed_pct, row.reconnects_1h, short=True),
            ",".join(row.pressure) or "-",
            row.reason,
        )
        for row in rows
    ]
    return table(header, lines)


# --- reading the broker -----------------------------------------------------------------
def _status_filters(root: TopicRoot, env: str | None) -> tuple[str, str]:
    """Two equal filters of the agents' status topics (one environment's, or all): each
    retained status comes twice (see the module docstring)."""
    if env is None:
        return root.all_status(), f"{root}/+/+/status"
    return root.status(env), f"{root}/+/{env}/status"


@contextlib.asynccontextmanager
async def _subscribed(
    url: BrokerUrl, root: TopicRoot, env: str | None, connect_timeout: float = 5.0
) -> AsyncIterator[Connection]:
    """Raises :class:`BrokerUnavailable` when the broker cannot be reached or is lost."""
    async with Connection(
        url, unique_client_id("edgeplane-status"), timeout=connect_timeout
    ) as connection:
        # QoS 0: a reader needs no acknowledgements, and the broker then streams a
        # fleet's retained messages without waiting on an in-flight window. The twin
        # status filters come first and together: rumqttd takes a retained message's age
        # off its expiry for every filter subscribed (even one it does not match), so the
        # first copy is as fresh as can be and the two differ by exactly one filter's take.
        views = root.all_views() if env is None else root.view(env)
        filters = (*_status_filters(root, env), root.controller_status(), views)
        await connection.subscribe(*(Subscription(topic, qos=0) for topic in filters))
        yield connection


class _Feed:
    """The one task that reads a connection, feeding every message to ``board``; an async
    context manager (leaving it stops the task)."""

    def __init__(self, connection: Connection, board: Board) -> None:
        self.board = board
        self._connection = connection
        self._retained = asyncio.Event()  # set at every retained message, and at the end
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._read(), name="board-feed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._task is not None
        if exc is None:
            await cancel_and_wait(self._task)  # raises what ended the reading, if anything
            return
        self._task.cancel()
        with contextlib.suppress(BaseException):  # the error already on its way wins
            await self._task

    async def _read(self) -> None:
        try:
            async for message in self._connection:
                retained = message.retained
                self.board.take(message.topic, message.payload, retained, message.expiry_left)
                if retained:
                    self._retained.set()
        finally:
            self._retained.set()

    async def settled(
        self, quiet: float, give_up: float, enough: Callable[[Board], bool] | None = None
    ) -> None:
        """Return once ``quiet`` seconds pass without a retained message (the broker has
        sent them all), at ``give_up`` (loop time) at the latest, or as soon as ``enough``
        says so; raise what ended the reading (:class:`BrokerUnavailable`)."""
        loop = asyncio.get_running_loop()
        while (left := give_up - loop.time()) > 0:
            self._retained.clear()
            self._raise_if_ended()
            if enough is not None and enough(self.board):
                return
            with contextlib.suppress(TimeoutError):  # waiting on an event takes no message
                async with asyncio.timeout(min(quiet, left)):
                    await self._retained.wait()
                continue
            break
        self._raise_if_ended()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``; raise at once what ends the reading meanwhile."""
        assert self._task is not None
        await asyncio.wait({self._task}, timeout=seconds)
        self._raise_if_ended()

    def _raise_if_ended(self) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # BrokerUnavailable: the connection was lost
            raise RuntimeError("the board's connection ended")  # pragma: no cover


async def _drop_twin(connection: Connection, root: TopicRoot) -> None:
    """Unsubscribe the twin status filter (live heartbeats then come once). Only a saving:
    a broker slow to acknowledge it costs nothing but the second copies."""
    try:
        await connection.unsubscribe(_status_filters(root, None)[1], ack_timeout=UNSUBSCRIBE_WAIT)
    except BrokerUnavailable:
        if connection.state is not ConnectionState.CONNECTED:
            raise


async def collect_board(
    url: BrokerUrl,
    root: TopicRoot,
    *,
    env: str | None = None,
    wait_at_most: float = 5.0,
    quiet: float = QUIET,
    enough: Callable[[Board], bool] | None = None,
) -> Board:
    """Every retained view (or ``env``'s), agent status and the controller's status:
    collected until ``quiet`` seconds pass without a retained message (the broker sends
    them all at once on subscription), at most ``wait_at_most``, or until ``enough``."""
    board = Board(root)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_at_most
    async with (
        _subscribed(url, root, env, wait_at_most) as connection,
        _Feed(connection, board) as feed,
    ):
        await feed.settled(quiet, give_up, enough)
    return board


async def follow_board(
    url: BrokerUrl,
    root: TopicRoot,
    on_change: Callable[[Board], None],
    *,
    redraw: float = 1.0,
    on_retry: Callable[[Retry], None] | None = None,
) -> None:
    """Call ``on_change`` with the board once the retained state is in, then every
    ``redraw`` seconds (so heartbeat ages keep counting), until cancelled.

    A broker lost later is connected to again (the one reconnect loop; ``on_retry`` hears
    of each failed attempt) and the board built anew from its retained state; only a
    first connection that fails ends it (:class:`BrokerUnavailable`)."""
    reconnect = Reconnect(
        backoff=Backoff(initial=RETRY_PAUSE, cap=RETRY_PAUSE_CAP),
        first_must_succeed=True,
        on_retry=on_retry,
    )

    async def session(connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        async with _Feed(connection, Board(root)) as feed:
            await feed.settled(QUIET, loop.time() + FIRST_FRAME_WAIT)
            await _drop_twin(connection, root)
            reconnect.settled()
            while True:
                on_change(feed.board)
                await feed.pause(redraw)

    await reconnect.run(lambda: _subscribed(url, root, None), session)
