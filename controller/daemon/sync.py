"""Knowing when the broker has sent everything it retains, and which views it holds wrong.

After each (re)subscription the broker delivers the retained statuses and views first. The
subscription goes in two rounds, each ended by the echo of the controller's own birth
message (the broker sends a subscription's retained messages before anything published
after it): the statuses first, then the views, so the two retained floods never pile up at
once. While syncing, the retained views are collected; at the end every view the broker
lacks or holds wrong is re-published, and no other: a restart produces no view messages
for unchanged environments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from edgeplane.controller.core.views import same_judgement
from edgeplane.controller.mqtt import Connection, Subscription
from edgeplane.shared.codec import CONTROLLER_STATUS, VIEW, check_env
from edgeplane.shared.messages import EnvView
from edgeplane.shared.topics import TopicRoot

__all__ = ["SUBSCRIBE_TIMEOUT", "SYNC_TIMEOUT", "RetainedSync"]

SYNC_TIMEOUT: Final = 30.0  # give up waiting for the birth echo after this long
SUBSCRIBE_TIMEOUT: Final = 60.0  # a broker busy sending a fleet's retained state is slow


class RetainedSync:
    """The state of one connection's sync: :meth:`start` at every connection, the notes
    while the retained messages arrive, :meth:`finish` once they are all here."""

    def __init__(self, root: TopicRoot, boot: str, max_payload: int) -> None:
        self._root = root
        self._boot = boot
        self._max_payload = max_payload
        self.syncing = False
        self.synced = asyncio.Event()  # requests wait for the retained state
        self._echo = asyncio.Event()  # our birth came back: what was retained is all here
        self._broker_views: dict[str, EnvView | None] = {}
        self._sent_while_syncing: set[str] = set()

    def start(self) -> None:
        self.syncing = True
        self.synced.clear()
        self._echo.clear()
        self._broker_views.clear()
        self._sent_while_syncing.clear()

    async def subscribe(
        self, connection: Connection, birth: Callable[[Connection], Awaitable[None]]
    ) -> None:
        """The two rounds of subscriptions, each until the echo of ``birth``."""
        root = self._root
        await connection.subscribe(
            root.all_status(),
            root.controller_status(),
            root.requests(),
            ack_timeout=SUBSCRIBE_TIMEOUT,
        )
        await birth(connection)
        await self._echo.wait()
        self._echo.clear()
        # Views only serve the comparison: QoS 0 spares the broker's in-flight window and
        # a PUBACK each; no local: not the ones we publish ourselves.
        views = Subscription(root.all_views(), qos=0, no_local=True)
        await connection.subscribe(views, ack_timeout=SUBSCRIBE_TIMEOUT)
        await birth(connection)
        await self._echo.wait()

    def note_view(self, env: str, payload: bytes) -> EnvView | None:
        """A view the broker holds (None: cleared), collected while syncing. An empty one
        is no error; garbage raises :class:`DecodeError` (counted like any other bad
        input, and ours replaces it)."""
        if self.syncing:
            self._broker_views[env] = None
        if not payload:
            return None
        view = VIEW.decode(payload, limit=self._max_payload)
        check_env(view.env, env)
        if self.syncing:
            self._broker_views[env] = view
        return view

    def note_controller_status(self, payload: bytes) -> None:
        if not payload:
            return  # cleared
        status = CONTROLLER_STATUS.decode(payload, limit=self._max_payload)
        if self.syncing and status.boot == self._boot and status.status == "online":
            self._echo.set()

    def note_sent(self, env: str) -> None:
        """A view queued for publishing while syncing: the broker will have this one."""
        if self.syncing:
            self._sent_while_syncing.add(env)

    def finish(
        self, expected: dict[str, EnvView | None]
    ) -> list[tuple[str, EnvView | None]] | None:
        """End the sync: (env, view) of every view to re-publish, and (env, None) of every
        view to clear (a retired environment's the broker still holds); None when the sync
        had ended already."""
        if not self.syncing:
            return None
        self.syncing = False
        chosen: list[tuple[str, EnvView | None]] = []
        for env, view in expected.items():
            if env in self._sent_while_syncing:
                continue
            held = self._broker_views.get(env)
            if view is None:
                if held is not None:
                    chosen.append((env, None))
            elif not same_judgement(held, view):
                chosen.append((env, view))
        self._broker_views.clear()
        self._sent_while_syncing.clear()
        return chosen
