"""The controller's own retained status, ``R/controller/status``: its birth (``online``,
with its boot id, which also ends each round of the retained sync), its will and its clean
goodbye (``offline``), and the status kept right while it runs (:meth:`StatusBeacon.keep`):
published again once the retained state is synchronised, whenever the counts change or
something else overwrote it (at most once per :data:`STATUS_GAP`), and with every counter
every ``stats_interval`` seconds.

Every status on the topic passes :meth:`StatusBeacon.observe`: another controller's birth
there means two run on one topic root, and the one that started later gives way
(:mod:`~edgeplane.controller.core.rivals`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable
from typing import Final, Literal

import structlog

from edgeplane.controller.core.badinput import BadInput
from edgeplane.controller.core.operations import Operations, Outgoing
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.rivals import RivalWatch, Verdict
from edgeplane.controller.daemon.command_keys import CommandKeys
from edgeplane.controller.daemon.sync import SUBSCRIBE_TIMEOUT
from edgeplane.controller.mqtt import Connection, Will
from edgeplane.shared import __version__
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.codec import CONTROLLER_STATUS, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import ControllerStatus
from edgeplane.shared.topics import TopicRoot

__all__ = ["COUNTS_CHECK", "STATUS_GAP", "StatusBeacon"]

STATUS_GAP: Final = 1.0  # seconds at least between two statuses after the birth: no storm
COUNTS_CHECK: Final = 0.5  # seconds between looks at the counts

log: Final = structlog.get_logger("controller")


class StatusBeacon:
    """``keys``: the command keys; every status carries the current one's public half (and
    id), for agents to be enrolled with, and the ids of every key in use."""

    def __init__(
        self,
        root: TopicRoot,
        core: Presence,
        bad: BadInput,
        operations: Operations,
        since: float,
        keys: CommandKeys,
        clock: Clock | None = None,
    ) -> None:
        self.boot = uuid.uuid4().hex[:16]
        self.host = socket.gethostname()
        self._topic = root.controller_status()
        self._core = core
        self._bad = bad
        self._ops = operations
        self._since = since
        self._keys = keys
        self._clock = clock or SystemClock()
        self._watch = RivalWatch(ControllerStatus("online", boot=self.boot, since=since))
        self._overwritten = asyncio.Event()
        self._overwritten_by = ""
        self._shown = (-1, -1)  # the counts last published
        self.gave_way_to: ControllerStatus | None = None  # the controller that stays
        self.on_give_way: Callable[[], None] = lambda: None
        # The webhook's (sent, failed, dropped) counters; zeros without one.
        self.notify_counts: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)

    def settle(self, dead_birth: bytes | None) -> None:
        """The retained birth of a controller found dead before we started: it means
        nothing when the broker delivers it again."""
        self._watch = RivalWatch(self.identity(), dead_birth)

    def will(self) -> Will:
        payload = encode(self.status("offline", reason="connection-lost"))
        return Will(self._topic, payload, qos=1, retain=True)

    async def birth(self, connection: Connection) -> None:
        if self.gave_way_to is not None:
            return  # the topic is the other controller's
        payload = encode(self.status("online"))
        await connection.publish(self._topic, payload, retain=True, ack_timeout=SUBSCRIBE_TIMEOUT)

    async def goodbye(self, connection: Connection) -> None:
        """Clean stop: the retained status says offline, with the last counts (not when we
        gave way: the status is the other controller's)."""
        if self.gave_way_to is not None:
            return
        payload = encode(self.status("offline", reason="shutdown"))
        await connection.publish(self._topic, payload, retain=True)

    async def keep(self, connection: Connection, every: float, synced: asyncio.Event) -> None:
        """Keep the retained status right on ``connection`` until cancelled: at once when
        the retained state is synchronised, then whenever the counts change or something
        else overwrote it, at most once per :data:`STATUS_GAP`; every ``every`` seconds
        with every counter (and logged)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + every
        while True:
            await synced.wait()  # while syncing, only births: they end the sync's rounds
            if self.gave_way_to is not None:
                return
            await self._publish(connection)
            if loop.time() >= due:
                log.info("controller stats", **self.counters())
                due = loop.time() + every
            await asyncio.sleep(min(STATUS_GAP, every))
            await self._until_wanted(due)

    async def _publish(self, connection: Connection) -> None:
        if self._overwritten.is_set():
            log.warning("controller status overwritten; put right", by=self._overwritten_by)
            self._overwritten.clear()
        self._shown = self._counts()
        await connection.publish(self._topic, encode(self.status("online")), retain=True)

    async def _until_wanted(self, due: float) -> None:
        """Until the status must be published again."""
        loop = asyncio.get_running_loop()
        while not (
            self._overwritten.is_set() or self._counts() != self._shown or loop.time() >= due
        ):
            wait = min(COUNTS_CHECK, max(0.0, due - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._overwritten.wait()

    def observe(self, payload: bytes, retained: bool) -> None:
        """A message on ``R/controller/status`` (ours, another controller's, anything)."""
        if self.gave_way_to is not None:
            return
        status: ControllerStatus | None = None
        with contextlib.suppress(DecodeError):
            status = CONTROLLER_STATUS.decode(payload) if payload else None
        verdict = self._watch.judge(status, payload, retained)
        if verdict is Verdict.GIVE_WAY and status is not None:
            self.gave_way_to = status
            log.error(
                "another controller is active on this topic root and started first: "
                "giving way to it",
                other_boot=status.boot,
                other_host=status.host,
                other_since=status.since,
            )
            self.on_give_way()
        elif verdict is Verdict.REASSERT:
            self._overwritten_by = _describe(status, payload)
            self._overwritten.set()

    def status(self, state: Literal["online", "offline"], reason: str = "") -> ControllerStatus:
        sent, failed, dropped = self.notify_counts()
        return ControllerStatus(
            status=state,
            boot=self.boot,
            ver=__version__,
            since=self._since,
            envs=len(self._core),
            online=self._core.online_count(),
            stale=self._core.stale,
            dropped=self._bad.counts,
            duplicates=self._ops.seen.duplicates,
            command_key=self._keys.current.public_key_b64,
            command_key_id=self._keys.current.key_id,
            command_key_ids=self._keys.key_ids,
            command_key_rotation=self._keys.state,
            host=self.host,
            at=self._clock.time(),
            reason=reason,
            notify_sent=sent,
            notify_failed=failed,
            notify_dropped=dropped,
        )

    def identity(self) -> ControllerStatus:
        """Our online status: the answer to another controller's ping."""
        return self.status("online")

    def announcement(self) -> Outgoing:
        """The online status, as a message for the publisher (the keys changed)."""
        return Outgoing(self._topic, encode(self.status("online")), True)

    def counters(self) -> dict[str, object]:
        sent, failed, dropped = self.notify_counts()
        return {
            "envs": len(self._core),
            "online": self._core.online_count(),
            "stale": self._core.stale,
            "dropped": self._bad.counts,
            "duplicates": self._ops.seen.duplicates,
            "notify_sent": sent,
            "notify_failed": failed,
            "notify_dropped": dropped,
        }

    def _counts(self) -> tuple[int, int]:
        return len(self._core), self._core.online_count()


def _describe(status: ControllerStatus | None, payload: bytes) -> str:
    if not payload:
        return "an empty (cleared) status"
    if status is None:
        return "a status that is not one"
    return f"{status.status} of boot {status.boot or '(none)'}"
