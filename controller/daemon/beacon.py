"""The controller's own retained status, ``R/controller/status``: its birth (``online``,
with its boot id, which also ends each round of the retained sync), its will and its clean
goodbye (``offline``), and a refresh with its counters every ``stats_interval`` seconds."""

from __future__ import annotations

import asyncio
import uuid
from typing import Final, Literal

import structlog

from edgeplane.controller.core.badinput import BadInput
from edgeplane.controller.core.operations import Operations, Outgoing
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.daemon.command_keys import CommandKeys
from edgeplane.controller.daemon.sync import SUBSCRIBE_TIMEOUT
from edgeplane.controller.mqtt import Connection, Will
from edgeplane.shared import __version__
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import ControllerStatus
from edgeplane.shared.topics import TopicRoot

__all__ = ["StatusBeacon"]

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
    ) -> None:
        self.boot = uuid.uuid4().hex[:16]
        self._topic = root.controller_status()
        self._core = core
        self._bad = bad
        self._ops = operations
        self._since = since
        self._keys = keys

    def will(self) -> Will:
        will = self.status("offline", reason="connection-lost")
        return Will(self._topic, encode(will), qos=1, retain=True)

    async def birth(self, connection: Connection) -> None:
        payload = encode(self.status("online"))
        await connection.publish(self._topic, payload, retain=True, ack_timeout=SUBSCRIBE_TIMEOUT)

    async def goodbye(self, connection: Connection) -> None:
        """Clean stop: the retained status says offline, with the last counts."""
        goodbye = self.status("offline", reason="shutdown")
        await connection.publish(self._topic, encode(goodbye), retain=True)

    async def refresh(self, connection: Connection, every: float) -> None:
        """Publish the counters every ``every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every)
            await connection.publish(self._topic, encode(self.status("online")), retain=True)
            log.info("controller stats", **self.counters())

    def status(self, state: Literal["online", "offline"], reason: str = "") -> ControllerStatus:
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
            reason=reason,
        )

    def announcement(self) -> Outgoing:
        """The online status, as a message for the publisher (the keys changed)."""
        return Outgoing(self._topic, encode(self.status("online")), True)

    def counters(self) -> dict[str, object]:
        return {
            "envs": len(self._core),
            "online": self._core.online_count(),
            "stale": self._core.stale,
            "dropped": self._bad.counts,
            "duplicates": self._ops.seen.duplicates,
        }
