"""Operator requests for tests: publish a request with an MQTT 5 response topic and
correlation data, as an operator command does, and wait for the controller's reply."""

from __future__ import annotations

import json
import secrets
from typing import Any

import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeplane.shared.codec import encode
from edgeplane.shared.rpc import REPLY, REQUEST_EXPIRY, Reply, Request
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import Probe

__all__ = ["ask", "ask_ok", "reply_topic"]


def reply_topic(root: TopicRoot) -> str:
    """The test's response topic; the probe must subscribe to it before asking."""
    return root.reply("tester")


async def ask(
    probe: Probe,
    root: TopicRoot,
    request: Request | bytes,
    *,
    timeout: float = 10.0,
    correlation: bytes | None = None,
) -> Reply:
    """Send ``request`` (a Struct, or raw bytes for bad-input tests) and return the reply
    carrying our correlation data."""
    correlation = correlation or secrets.token_bytes(16)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = reply_topic(root)
    properties.CorrelationData = correlation
    properties.MessageExpiryInterval = REQUEST_EXPIRY
    payload = request if isinstance(request, bytes) else encode(request)
    mark = probe.mark()
    await probe.client.publish(root.requests(), payload, qos=1, properties=properties)
    found = await probe.wait_for(
        lambda m: (
            m.topic == reply_topic(root)
            and getattr(m.properties, "CorrelationData", None) == correlation
        ),
        after=mark,
        timeout=timeout,
        what="the controller's reply",
    )
    return REPLY.decode(found.payload)


async def ask_ok(probe: Probe, root: TopicRoot, request: Request) -> Any:
    """The result of a request that must succeed, as plain JSON."""
    reply = await ask(probe, root, request)
    assert reply.ok, f"{type(request).__name__} refused: {reply.code}: {reply.error}"
    return json.loads(msgspec.json.encode(reply.result))
