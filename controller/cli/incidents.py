"""``edgeplane incidents [--env ID] [--since DURATION] [--open] [--kind K]``,
``incidents show ID``, ``incidents ack ID --note TEXT`` and ``incidents resolve ID --note
TEXT``: the operations log's incidents, one per episode of a problem of one environment
(went offline unexpectedly, flapping, identity conflict, heartbeats missed, a failed
preflight or deployment, a rollback, an aborted rollout, a refused command, a credential
problem), newest first; one with its timeline; acknowledging and resolving one.

``incidents`` alone lists. ``--since`` takes a duration: ``90s``, ``15m``, ``2h``, ``7d``
or seconds.

Exit status: 0 shown (acknowledged, resolved); 1 not found (an incident id, or an
``--env`` the controller does not know), refused (resolved already), or no answer; 2 usage
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import TYPE_CHECKING, Any, Final

from edgeplane.controller.operator.args import (
    StoreOnce,
    add_operator_flags,
    env_id_arg,
    short_text_arg,
)
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:
    from edgeplane.shared.rpc import IncidentInfo, Request

__all__ = ["add_parser", "duration_arg", "incident_details", "incident_table"]

DEFAULT_LIMIT: Final = 100
_DURATION: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd]?)$")
_UNIT: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_arg(value: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d`` or plain seconds, as seconds (above 0)."""
    match = _DURATION.match(value.strip())
    seconds = float(match[1]) * _UNIT[match[2]] if match else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {value!r}: a number with s, m, h or d (e.g. 15m, 2h, 7d)"
        )
    return seconds


def _kind_arg(value: str) -> str:
    from typing import get_args

    from edgeplane.controller.core.incidents import SEVERITY
    from edgeplane.shared.messages import AlertKind

    known = sorted({*SEVERITY, *get_args(AlertKind)})
    if value not in known:
        raise argparse.ArgumentTypeError(f"unknown kind {value!r}: one of {', '.join(known)}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "incidents",
        help="list the operations log's incidents, show, acknowledge or resolve one",
        description="List incidents, newest first (one per episode of a problem of one "
        "environment); show one with its timeline (incidents show ID); acknowledge or "
        "resolve one (incidents ack|resolve ID --note TEXT).",
    )
    parser.add_argument(
        "--env", type=env_id_arg, action=StoreOnce, metavar="ID", help="only this environment's"
    )
    parser.add_argument(
        "--since",
        type=duration_arg,
        action=StoreOnce,
        metavar="DURATION",
        help="only those changed in the last DURATION (15m, 2h, 7d)",
    )
    parser.add_argument("--open", action="store_true", help="only those not resolved")
    parser.add_argument(
        "--kind", type=_kind_arg, action=StoreOnce, metavar="K", help="only of this kind"
    )
    add_operator_flags(parser)
    parser.set_defaults(handler=list_incidents, parser=parser)
    actions = parser.add_subparsers(dest="incidents_command", metavar="[show | ack | resolve]")
    show = actions.add_parser(
        "show", help="show one incident with its timeline", description="Show one incident."
    )
    show.add_argument("id", nargs="?", metavar="ID", help="the incident id (required)")
    add_operator_flags(show, inherited=True)
    show.set_defaults(handler=show_incident, parser=show)
    for name, text in (
        ("ack", "acknowledge an incident (it still resolves when its condition ends)"),
        ("resolve", "resolve an incident at the operator's word"),
    ):
        action = actions.add_parser(name, help=text, description=text[:1].upper() + text[1:])
        action.add_argument("id", nargs="?", metavar="ID", help="the incident id (required)")
        action.add_argument(
            "--note", type=short_text_arg, required=True, metavar="TEXT", help="why (required)"
        )
        add_operator_flags(action, inherited=True)
        action.set_defaults(handler=act_on_incident, parser=action)


def list_incidents(args: argparse.Namespace) -> int:
    from edgeplane.shared.rpc import IncidentList

    since = None if args.since is None else time.time() - args.since
    request = IncidentList(
        env=args.env or "",
        since=since,
        open_only=args.open,
        kind=args.kind or "",
        limit=DEFAULT_LIMIT,
    )
    infos: list[IncidentInfo] = _ask(args, request)
    if args.json:
        from edgeplane.controller.operator.output import print_json

        print_json(infos)
    else:
        print(incident_table(infos))
    return 0


def show_incident(args: argparse.Namespace) -> int:
    from edgeplane.shared.rpc import IncidentShow

    _check_one(args, "show")
    return _print_one(args, _ask(args, IncidentShow(id=args.id)))


def act_on_incident(args: argparse.Namespace) -> int:
    from edgeplane.shared.rpc import IncidentAck, IncidentResolve

    _check_one(args, args.incidents_command)
    kind = IncidentAck if args.incidents_command == "ack" else IncidentResolve
    return _print_one(args, _ask(args, kind(id=args.id, note=args.note)))


def _check_one(args: argparse.Namespace, action: str) -> None:
    if args.id is None:
        args.parser.error(f"expected '{action} ID': the id of the incident")
    if args.env is not None or args.since is not None or args.open or args.kind is not None:
        args.parser.error("--env, --since, --open and --kind are for listing incidents")


def _print_one(args: argparse.Namespace, info: IncidentInfo) -> int:
    if args.json:
        from edgeplane.controller.operator.output import print_json

        print_json(info)
    else:
        print(incident_details(info))
    return 0


def _ask(args: argparse.Namespace, request: Request) -> Any:
    from edgeplane.controller.operator.client import ask

    settings = load_operator_settings(args)
    return asyncio.run(ask(settings.broker, settings.topic_root, request, settings.timeout))


def incident_table(infos: list[IncidentInfo]) -> str:
    from edgeplane.controller.operator.output import ago, render_table, visible

    if not infos:
        return "no incidents"
    now = time.time()
    header = ("ID", "ENV", "KIND", "SEVERITY", "STATE", "OPENED", "UPDATED", "COUNT", "DETAIL")
    rows = [
        (
            info.id,
            info.env,
            info.kind,
            info.severity,
            info.state,
            ago(now - info.opened),
            ago(now - info.updated),
            str(info.count),
            visible(info.detail)[:80],
        )
        for info in infos
    ]
    return render_table(header, rows)


def incident_details(info: IncidentInfo) -> str:
    from edgeplane.controller.operator.output import visible, when

    fields = [
        ("id", info.id),
        ("env", info.env),
        ("kind", info.kind),
        ("severity", info.severity),
        ("state", info.state),
        ("opened", when(info.opened)),
        ("updated", when(info.updated)),
        ("count", str(info.count)),
        ("detail", info.detail),
    ]
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{name + ':':<{width}} {visible(value)}" for name, value in fields]
    lines.append("timeline:")
    for step in info.timeline:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(step.at))
        note = f"  {visible(step.note)}" if step.note else ""
        lines.append(f"  {stamp}  {step.state:<12} by {visible(step.by)}{note}")
    return "\n".join(lines)
