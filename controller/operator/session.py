"""One operator command's session with the controller: its settings resolved, one
connection, the command's work on it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import add_operator_flags
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:  # aiomqtt: only once a command runs
    from edgeplane.controller.operator.client import ControllerClient

__all__ = ["Handler", "add_leaf", "run_handler"]

# The work of one command: the client, its arguments, the seconds to wait for answers.
Handler = Callable[["ControllerClient", argparse.Namespace, float], Awaitable[int]]


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler`` on a connection to the controller; its exit status."""
    from edgeplane.controller.operator.client import ControllerClient

    settings = load_operator_settings(args)

    async def session() -> int:
        async with ControllerClient(
            settings.broker, settings.topic_root, connect_timeout=settings.timeout
        ) as controller:
            return await handler(controller, args, settings.timeout)

    return asyncio.run(session())


def add_leaf(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    """An action of a command (``env list``, ``operator add``): its parser, with the operator
    flags, running ``handler`` on a connection to the controller."""
    description = help_text[:1].upper() + help_text[1:] + "."
    parser = actions.add_parser(name, help=help_text, description=description)
    add_operator_flags(parser)
    parser.set_defaults(handler=lambda args: run_handler(handler, args))
    return parser
