"""The fleet worker: edge_agent.simulator.fleet.Fleet in a process of its own, driven over stdin.

Each line on stdin is a JSON command, each answer one JSON line on stdout (logs go to
stderr). Times are ``time.monotonic()`` (system-wide on Linux)::

    {"op": "start"}                      -> {"online": N, "seconds": S}
    {"op": "kill", "ids": [3, 9]}        -> {"t": {"sim-00003": T, ...}}  T: just before abort
    {"op": "stop", "ids": [...]}         -> {"t": {...}}  T: just before the clean stop began
    {"op": "restart", "ids": [...]}      -> {"t": {...}}  T: publish of the first online
    {"op": "freeze", "ids": [...]}       -> {"t": {...}, "last_beat": {...}}
    {"op": "thaw", "ids": [...]}         -> {"t": {...}}
    {"op": "stats"}                      -> {"online": N, "heartbeats": H, ...}

End of stdin stops every agent cleanly and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from edgeplane.edge_agent.simulator.agent import SimulatedAgent
from edgeplane.edge_agent.simulator.fleet import Fleet
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.logs import configure_logging
from edgeplane.shared.topics import TopicRoot

__all__ = ["main"]

RESTART_TIMEOUT = 30.0


class Worker:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.first_online: dict[str, float] = {}
        self.last_beat: dict[str, float] = {}

    def on_heartbeat(self, env: str, seq: int, t: float) -> None:
        self.last_beat[env] = t
        if seq == 0:
            self.first_online[env] = t

    def agents(self, command: dict[str, Any]) -> list[SimulatedAgent]:
        return [self.fleet.agents[int(i)] for i in command.get("ids", [])]

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "start":
            began = time.monotonic()
            await self.fleet.start()
            return {"online": self.fleet.online, "seconds": time.monotonic() - began}
        if op in ("kill", "stop"):
            return await self._end(self.agents(command), op)
        if op == "restart":
            return await self._restart(command)
        if op == "freeze":
            stamps = {}
            for agent in self.agents(command):
                stamps[agent.env] = time.monotonic()
                agent.freeze()
            beats = {env: self.last_beat.get(env) for env in stamps}
            return {"t": stamps, "last_beat": beats}
        if op == "thaw":
            stamps = {}
            for agent in self.agents(command):
                stamps[agent.env] = time.monotonic()
                agent.thaw()
            return {"t": stamps}
        if op == "stats":
            return {"online": self.fleet.online, **asdict(self.fleet.stats)}
        return {"error": f"unknown command {op!r}"}

    async def _end(self, agents: list[SimulatedAgent], how: str) -> dict[str, Any]:
        stamps: dict[str, float] = {}
        endings = []
        for agent in agents:
            stamps[agent.env] = time.monotonic()
            endings.append(agent.kill() if how == "kill" else agent.stop())
        await asyncio.gather(*endings)
        return {"t": stamps}

    async def _restart(self, command: dict[str, Any]) -> dict[str, Any]:
        """A stopped or killed agent starts again: a new agent with the same id whose
        connections continue the old one's bdseq."""
        fresh = []
        for i in command.get("ids", []):
            agent = self.fleet.restart(int(i))
            self.first_online.pop(agent.env, None)
            fresh.append(agent)
        deadline = time.monotonic() + RESTART_TIMEOUT
        # The simulator has no event for "this agent is online": poll its flag.
        while not all(a.online for a in fresh) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return {"t": {a.env: self.first_online.get(a.env) for a in fresh}}


async def serve(args: argparse.Namespace) -> None:
    fleet = Fleet(
        BrokerUrl.parse(args.broker),
        TopicRoot(args.topic_root),
        count=args.count,
        interval=args.interval,
        prefix=args.prefix,
        connect_rate=args.connect_rate,
    )
    worker = Worker(fleet)
    fleet.on_heartbeat = worker.on_heartbeat
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with fleet:
        while line := await reader.readline():
            try:
                answer = await worker.handle(json.loads(line))
            except Exception as exc:  # the driver gets the reason instead of a hang
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic-root", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--connect-rate", type=float, default=500.0)
    args = parser.parse_args(argv)
    configure_logging("json", "warning")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
