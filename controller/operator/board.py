"""What ``edgeplane status`` and ``edgeplane watch`` show: the controller's retained views,
with the age of each environment's last heartbeat.

The age of the last heartbeat comes from the agents' retained status, not from the view
(which the controller re-publishes only when the status or flapping changes). An online
status is retained with an MQTT 5 message expiry of ``max(1, ceil(3 x interval))`` seconds,
and the broker hands a subscriber the *remaining* expiry, so::

    age = max(1, ceil(3 x interval)) - remaining expiry

(whole seconds, measured by the broker's clock: no clock of ours is compared with a
payload). A live heartbeat (not retained) is 0 s old when it arrives. Without an expiry
(an offline will, or a broker that drops it) the view's ``last_seen`` is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from edgeplane.controller.mqtt import Connection, Message, Subscription, unique_client_id
from edgeplane.controller.operator.output import ago
from edgeplane.controller.operator.output import render_table as table
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import STATUS, VIEW, check_env
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import EnvView, OnlineStatus
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = ["Board", "Row", "collect_board", "follow_board", "render_json", "render_table"]


@dataclass(frozen=True, slots=True)
class Row:
    env: str
    status: str
    since: float
    flapping: bool
    reason: str
    heartbeat_age: float | None  # seconds, None when never heard
    registered: bool = True  # False: an agent connected as an environment with no record

    @property
    def shown_status(self) -> str:
        """The status as the table shows it: ``online (unregistered)`` for an agent that
        has no environment record (it never receives commands)."""
        return self.status if self.registered else f"{self.status} (unregistered)"


class Board:
    """The latest view and heartbeat time of every environment, fed message by message."""

    def __init__(self, root: TopicRoot, clock: Callable[[], float] = time.time) -> None:
        self._root = root
        self._clock = clock
        self._views: dict[str, EnvView] = {}
        self._heard: dict[str, float] = {}  # env -> wall time of the last heartbeat

    def __len__(self) -> int:
        return len(self._views)

    def take(self, topic: str, payload: bytes, retained: bool, expiry_left: int | None) -> bool:
        """Take one message; True when what the table shows changed. Bad input is skipped."""
        try:
            parsed = self._root.parse(topic)
            env = parsed.env or ""
            if parsed.kind is TopicKind.VIEW:
                return self._take_view(env, payload)
            if parsed.kind is TopicKind.STATUS and payload:
                status = STATUS.decode(payload)
                check_env(status.env, env)
                if isinstance(status, OnlineStatus):
                    self._heard[env] = self._heard_at(status, retained, expiry_left)
                    return True
        except (InvalidTopic, DecodeError):
            pass
        return False

    def _take_view(self, env: str, payload: bytes) -> bool:
        if not payload:  # a cleared view: the environment was retired
            return self._views.pop(env, None) is not None
        self._views[env] = VIEW.decode(payload)
        return True

    def _heard_at(self, status: OnlineStatus, retained: bool, expiry_left: int | None) -> float:
        now = self._clock()
        if not retained:
            return now
        if expiry_left is None:
            view = self._views.get(status.env)
            return view.last_seen if view and view.last_seen else now
        full = max(1, math.ceil(3 * status.interval))
        return now - max(0, full - expiry_left)

    def rows(self) -> list[Row]:
        now = self._clock()
        rows = []
        for env in sorted(self._views):
            view = self._views[env]
            heard = self._heard.get(env, view.last_seen)
            age = None if heard is None else max(0.0, now - heard)
            rows.append(
                Row(
                    env,
                    view.status,
                    view.since,
                    view.flapping,
                    view.reason,
                    age,
                    registered=view.registered,
                )
            )
        return rows


def render_json(rows: list[Row]) -> str:
    return json.dumps(
        [
            {
                "env": row.env,
                "status": row.status,
                "since": row.since,
                "flapping": row.flapping,
                "reason": row.reason,
                "heartbeat_age": None if row.heartbeat_age is None else round(row.heartbeat_age, 1),
                "registered": row.registered,
            }
            for row in rows
        ],
        indent=2,
    )


def render_table(rows: list[Row], now: float | None = None) -> str:
    if not rows:
        return "no environments known (no retained views under this topic root)"
    now = time.time() if now is None else now
    header = ("ENV", "STATUS", "SINCE", "FLAPPING", "LAST HEARTBEAT", "REASON")
    lines = [
        (
            row.env,
            row.shown_status,
            ago(max(0.0, now - row.since)),
            "yes" if row.flapping else "no",
            "never" if row.heartbeat_age is None else ago(row.heartbeat_age),
            row.reason,
        )
        for row in rows
    ]
    return table(header, lines)


@contextlib.asynccontextmanager
async def _subscribed(
    url: BrokerUrl, root: TopicRoot, connect_timeout: float = 5.0
) -> AsyncIterator[Connection]:
    """Raises :class:`BrokerUnavailable` when the broker cannot be reached or is lost."""
    async with Connection(
        url, unique_client_id("edgeplane-status"), timeout=connect_timeout
    ) as connection:
        # QoS 0: a reader needs no acknowledgements, and the broker then streams a
        # fleet's retained messages without waiting on an in-flight window.
        await connection.subscribe(
            Subscription(root.all_views(), qos=0), Subscription(root.all_status(), qos=0)
        )
        yield connection


async def collect_board(
    url: BrokerUrl, root: TopicRoot, *, wait_at_most: float = 5.0, quiet: float = 0.5
) -> Board:
    """Every retained view: collected until ``quiet`` seconds pass without a message (the
    broker sends all retained messages at once on subscription), at most ``timeout``."""
    board = Board(root)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_at_most
    async with _subscribed(url, root, wait_at_most) as connection:
        messages = aiter(connection)
        while (left := give_up - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(anext(messages), min(quiet, left))
            except TimeoutError:
                break
            board.take(*_parts(message))
    return board


async def follow_board(
    url: BrokerUrl, root: TopicRoot, on_change: Callable[[Board], None], *, redraw: float = 1.0
) -> None:
    """Keep ``board`` up to date and call ``on_change`` at most every ``redraw`` seconds
    (and at least that often, so heartbeat ages keep counting). Runs until cancelled."""
    board = Board(root)
    async with _subscribed(url, root) as connection:
        messages = aiter(connection)
        loop = asyncio.get_running_loop()
        next_draw = loop.time()
        while True:
            try:
                wait = max(0.0, next_draw - loop.time())
                message = await asyncio.wait_for(anext(messages), wait or 0.05)
                board.take(*_parts(message))
            except TimeoutError:
                pass
            if loop.time() >= next_draw:
                on_change(board)
                next_draw = loop.time() + redraw


def _parts(message: Message) -> tuple[str, bytes, bool, int | None]:
    return message.topic, message.payload, message.retained, message.expiry_left
