"""Paced heartbeats: ``--envs`` environments' retained online heartbeats at ``--interval``,
spread evenly over it, from one raw-socket MQTT 3.1.1 connection (its own process).

What a fleet of that size sends the controller, without a connection per environment: the
restart benchmark's environments beyond the simulated fleet (one broker holds at most as
many connections as it may open files). Their ids are ``{prefix}-NNNNN``. Prints
``{"ready": true}`` once every environment has sent its first heartbeat, then runs until its
stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from typing import Final

from bench._flood import connect_packet, heartbeat, publish_packet, read_exactly
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot

__all__ = ["main"]

TICK: Final = 0.02  # seconds between bursts of heartbeats


def pace(url: BrokerUrl, root: TopicRoot, prefix: str, envs: int, interval: float) -> None:
    names = [f"{prefix}-{i:05d}" for i in range(envs)]
    topics = [root.status(name) for name in names]
    sock = socket.create_connection((url.host, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"bench-paced-{time.time_ns()}"))
    if len(read_exactly(sock, 4)) != 4:
        raise SystemExit("bench._paced: no CONNACK")
    threading.Thread(target=_drain, args=(sock,), daemon=True).start()
    threading.Thread(target=_until_stdin_closes, daemon=True).start()
    per_tick = max(1, round(envs * TICK / interval))
    boot = f"paced{time.time_ns() % 10**9}"
    sent, began = 0, time.monotonic()
    while True:
        k = sent % envs
        batch = range(k, min(k + per_tick, envs))
        seq = sent // envs
        packets = [
            publish_packet(topics[i], heartbeat(names[i], 1, seq, interval, boot), i % 65_535 + 1)
            for i in batch
        ]
        sock.sendall(b"".join(packets))
        sent += len(batch)
        if sent == envs:
            print(json.dumps({"ready": True}), flush=True)
        time.sleep(max(0.0, began + sent * interval / envs - time.monotonic()))


def _drain(sock: socket.socket) -> None:
    while sock.recv(1 << 16):  # PUBACKs
        pass


def _until_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)  # the driver is gone or done: no clean-up to wait for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._paced")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic-root", required=True)
    parser.add_argument("--envs", type=int, required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--prefix", default="paced")
    args = parser.parse_args(argv)
    pace(BrokerUrl.parse(args.broker), TopicRoot(args.topic_root), args.prefix, args.envs,
         args.interval)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
