"""``edgeplane watch``: the status table, redrawn live in the terminal until Ctrl-C.

The first frame comes once the broker has sent the retained state (what ``status`` would
show), then one every second. Stale views are marked as ``status`` marks them, with the
line on top of the frame. A broker lost meanwhile is connected to again (a line on stderr
says so), and the table built anew from the retained state.

Exit status: 0 on Ctrl-C; 1 the broker cannot be reached at the start; 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import add_operator_flags
from edgeplane.controller.operator.settings import WATCH_SETTINGS, load_watch_settings

if TYPE_CHECKING:
    from edgeplane.controller.operator.board import Board
    from edgeplane.controller.reconnect import Retry

__all__ = ["add_parser", "frame"]

_CLEAR = "\x1b[H\x1b[2J"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="show who is online, live",
        description="The status table, updated as the views change, until Ctrl-C.",
    )
    add_operator_flags(parser, WATCH_SETTINGS)
    parser.set_defaults(handler=watch)


def frame(board: Board, as_json: bool) -> str:
    """One frame: the table (or JSON) of ``board``, stale views' note on top."""
    from edgeplane.controller.operator.board import render_json, render_table, stale_note

    rows = board.rows()
    if as_json:
        return render_json(rows)
    note = stale_note(board)
    return render_table(rows) if note is None else f"{note}\n{render_table(rows)}"


def watch(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import follow_board

    settings = load_watch_settings(args)
    live = sys.stdout.isatty()

    drawn_at: list[float] = []  # when the last frame was drawn

    def draw(board: Board) -> None:
        sys.stdout.write((_CLEAR if live else "\n") + frame(board, args.json) + "\n")
        sys.stdout.flush()
        drawn_at[:] = [time.time()]

    def lost(retry: Retry) -> None:
        what = "broker lost" if retry.lost else "broker still unreachable"
        as_of = ""
        if drawn_at:
            as_of = f"; the table is as of {time.strftime('%H:%M:%S', time.localtime(drawn_at[0]))}"
        print(
            f"edgeplane: {what} ({retry.error}), reconnecting in {retry.delay:.1f} s{as_of}",
            file=sys.stderr,
            flush=True,
        )

    try:
        asyncio.run(follow_board(settings.broker, settings.topic_root, draw, on_retry=lost))
    except KeyboardInterrupt:
        return 0
    return 0
