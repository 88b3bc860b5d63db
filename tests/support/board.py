"""The retained state that ``status`` and ``watch`` read, published by hand (views, agent
heartbeats with their message expiry, the controller's status), and the first frame of
``follow_board`` run in-process."""

from __future__ import annotations

import asyncio
import json
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeplane.controller.operator.board import Board, Row, follow_board
from edgeplane.controller.tasks import cancel_and_wait
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import status_payload
from tests.support.probe import Probe

__all__ = ["first_frame", "publish_controller", "publish_heartbeat", "publish_view"]


async def publish_heartbeat(
    probe: Probe, root: TopicRoot, env: str, expiry: int, interval: float = 30
) -> None:
    """As the agent does: retained, with a message expiry of about three intervals."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = expiry
    payload = status_payload(env, interval=interval)
    await probe.client.publish(root.status(env), payload, qos=1, retain=True, properties=properties)


async def publish_view(
    probe: Probe,
    root: TopicRoot,
    env: str,
    status: str = "online",
    *,
    since: float | None = None,
    last_seen: float | None = None,
) -> None:
    view = {"env": env, "status": status, "since": since or time.time() - 100, "interval": 30}
    if last_seen is not None:
        view["last_seen"] = last_seen
    await probe.publish(root.view(env), json.dumps(view), retain=True)


async def publish_controller(probe: Probe, root: TopicRoot, status: str = "online") -> None:
    """The controller's retained status, as a controller that runs (or ran) would leave it."""
    payload = {"status": status, "boot": "b0b0", "since": time.time() - 300}
    await probe.publish(root.controller_status(), json.dumps(payload), retain=True)


async def first_frame(url: str, root: TopicRoot, timeout: float = 20.0) -> list[Row]:
    """The rows of ``watch``'s first frame (``follow_board`` in this process)."""
    shown: asyncio.Future[list[Row]] = asyncio.get_running_loop().create_future()

    def on_change(board: Board) -> None:
        if not shown.done():
            shown.set_result(board.rows())

    following = asyncio.create_task(
        follow_board(BrokerUrl.parse(url), root, on_change), name="test-follow-board"
    )
    try:
        either: set[asyncio.Future[object]] = {following, shown}  # type: ignore[arg-type]
        await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            following.result()  # its error
        assert shown.done(), f"no first frame within {timeout} s"
        return shown.result()
    finally:
        await cancel_and_wait(following)
