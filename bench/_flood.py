"""A raw-socket MQTT 3.1.1 publisher: heartbeats for many environments as fast as the broker
takes them (QoS 1, retained, like agents), for the ingest and backlog benchmarks.

``warm``: one online heartbeat per environment, then the marker's online (``bdseq``).
``flood``: ``--count`` heartbeats over the environments with increasing ``seq`` (and one of
the marker after each round of them, so that it is not judged offline by silence), then the
sentinel: the marker's ``offline``/``shutdown`` with its current ``bdseq``.
``events``: ``--count`` ``pong`` events (QoS 1, not retained) round-robin over the
environments, of the stream ``--src``, each environment's ``seq`` from ``--first-seq``.

Prints one JSON line: ``t0`` (monotonic, first byte sent), ``t_sent``, ``t_acked``, ``sent``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from typing import Final

from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import OfflineStatus, OnlineStatus, Pong
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "MARKER",
    "connect_packet",
    "env_name",
    "events",
    "heartbeat",
    "main",
    "publish_packet",
    "read_exactly",
]

MARKER: Final = "bench-marker"
BASE_BDSEQ: Final = 1_000


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string(client_id)
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int, *, retain: bool = True) -> bytes:
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    header = b"\x33" if retain else b"\x32"  # PUBLISH, QoS 1, (not) retained
    return header + _length(len(body)) + body


def heartbeat(
    env: str, bdseq: int, seq: int, interval: float = 10.0, boot: str = "benchflood"
) -> bytes:
    return encode(
        OnlineStatus(
            env=env,
            bdseq=bdseq,
            seq=seq,
            interval=interval,
            boot=boot,
            cpu=12.5,
            mem=40.1,
            disk=55.0,
            ver="0.1.0",
            up=seq,
        )
    )


def env_name(index: int) -> str:
    return f"flood-{index:05d}"


def events(root: TopicRoot, envs: int, count: int, src: str, first_seq: int = 1) -> list[bytes]:
    """``count`` pong events round-robin over ``envs`` environments (see the module doc)."""
    packets = []
    for k in range(count):
        env = env_name(k % envs)
        payload = encode(Pong(env=env, seq=first_seq + k // envs, src=src))
        packets.append(publish_packet(root.events(env), payload, k % 65_535 + 1, retain=False))
    return packets


def build(root: TopicRoot, phase: str, envs: int, count: int, round_: int) -> list[bytes]:
    names = [env_name(i) for i in range(envs)]
    topics = [root.status(name) for name in names]
    marker = root.status(MARKER)
    bdseq = BASE_BDSEQ + round_
    if phase == "warm":
        payloads = [
            (t, heartbeat(n, 1, round_ * (count + 1))) for t, n in zip(topics, names, strict=True)
        ]
        payloads.append((marker, heartbeat(MARKER, bdseq, 0)))
    else:
        start = round_ * (count + 1) + 1
        payloads = []
        for k in range(count):
            payloads.append((topics[k % envs], heartbeat(names[k % envs], 1, start + k // envs)))
            if k % envs == envs - 1:  # the marker stays online through a long flood
                payloads.append((marker, heartbeat(MARKER, bdseq, 1 + k // envs)))
        offline = OfflineStatus(env=MARKER, bdseq=bdseq, reason="shutdown")
        payloads.append((marker, encode(offline)))
    return [publish_packet(t, p, k % 65_535 + 1) for k, (t, p) in enumerate(payloads)]


def publish(url: BrokerUrl, packets: list[bytes]) -> dict[str, float]:
    sock = socket.create_connection((url.host, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"bench-flood-{time.time_ns()}"))
    if len(read_exactly(sock, 4)) != 4:
        raise SystemExit("bench._flood: no CONNACK")
    acked: dict[str, float] = {}

    def read_acks() -> None:
        read_exactly(sock, 4 * len(packets))
        acked["t"] = time.monotonic()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    data = b"".join(packets)
    t0 = time.monotonic()
    sock.sendall(data)
    t_sent = time.monotonic()
    reader.join(120)
    sock.sendall(b"\xe0\x00")
    sock.close()
    return {"t0": t0, "t_sent": t_sent, "t_acked": acked.get("t", float("nan"))}


def read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._flood")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic-root", required=True)
    parser.add_argument("--phase", choices=("warm", "flood", "events"), required=True)
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--src", default="bench-flood", help="the events' stream (events)")
    parser.add_argument("--first-seq", type=int, default=1, help="the first seq (events)")
    args = parser.parse_args(argv)
    root = TopicRoot(args.topic_root)
    if args.phase == "events":
        packets = events(root, args.envs, args.count, args.src, args.first_seq)
    else:
        packets = build(root, args.phase, args.envs, args.count, args.round)
    times = publish(BrokerUrl.parse(args.broker), packets)
    print(json.dumps({**times, "sent": len(packets)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
