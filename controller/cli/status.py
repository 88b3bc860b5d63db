"""``edgeplane status``: the judged status of every environment, from the retained views."""

from __future__ import annotations

import argparse
import asyncio

from edgeplane.controller.operator.args import add_operator_flags
from edgeplane.controller.operator.settings import VIEW_SETTINGS, load_view_settings

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show who is online",
        description="Show each environment's judged status (the controller's retained views).",
    )
    add_operator_flags(parser, VIEW_SETTINGS)
    parser.set_defaults(handler=show_status)


def show_status(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import collect_board, render_json, render_table

    settings = load_view_settings(args)
    board = asyncio.run(
        collect_board(settings.broker, settings.topic_root, wait_at_most=settings.timeout)
    )
    rows = board.rows()
    print(render_json(rows) if args.json else render_table(rows))
    return 0
