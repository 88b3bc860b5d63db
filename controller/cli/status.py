"""``edgeplane status``: the judged status of every environment, from the retained views."""

from __future__ import annotations

import argparse
import asyncio

from edgeplane.shared import settings as common
from edgeplane.shared.broker_url import DEFAULT_BROKER
from edgeplane.shared.settings import Setting
from edgeplane.shared.topics import DEFAULT_ROOT, TopicRoot

__all__ = ["VIEWER_SETTINGS", "add_parser", "add_viewer_flags"]

VIEWER_SETTINGS = (
    Setting("broker", common.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"),
    Setting("topic_root", common.topic_root, TopicRoot(DEFAULT_ROOT), "topic root"),
    Setting("timeout", common.positive_float, 15.0, "most seconds to wait for the views"),
)


def add_viewer_flags(parser: argparse.ArgumentParser) -> None:
    common.add_flags(parser, VIEWER_SETTINGS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show who is online",
        description="Show each environment's judged status (the controller's retained views).",
    )
    add_viewer_flags(parser)
    parser.set_defaults(handler=show_status)


def show_status(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import collect_board, render_json, render_table

    values = common.resolve(VIEWER_SETTINGS, args)
    board = asyncio.run(
        collect_board(values["broker"], values["topic_root"], wait_at_most=values["timeout"])
    )
    rows = board.rows()
    print(render_json(rows) if args.json else render_table(rows))
    return 0
