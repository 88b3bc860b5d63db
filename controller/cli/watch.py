"""``edgeplane watch``: the status table, redrawn live in the terminal until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgeplane.controller.cli.status import VIEWER_SETTINGS, add_viewer_flags
from edgeplane.shared import settings as common

__all__ = ["add_parser"]

_CLEAR = "\x1b[H\x1b[2J"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="show who is online, live",
        description="The status table, updated as the views change, until Ctrl-C.",
    )
    add_viewer_flags(parser)
    parser.set_defaults(handler=watch)


def watch(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import Board, follow_board, render_json, render_table

    values = common.resolve(VIEWER_SETTINGS, args)
    live = sys.stdout.isatty()

    def draw(board: Board) -> None:
        rows = board.rows()
        text = render_json(rows) if args.json else render_table(rows)
        sys.stdout.write((_CLEAR if live else "\n") + text + "\n")
        sys.stdout.flush()

    try:
        asyncio.run(follow_board(values["broker"], values["topic_root"], draw))
    except KeyboardInterrupt:
        return 0
    return 0
