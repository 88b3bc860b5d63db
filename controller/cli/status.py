"""``edgeplane status``: the judged status of every environment, from the retained views.

When the controller is not online (its retained status says offline, or there is none) the
views are stale: a line on stderr says since when, every row is marked (``--json``:
``"stale": true``), a row whose agent's own status contradicts its view shows the agent's,
and the exit status is 3 (:data:`board.STALE_EXIT`), so scripts notice.

Exit status: 0; 1 the broker cannot be reached; 2 usage errors; 3 the views are stale.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    from edgeplane.controller.operator.board import (
        STALE_EXIT,
        collect_board,
        render_json,
        render_table,
        stale_note,
    )

    settings = load_view_settings(args)
    board = asyncio.run(
        collect_board(settings.broker, settings.topic_root, wait_at_most=settings.timeout)
    )
    rows = board.rows()
    note = stale_note(board)
    if note is not None:  # on top, in a terminal; stdout stays the table or the JSON
        print(f"edgeplane: {note}", file=sys.stderr, flush=True)
    print(render_json(rows) if args.json else render_table(rows))
    return STALE_EXIT if board.stale else 0
