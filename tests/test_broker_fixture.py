from __future__ import annotations

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe


async def test_retained_message_survives_a_broker_restart(
    private_broker: MosquittoProcess, root: TopicRoot
) -> None:
    topic = root.view("probe")
    async with open_probe(private_broker.url) as probe:
        await probe.publish(topic, b'{"kept": true}', retain=True)
    private_broker.stop()
    private_broker.start()
    async with open_probe(private_broker.url, topic) as probe:
        got = await probe.wait_json(topic, kept=True)
    assert got == {"kept": True}
