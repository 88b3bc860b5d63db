"""``python -m bench._exec_fleet``: the deploy fan-out's fleet, in a process of its own.

``--count`` simulated agents (:class:`edge_agent.simulator.fleet.Fleet` with
:class:`~edge_agent.simulator.fleet.ExecutionSettings`: the real agent's command handler,
outbox and executor each) connect to the broker; once every one has announced itself the
worker prints one JSON line ``{"online": N, "seconds": S}``, then runs until its stdin
closes, stops every agent cleanly and prints ``{"events": E, "failures": F}``. Logs go to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from edgeplane.edge_agent.simulator.fleet import ExecutionSettings, Fleet
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.command_signature import parse_public_key
from edgeplane.shared.logs import configure_logging
from edgeplane.shared.topics import TopicRoot

__all__ = ["main"]


def _say(answer: dict[str, object]) -> None:
    print(json.dumps(answer), flush=True)


async def _serve(args: argparse.Namespace) -> None:
    fleet = Fleet(
        BrokerUrl.parse(args.broker),
        TopicRoot(args.topic_root),
        args.count,
        args.interval,
        args.prefix,
        execution=ExecutionSettings(
            Path(args.state_root), command_keys=(parse_public_key(args.command_key),)
        ),
    )
    async with fleet:
        began = time.monotonic()
        await fleet.start()
        _say({"online": fleet.online, "seconds": time.monotonic() - began})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    _say({"events": fleet.stats.events, "failures": fleet.stats.failures})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._exec_fleet")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic-root", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--prefix", default="fan")
    parser.add_argument("--state-root", required=True)
    parser.add_argument("--command-key", required=True, help="the controller's public key")
    args = parser.parse_args()
    configure_logging("json", "warning")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
