"""``edgeplane controller run``: the controller daemon, in the foreground until SIGTERM,
SIGINT or SIGHUP (see :mod:`edgeplane.shared.signals`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from edgeplane.controller.cli import command_key
from edgeplane.controller.daemon.settings import CONTROLLER_SETTINGS, load_settings
from edgeplane.controller.errors import AnotherController
from edgeplane.shared import settings as common
from edgeplane.shared.errors import EdgeplaneError
from edgeplane.shared.signals import stop_signals

if TYPE_CHECKING:
    from edgeplane.controller.daemon.service import PresenceService

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("controller", help="the controller daemon")
    commands = parser.add_subparsers(dest="controller_command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="judge who is online and publish the views",
        description="Run the controller: judge presence, publish R/view/{env} and alerts.",
    )
    metavars = {"notify_url": "URL", "retention": "DURATION", "retention_per_env": "COUNT"}
    common.add_flags(run, CONTROLLER_SETTINGS, metavars=metavars)
    run.add_argument(
        "--config", metavar="FILE", default=None, help="TOML file of settings; env EDGEPLANE_CONFIG"
    )
    run.set_defaults(handler=run_controller)
    command_key.add_parser(commands)


def run_controller(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from edgeplane.controller.daemon.service import (
        PresenceService,  # the daemon's imports, only when run
    )
    from edgeplane.shared.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        _run(PresenceService(settings))
    except AnotherController as exc:
        from edgeplane.controller.operator.output import visible

        print(f"edgeplane: {visible(str(exc))}", file=sys.stderr)  # it quotes the wire
        return AnotherController.EXIT_STATUS
    return 0


def _run(service: PresenceService) -> None:
    try:
        asyncio.run(_serve(service))
    except BaseExceptionGroup as group:
        # A failure inside the task groups (the database, say): show it as the one-line
        # error it is, not as a group.
        matched = group.subgroup(lambda exc: isinstance(exc, EdgeplaneError))
        if matched is None:
            raise
        raise _first(matched) from group


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner = group.exceptions[0]
    return _first(inner) if isinstance(inner, BaseExceptionGroup) else inner


async def _serve(service: PresenceService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signums = stop_signals()
    for signum in signums:
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.run(stop)
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)
