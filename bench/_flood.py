"""A raw-socket MQTT 3.1.1 publisher: heartbeats for many environments as fast as the broker
takes them (QoS 1, retained, like agents), for the ingest benchmark.

``warm``: one online heartbeat per environment, then the marker's online (``bdseq``).
``flood``: ``--count`` heartbeats over the environments with increasing ``seq``, then the
sentinel: the marker's ``offline``/``shutdown`` with its current ``bdseq``.

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
from edgeplane.shared.messages import OfflineStatus, OnlineStatus
from edgeplane.shared.topics import TopicRoot

__all__ = ["MARKER", "main"]

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


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return b"\x33" + _length(len(body)) + body  # PUBLISH, QoS 1, retain


def heartbeat(env: str, bdseq: int, seq: int) -> bytes:
    return encode(
        OnlineStatus(
            env=env,
            bdseq=bdseq,
            seq=seq,
            interval=10.0,
            boot="benchflood",
            cpu=12.5,
            mem=40.1,
            disk=55.0,
            ver="0.1.0",
            up=seq,
        )
    )


def build(root: TopicRoot, phase: str, envs: int, count: int, round_: int) -> list[bytes]:
    names = [f"flood-{i:05d}" for i in range(envs)]
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
        payloads = [
            (topics[k % envs], heartbeat(names[k % envs], 1, start + k // envs))
            for k in range(count)
        ]
        offline = OfflineStatus(env=MARKER, bdseq=bdseq, reason="shutdown")
        payloads.append((marker, encode(offline)))
    return [publish_packet(t, p, k % 65_535 + 1) for k, (t, p) in enumerate(payloads)]


def publish(url: BrokerUrl, packets: list[bytes]) -> dict[str, float]:
    sock = socket.create_connection((url.host, url.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"bench-flood-{time.time_ns()}"))
    if len(_read(sock, 4)) != 4:
        raise SystemExit("bench._flood: no CONNACK")
    acked: dict[str, float] = {}

    def read_acks() -> None:
        _read(sock, 4 * len(packets))
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


def _read(sock: socket.socket, n: int) -> bytes:
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
    parser.add_argument("--phase", choices=("warm", "flood"), required=True)
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--round", type=int, default=0)
    args = parser.parse_args(argv)
    packets = build(TopicRoot(args.topic_root), args.phase, args.envs, args.count, args.round)
    times = publish(BrokerUrl.parse(args.broker), packets)
    print(json.dumps({**times, "sent": len(packets)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
