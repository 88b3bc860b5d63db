"""A stand-in for the controller on the request topic: it decodes each request, records it
(response topic, correlation data, expiry, QoS) and answers as the test says, for tests of
the operator commands' client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import encode
from edgeplane.shared.rpc import REQUEST, Reply, Request
from edgeplane.shared.topics import TopicRoot

__all__ = ["Answer", "Responder", "Taken", "ok", "responder"]

Answer = Callable[[Request], Reply | None]  # None: stay silent


@dataclass
class Taken:
    request: Request
    response_topic: str
    correlation: bytes
    expiry: int | None
    qos: int


@dataclass
class Responder:
    client: aiomqtt.Client
    answer: Answer
    taken: list[Taken] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            props = message.properties
            taken = Taken(
                REQUEST.decode(payload),
                getattr(props, "ResponseTopic", ""),
                getattr(props, "CorrelationData", b""),
                getattr(props, "MessageExpiryInterval", None),
                message.qos,
            )
            self.taken.append(taken)
            self.arrived.set()
            reply = self.answer(taken.request)
            if reply is not None:
                await self.send(taken, encode(reply), taken.correlation)

    async def send(self, taken: Taken, payload: bytes, correlation: bytes) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = correlation
        await self.client.publish(taken.response_topic, payload, qos=1, properties=properties)


@contextlib.asynccontextmanager
async def responder(broker: str, root: TopicRoot, answer: Answer) -> AsyncIterator[Responder]:
    url = BrokerUrl.parse(broker)
    client = aiomqtt.Client(url.host, url.port, protocol=aiomqtt.ProtocolVersion.V5)
    async with client:
        await client.subscribe(root.requests(), qos=1)
        serving = Responder(client, answer)
        task = asyncio.create_task(serving.serve())
        try:
            yield serving
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def ok(result: msgspec.Struct) -> Reply:
    return Reply(ok=True, result=msgspec.Raw(encode(result)))
