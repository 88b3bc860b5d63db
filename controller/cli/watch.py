"""``edgeplane watch``: the status table, redrawn live in the terminal until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgeplane.controller.operator.args import add_operator_flags
from edgeplane.controller.operator.settings import WATCH_SETTINGS, load_watch_settings

__all__ = ["add_parser"]

_CLEAR = "\x1b[H\x1b[2J"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="show who is online, live",
        description="The status table, updated as the views change, until Ctrl-C.",
    )
    add_operator_flags(parser, WATCH_SETTINGS)
    parser.set_defaults(handler=watch)


def watch(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import Board, follow_board, render_json, render_table

    settings = load_watch_settings(args)
    live = sys.stdout.isatty()

    def draw(board: Board) -> None:
        rows = board.rows()
        text = render_json(rows) if args.json else render_table(rows)
        sys.stdout.write((_CLEAR if live else "\n") + text + "\n")
        sys.stdout.flush()

    try:
        asyncio.run(follow_board(settings.broker, settings.topic_root, draw))
    except KeyboardInterrupt:
        return 0
    return 0
