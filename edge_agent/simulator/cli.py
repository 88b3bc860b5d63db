"""``edge-agent simulate``: a fleet of simulated agents from the command line, until
``--duration`` passes or SIGINT/SIGTERM, then every agent stops cleanly."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Final

import structlog

from edgeplane.edge_agent.simulator.fleet import Fleet, raise_open_files_limit
from edgeplane.shared import settings as s
from edgeplane.shared.broker_url import DEFAULT_BROKER
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.topics import TopicRoot

__all__ = ["SETTINGS", "add_arguments", "main", "run"]

log = structlog.get_logger("edgeplane.edge_agent.simulator.cli")

SPARE_FILES: Final = 64  # open files the process needs besides one socket per agent


def _prefix(value: Any) -> str:
    prefix = s.text(value)
    validate_env_id(f"{prefix}-00000")
    return prefix


def _interval(value: Any) -> float:
    seconds = s.positive_float(value)
    if seconds > 86_400:
        raise ValueError(f"expected at most 86400 seconds, got {value!r}")
    return seconds


SETTINGS: Final = (
    s.Setting("count", s.positive_int, 100, "how many agents to simulate"),
    s.Setting("broker", s.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"),
    s.Setting("topic_root", s.topic_root, TopicRoot(), "topic root"),
    s.Setting("heartbeat_interval", _interval, 10.0, "seconds between an agent's heartbeats"),
    s.Setting("prefix", _prefix, "sim", "environment ids are PREFIX-00000, PREFIX-00001, ..."),
    s.Setting("connect_rate", s.positive_float, 500.0, "new connections a second, fleet-wide"),
    s.Setting(
        "duration",
        s.positive_float,
        None,
        "seconds to run once every agent is online (default: until Ctrl-C or SIGTERM)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (each also from ``EDGEPLANE_*`` environment variables)."""
    s.add_flags(parser, SETTINGS)


def run(args: argparse.Namespace) -> int:
    """Run the simulator until ``--duration`` passes or SIGINT/SIGTERM; 0 after a clean
    stop, 2 for a bad setting."""
    try:
        settings = s.resolve(SETTINGS, args)
        _check_open_files(settings["count"])
    except SettingsError as exc:
        print(f"edge-agent simulate: {exc}", file=sys.stderr)
        return 2
    if not structlog.is_configured():
        from edgeplane.shared.logs import configure_logging

        configure_logging()
    return asyncio.run(_simulate(settings))


def _check_open_files(count: int) -> None:
    limit = raise_open_files_limit()
    if count + SPARE_FILES > limit:
        raise SettingsError(
            f"--count: {count} agents need {count + SPARE_FILES} open files, but this process "
            f"may open at most {limit}; use at most {limit - SPARE_FILES}"
        )


async def _simulate(settings: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    fleet = Fleet(
        settings["broker"],
        settings["topic_root"],
        settings["count"],
        settings["heartbeat_interval"],
        settings["prefix"],
        settings["connect_rate"],
    )
    try:
        async with fleet:
            began = loop.time()
            if await _unless(stop, fleet.start()):
                print(_summary(fleet, loop.time() - began), flush=True)
                duration = settings["duration"]
                await _unless(stop, asyncio.sleep(duration) if duration else stop.wait())
            log.info("stopping every agent cleanly", online=fleet.online)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    stats = fleet.stats
    log.info(
        "simulation stopped",
        connections=stats.connections,
        failures=stats.failures,
        heartbeats=stats.heartbeats,
        events=stats.events,
    )
    return 0


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> bool:
    """Run ``work`` until it finishes (True) or ``stop`` is set first (False)."""
    async with asyncio.TaskGroup() as tasks:
        job = tasks.create_task(work, name="sim-main")
        stopper = tasks.create_task(stop.wait(), name="sim-stop-signal")
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finished = job.done()
        job.cancel()
        stopper.cancel()
    return finished


def _summary(fleet: Fleet, seconds: float) -> str:
    agents = fleet.agents
    names = f"{agents[0].env}..{agents[-1].env}" if agents else "none"
    return (
        f"{fleet.online}/{len(agents)} simulated agents online ({names}) on {fleet.broker} "
        f"under {fleet.root}, heartbeat every {fleet.interval:g}s; "
        f"connected in {seconds:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent simulate",
        description="Simulate a fleet of edge agents, one MQTT connection each.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
