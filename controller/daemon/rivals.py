"""Before the controller starts: is another one alive on this broker and topic root?

:func:`find_rival` looks on a connection of its own, before the real ones: a client id of
its own (no session to take over), no will (so it can never publish a status) and nothing
retained. It subscribes to ``R/controller/status`` and to the controller's reply topic
``R/controller/reply/edgeplane-controller``, and sends itself a marker there: the broker
delivers a subscription's retained messages before anything published after it, so once
the marker is back the retained status, if any, is here.

- none, or ``offline`` (a goodbye, or a will that fired): nobody is there, start;
- ``online``: that controller may be alive, or dead with its will not fired yet (1.5 x
  keepalive) or lost (it died while the broker was down). A ``controller-ping`` request
  settles it: a live controller answers at once, over the request topics; no answer
  within :data:`PING_TIMEOUT` (:data:`OWN_PING_TIMEOUT` when the birth is of our own
  last boot, recorded beside the database: a restart after a crash) means it is dead.

A live one is refused with :class:`~edgeplane.controller.errors.AnotherController`,
naming it. A dead one's birth is returned, so the running controller knows it when the
broker delivers it again (:class:`~edgeplane.controller.core.rivals.RivalWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Final

import msgspec
import structlog

from edgeplane.controller.core.acl import CONTROLLER_USER
from edgeplane.controller.daemon.settings import ControllerSettings
from edgeplane.controller.errors import AnotherController
from edgeplane.controller.mqtt import Connection, Message, unique_client_id
from edgeplane.controller.reconnect import Reconnect, Retry
from edgeplane.shared.codec import CONTROLLER_STATUS, encode
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import ControllerStatus
from edgeplane.shared.rpc import REPLY, REQUEST_EXPIRY, ControllerPing, Reply
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "BOOT_FILE",
    "OWN_PING_TIMEOUT",
    "PING_TIMEOUT",
    "find_rival",
    "last_boot",
    "remember_boot",
    "rival_text",
]

PING_TIMEOUT: Final = 3.0  # seconds a live controller has to answer
OWN_PING_TIMEOUT: Final = 1.0  # ... when the birth is our own last boot's (a restart)
MARKER_TIMEOUT: Final = 10.0  # for the echo of our marker (a slow broker)
RETAINED_WAIT: Final = 1.0  # without a marker (a site's older ACLs): wait this long
NOT_GRANTED: Final = 0x80  # SUBACK reason codes from here on refuse the subscription
BOOT_FILE: Final = "controller-boot"  # beside the database: the boot of its last start

log: Final = structlog.get_logger("controller")
_status_of: Final = msgspec.json.Decoder(ControllerStatus)


async def find_rival(
    settings: ControllerSettings, own_boot: str, stop: asyncio.Event
) -> bytes | None:
    """The payload of the retained birth of a controller found dead (None: none there);
    raises :class:`AnotherController` naming a live one. Waits for the broker like the
    controller's own connections do (None once ``stop`` is set)."""

    def lost(retry: Retry) -> None:
        log.warning(
            "broker connection lost; retrying",
            broker=str(settings.broker),
            error=str(retry.error),
            retry_in=round(retry.delay, 2),
        )

    def connect() -> Connection:
        return Connection(settings.broker, unique_client_id("edgeplane-controller-check"))

    check = _Check(settings, own_boot)
    return await Reconnect(stop=stop, on_retry=lost).run(connect, check.run)


class _Check:
    def __init__(self, settings: ControllerSettings, own_boot: str) -> None:
        self._settings = settings
        self._root: TopicRoot = settings.topic_root
        self._status_topic = self._root.controller_status()
        self._reply_topic = self._root.reply(CONTROLLER_USER)
        self._own_boot = own_boot

    async def run(self, connection: Connection) -> bytes | None:
        status_code, reply_code = await connection.subscribe(self._status_topic, self._reply_topic)
        if status_code >= NOT_GRANTED:
            log.warning("cannot read the controller status to look for another controller",
                        topic=self._status_topic)  # fmt: skip
            return None
        can_ask = reply_code < NOT_GRANTED
        held = await self._retained(connection, can_ask=can_ask)
        found = _decoded(held)
        if found is None or found.status != "online" or held is None:
            return None
        if not can_ask:
            log.warning(
                "the retained controller status says another controller is online, and this "
                "broker does not let the controller ask it (its role lacks "
                f"{self._reply_topic}: a site made by an older `edgeplane broker init`); "
                "starting: if that one is alive, the one that started later stops",
                **_named(found),
            )
            return held.payload
        own = found.boot == self._own_boot and bool(found.boot)
        timeout = OWN_PING_TIMEOUT if own else PING_TIMEOUT
        answer = await self._ping(connection, found, timeout)
        if answer is not None:
            raise AnotherController(rival_text(self._settings, answer, "is active"))
        log.warning(
            "the retained controller status says online, but that controller did not "
            f"answer within {timeout:g} s: it is gone; starting",
            own_last_boot=own,
            **_named(found),
        )
        return held.payload

    async def _retained(self, connection: Connection, *, can_ask: bool) -> Message | None:
        """The retained controller status (the last status before the marker's echo)."""
        marker = secrets.token_bytes(16)
        if can_ask:
            await connection.publish(self._reply_topic, b"", correlation=marker)
        held: Message | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MARKER_TIMEOUT if can_ask else RETAINED_WAIT):
                async for message in connection:
                    if message.topic == self._status_topic:
                        held = message
                        if not can_ask:
                            break
                    elif message.correlation == marker:
                        break
        return held

    async def _ping(
        self, connection: Connection, found: ControllerStatus, within: float
    ) -> ControllerStatus | None:
        """The status of the controller that answered our ping; None when none did (or
        the one we asked about said offline meanwhile: its will fired)."""
        correlation = secrets.token_bytes(16)
        await connection.publish(
            self._root.requests(),
            encode(ControllerPing()),
            correlation=correlation,
            response_topic=self._reply_topic,
            expiry=REQUEST_EXPIRY,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                async for message in connection:
                    if message.topic == self._status_topic:
                        now = _decoded(message)
                        if now is not None and now.boot == found.boot and now.status != "online":
                            return None
                    elif message.correlation == correlation:
                        return _answerer(message.payload, found)
        return None


def _decoded(message: Message | None) -> ControllerStatus | None:
    """The controller status a message holds; None for none, a cleared one or garbage."""
    if message is None or not message.payload:
        return None
    try:
        return CONTROLLER_STATUS.decode(message.payload)
    except DecodeError as exc:
        log.warning("the retained controller status is not one; ignored", detail=exc.detail)
        return None


def _answerer(payload: bytes, found: ControllerStatus) -> ControllerStatus:
    """Who answered: the status in its reply. An answer we cannot read (a controller of
    an older version refuses the ping it does not know) is still a live controller: the
    one the retained status names."""
    try:
        reply: Reply = REPLY.decode(payload)
        if reply.ok:
            return _status_of.decode(reply.result)
    except (DecodeError, msgspec.DecodeError):
        pass
    return found


def _named(status: ControllerStatus) -> dict[str, object]:
    return {"other_boot": status.boot, "other_host": status.host, "other_since": status.since}


def rival_text(settings: ControllerSettings, other: ControllerStatus, state: str) -> str:
    """One line naming the other controller, for the refusal."""
    since = "an unknown time"
    if other.since is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(other.since))
    host = f" on host {other.host}" if other.host else ""
    return (
        f"another controller {state} on {settings.broker} under topic root "
        f"{settings.topic_root}: boot {other.boot or '(none)'}{host}, running since {since}; "
        "stop it first, or give this one its own --topic-root"
    )


def _boot_path(settings: ControllerSettings) -> Path | None:
    db = settings.db_path
    return None if str(db) == ":memory:" else db.parent / BOOT_FILE


def last_boot(settings: ControllerSettings) -> str:
    """The boot of the last controller started with this database ("" none known)."""
    path = _boot_path(settings)
    if path is None:
        return ""
    try:
        return path.read_text(encoding="ascii").strip()[:64]
    except (OSError, UnicodeDecodeError):
        return ""


def remember_boot(settings: ControllerSettings, boot: str) -> None:
    """Record ``boot`` as this database's last (only a restart's check is faster for it)."""
    path = _boot_path(settings)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(boot + "\n")
    except OSError as exc:
        log.warning("cannot record the controller's boot", file=str(path), error=str(exc))
