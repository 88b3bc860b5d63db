"""The look an agent takes after the broker dropped it: is another runtime online as it?"""

from __future__ import annotations

import asyncio
import json

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.broker.process import free_port
from edgeplane.edge_agent.takeover import TakeoverCheck, foreign_boot
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import SystemClock
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe

ENV = "dev-lab-observer"


def online(boot: str, env: str = ENV) -> bytes:
    message = {"status": "online", "env": env, "bdseq": 3, "seq": 0, "interval": 1, "boot": boot}
    return json.dumps(message).encode()


def test_foreign_boot_is_an_online_of_this_env_from_another_process() -> None:
    assert foreign_boot(online("b0b0b0"), ENV, "a1a1a1") == "b0b0b0"
    assert foreign_boot(online("a1a1a1"), ENV, "a1a1a1") is None
    assert foreign_boot(online("b0b0b0", env="other"), ENV, "a1a1a1") is None
    offline = b'{"status":"offline","env":"dev-lab-observer","bdseq":3,"reason":"shutdown"}'
    assert foreign_boot(offline, ENV, "a1a1a1") is None
    assert foreign_boot(b"garbage", ENV, "a1a1a1") is None


async def check(broker: str, root: TopicRoot, own_boot: str = "a1a1a1") -> str | None:
    """The look is blocking (the agent has nothing else to do then): run it in a thread."""
    look = TakeoverCheck(ENV, BrokerUrl.parse(broker), root.status(ENV), own_boot, SystemClock())
    return await asyncio.to_thread(look.run, None, lambda: False)


async def test_retained_online_of_another_boot_is_seen(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with open_probe(broker.url) as probe:
        await probe.publish(root.status(ENV), online("b0b0b0"), retain=True)
    assert await check(broker.url, root) == "b0b0b0"
    assert await check(broker.url, root, own_boot="b0b0b0") is None, "its own online is no takeover"


async def test_nothing_retained_or_no_broker_means_no_takeover(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    assert await check(broker.url, root) is None
    assert await check(f"mqtt://127.0.0.1:{free_port()}", root) is None


async def test_the_look_leaves_no_will_and_no_retained_trace(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    async with open_probe(broker.url, root.everything()) as probe:
        await check(broker.url, root)
        await probe.publish(root.events(ENV), b"marker")
        await probe.wait_for(lambda m: m.payload == b"marker", timeout=5)
    assert [m.payload for m in probe.messages] == [b"marker"]
