"""The baseline of the ingest benchmark: a bare aiomqtt subscriber that only decodes the
status stream (shared.codec.STATUS), like the controller's receive loop minus the judging.

Prints ``{"ready": true}`` once subscribed, then one JSON line for every message of the
marker environment: its status, the monotonic time it was decoded and how many status
messages were decoded so far. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiomqtt

from bench._flood import MARKER
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import STATUS
from edgeplane.shared.errors import DecodeError
from edgeplane.shared.messages import OnlineStatus
from edgeplane.shared.topics import TopicRoot

__all__ = ["main"]


async def consume(url: BrokerUrl, root: TopicRoot) -> None:
    marker = root.status(MARKER)
    decoded = 0
    async with aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"bench-bare-{time.time_ns()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(root.all_status(), qos=1)
        print(json.dumps({"ready": True}), flush=True)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                status = STATUS.decode(payload)
            except DecodeError:
                continue
            decoded += 1
            if message.topic.value == marker:
                state = "online" if isinstance(status, OnlineStatus) else "offline"
                line = {"status": state, "t": time.monotonic(), "decoded": decoded}
                print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._bare")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic-root", required=True)
    args = parser.parse_args(argv)
    asyncio.run(consume(BrokerUrl.parse(args.broker), TopicRoot(args.topic_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
