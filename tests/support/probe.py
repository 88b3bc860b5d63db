"""An MQTT observer for tests: records every message on its filters, waits for the one
a test expects (never a bare sleep), and publishes raw bytes for fault tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.properties

from edgeplane.shared.broker_url import BrokerUrl

__all__ = ["Probe", "Received", "open_probe"]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: paho.mqtt.properties.Properties | None = field(default=None, compare=False)


class Probe:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[Received] = []
        self._changed = asyncio.Condition()

    async def _pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            received = Received(str(message.topic), payload, message.retain, message.properties)
            async with self._changed:
                self.messages.append(received)
                self._changed.notify_all()

    async def subscribe(self, *filters: str, qos: int = 1) -> None:
        for topic_filter in filters:
            await self.client.subscribe(topic_filter, qos=qos)

    async def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1
    ) -> None:
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self,
        predicate: Callable[[Received], bool],
        *,
        timeout: float = 10.0,
        after: int = 0,
        what: str = "a matching message",
    ) -> Received:
        """The first message at index >= ``after`` that satisfies ``predicate``."""

        async def _wait() -> Received:
            async with self._changed:
                index = after
                while True:
                    for message in self.messages[index:]:
                        if predicate(message):
                            return message
                    index = len(self.messages)
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            seen = "\n  ".join(f"{m.topic} {m.payload[:200]!r}" for m in self.messages[-20:])
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last seen:\n  {seen}"
            ) from None

    async def wait_json(
        self,
        topic: str,
        *,
        timeout: float = 10.0,
        after: int = 0,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first JSON message on ``topic`` whose fields include ``fields``."""
        import json

        def matches(message: Received) -> bool:
            if message.topic != topic or not message.payload:
                return False
            try:
                data = json.loads(message.payload)
            except ValueError:
                return False
            return isinstance(data, dict) and all(data.get(k) == v for k, v in fields.items())

        found = await self.wait_for(
            matches, timeout=timeout, after=after, what=f"{topic} with {fields}"
        )
        result: dict[str, Any] = json.loads(found.payload)
        return result

    def mark(self) -> int:
        """An index to pass as ``after=`` to wait only for what comes next."""
        return len(self.messages)


@contextlib.asynccontextmanager
async def open_probe(broker: str, *filters: str) -> AsyncIterator[Probe]:
    url = BrokerUrl.parse(broker)
    client = aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"probe-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    async with client:
        probe = Probe(client)
        task = asyncio.create_task(probe._pump(), name="probe-pump")
        try:
            await probe.subscribe(*filters)
            yield probe
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
