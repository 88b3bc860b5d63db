"""``edgeplane deployments [list] [--env ID] [--limit N]`` and ``deployments show ID``: the
deployments the controller knows, newest first, and one with its events.

Exit status: 0 shown; 1 not found, or no answer; 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

from edgeplane.controller.operator.output import OPERATOR_SETTINGS, add_operator_flags, env_id_arg
from edgeplane.shared import settings as common

if TYPE_CHECKING:
    from edgeplane.shared.rpc import DeploymentInfo

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deployments",
        help="list deployments, or show one with its events",
        description="deployments [list] [--env ID] [--limit N] | deployments show ID",
    )
    # Plain words rather than nested subparsers: "deployments" alone lists, and every flag
    # works in any position.
    parser.add_argument("words", nargs="*", metavar="list | show ID")
    parser.add_argument("--env", type=env_id_arg, help="only this environment's")
    parser.add_argument("--limit", type=_limit, default=50, help="at most N (default 50)")
    add_operator_flags(parser)
    parser.set_defaults(handler=deployments, parser=parser)


def _limit(value: str) -> int:
    try:
        number = common.positive_int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if number > 10_000:
        raise argparse.ArgumentTypeError(f"at most 10000, got {number}")
    return number


def deployments(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.client import ask
    from edgeplane.shared.rpc import DeploymentList, DeploymentShow

    match args.words:
        case [] | ["list"]:
            request: DeploymentList | DeploymentShow = DeploymentList(
                env=args.env or "", limit=args.limit
            )
        case ["show", dep]:
            request = DeploymentShow(id=dep)
        case _:
            args.parser.error(f"expected 'list' or 'show ID', got {' '.join(args.words)!r}")
    values = common.resolve(OPERATOR_SETTINGS, args)
    result = asyncio.run(ask(values["broker"], values["topic_root"], request, values["timeout"]))
    if args.json:
        from edgeplane.controller.operator.output import print_json

        print_json(result)
    elif isinstance(request, DeploymentShow):
        print(details(result))
    else:
        print(table(result))
    return 0


def table(infos: list[DeploymentInfo]) -> str:
    from edgeplane.controller.operator.output import ago, render_table

    if not infos:
        return "no deployments"
    now = time.time()
    header = ("ID", "ENV", "WORKFLOW", "VERSION", "KIND", "STATE", "UPDATED", "REASON")
    rows = [
        (
            info.id,
            info.env,
            info.workflow,
            info.version,
            info.kind,
            info.state + (" (dry run)" if info.dry_run else ""),
            ago(now - info.updated),
            info.reason,
        )
        for info in infos
    ]
    return render_table(header, rows)


def details(info: DeploymentInfo) -> str:
    from edgeplane.controller.operator.event_text import check_line, describe
    from edgeplane.controller.operator.output import when
    from edgeplane.shared.messages import Preflight

    fields = [
        ("id", info.id),
        ("env", info.env),
        ("workflow", f"{info.workflow} {info.version} ({info.kind})"),
        ("state", info.state + (f": {info.reason}" if info.reason else "")),
        ("dry run", "yes" if info.dry_run else "no"),
        ("created", when(info.created)),
        ("updated", when(info.updated)),
    ]
    if info.expires is not None and info.state == "queued":
        fields.append(("expires", when(info.expires)))
    if info.cmd:
        fields.append(("command", info.cmd))
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{name + ':':<{width}} {value}" for name, value in fields]
    lines.append("events:" if info.events else "events:  none yet")
    for logged in info.events:
        stamp = time.strftime("%H:%M:%S", time.localtime(logged.at))
        lines.append(f"  {stamp}  {describe(logged.event)}")
        if isinstance(logged.event, Preflight):
            lines.extend(f"            {check_line(check)}" for check in logged.event.checks)
    return "\n".join(lines)
