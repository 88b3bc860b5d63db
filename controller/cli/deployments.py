"""``edgeplane deployments [list] [--env ID] [--limit N]``, ``deployments show ID`` and
``deployments cancel ID``: the deployments the controller knows, newest first, one with its
events, and taking one back (:mod:`controller.operator.take_back`).

``deployments`` alone lists. The flags may come before or after ``list``/``show``.

Exit status: 0 shown (cancelled); 1 not found (a deployment, or an ``--env`` the controller
does not know), refused (a deployment that has ended already), not cancelled by the agent,
or no answer; 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

from edgeplane.controller.operator.args import (
    StoreOnce,
    add_operator_flags,
    env_id_arg,
    seconds_arg,
)
from edgeplane.controller.operator.settings import load_operator_settings
from edgeplane.shared import settings as common

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.shared.rpc import DeploymentInfo, DeploymentList, DeploymentShow

__all__ = ["add_parser"]

DEFAULT_LIMIT: Final = 50


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deployments",
        help="list deployments, or show one with its events",
        description="List deployments, newest first (also: deployments list), or show one "
        "with its events (deployments show ID).",
    )
    _add_list_flags(parser)
    add_operator_flags(parser)
    parser.set_defaults(handler=list_deployments)
    actions = parser.add_subparsers(dest="deployments_command", metavar="[list | show | cancel]")
    listing = actions.add_parser(
        "list",
        help="list deployments, newest first (the default)",
        description="List the deployments the controller knows, newest first.",
    )
    _add_list_flags(listing, inherited=True)
    add_operator_flags(listing, inherited=True)
    listing.set_defaults(handler=list_deployments)
    show = actions.add_parser(
        "show",
        help="show one deployment with its events",
        description="Show one deployment: its record and its events, oldest first.",
    )
    # Optional to argparse, so that a missing id is our one-line usage error.
    show.add_argument("id", nargs="?", metavar="ID", help="the deployment id (required)")
    add_operator_flags(show, inherited=True)
    show.set_defaults(handler=show_deployment, parser=show)
    cancel = actions.add_parser(
        "cancel",
        help="take a deployment back: drop it if queued, stop it if running",
        description="Cancel a deployment: one still queued (--when-online) is dropped; a "
        "running job or service is stopped by its agent (a service is no longer started "
        "at boot). It ends cancelled.",
    )
    cancel.add_argument("id", nargs="?", metavar="ID", help="the deployment id (required)")
    cancel.add_argument(
        "--no-wait", action="store_true", help="send, do not wait for the agent's answer"
    )
    cancel.add_argument(
        "--wait-timeout",
        type=seconds_arg(86_400),
        default=None,
        metavar="SECONDS",
        help="most seconds to wait for the agent's answer (default 15)",
    )
    add_operator_flags(cancel, inherited=True)
    cancel.set_defaults(handler=cancel_deployment, parser=cancel)


def _add_list_flags(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    absent = argparse.SUPPRESS if inherited else None
    parser.add_argument(
        "--env",
        type=env_id_arg,
        default=absent,
        action=StoreOnce,
        metavar="ID",
        help="only this environment's",
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=absent,
        metavar="N",
        help=f"at most N (default {DEFAULT_LIMIT})",
    )


def _limit(value: str) -> int:
    try:
        number = common.positive_int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if number > 10_000:
        raise argparse.ArgumentTypeError(f"at most 10000, got {number}")
    return number


def list_deployments(args: argparse.Namespace) -> int:
    from edgeplane.shared.rpc import DeploymentList

    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    infos: list[DeploymentInfo] = _ask(args, DeploymentList(env=args.env or "", limit=limit))
    if args.json:
        from edgeplane.controller.operator.output import print_json

        print_json(infos)
    else:
        print(table(infos))
    return 0


def show_deployment(args: argparse.Namespace) -> int:
    from edgeplane.shared.rpc import DeploymentShow

    if args.id is None:
        args.parser.error("expected 'show ID': the id of the deployment to show")
    if args.env is not None or args.limit is not None:
        args.parser.error("--env and --limit are for 'deployments list'")
    info: DeploymentInfo = _ask(args, DeploymentShow(id=args.id))
    if args.json:
        from edgeplane.controller.operator.output import print_json

        print_json(info)
    else:
        print(details(info))
    return 0


def cancel_deployment(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.session import run_handler

    if args.id is None:
        args.parser.error("expected 'cancel ID': the id of the deployment to cancel")
    if args.env is not None or args.limit is not None:
        args.parser.error("--env and --limit are for 'deployments list'")
    if args.no_wait and args.wait_timeout is not None:
        args.parser.error("--wait-timeout: not with --no-wait")
    return run_handler(_cancel, args)


async def _cancel(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.take_back import ANSWER_WAIT, take_back
    from edgeplane.shared.rpc import DeploymentCancel, DeploymentShow

    # its environment first: its events are followed before the cancel goes out
    info: DeploymentInfo = await controller.call(DeploymentShow(id=args.id), within=within)
    wait = None if args.no_wait else (args.wait_timeout or ANSWER_WAIT)
    request = DeploymentCancel(id=args.id)
    return await take_back(
        controller, request, info.env, wait=wait, within=within, as_json=args.json
    )


def _ask(args: argparse.Namespace, request: DeploymentList | DeploymentShow) -> Any:
    from edgeplane.controller.operator.client import ask

    settings = load_operator_settings(args)
    return asyncio.run(ask(settings.broker, settings.topic_root, request, settings.timeout))


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
    from edgeplane.controller.operator.output import visible, when
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
    if info.forced:
        fields.append(("forced", info.forced))
    if info.validation:
        verb = "waits for dry run" if info.waiting else "dry run"
        fields.append(("validation", f"{verb} {info.validation}"))
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{name + ':':<{width}} {visible(value)}" for name, value in fields]
    lines.append("events:" if info.events else "events:  none yet")
    for logged in info.events:
        stamp = time.strftime("%H:%M:%S", time.localtime(logged.at))
        lines.append(f"  {stamp}  {describe(logged.event)}")
        if isinstance(logged.event, Preflight):
            lines.extend(f"            {check_line(check)}" for check in logged.event.checks)
    return "\n".join(lines)
