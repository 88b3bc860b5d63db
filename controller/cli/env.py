"""``edgeplane env create|list|show|update|restart|retire|forget|rotate-credentials``
(and ``diagnose``, in :mod:`.diagnose`):
environment records, through the controller (MQTT request/response; never its database).

``update`` (with a heartbeat interval or config), ``restart`` and ``retire`` of an online
environment send the agent a command; the command then waits for the agent's ``ack`` event
and prints it (``--no-wait``: only send). ``retire`` asks for confirmation only when stdin
is a terminal and ``--yes`` is not given; scripts and CI are never prompted. ``forget``
removes an id without a record (an agent started with a mistyped id) once its agent is
stopped, or what a retired one left on the broker.

``show`` with the controller not online (its retained status says offline, or there is
none) prints what the broker retains of the environment instead, when it holds its view:
the stale view, or the agent's own status where it contradicts the view, marked stale (see
``edgeplane status``), and exits 3. Without a view it asks the controller all the same.

Exit status: 0 done; 1 refused, failed, or no answer (one line on stderr); 2 usage errors;
3 ``show``: the controller is not online, the view shown is stale.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edgeplane.controller.cli.diagnose import add_diagnose
from edgeplane.controller.errors import ControllerError
from edgeplane.controller.operator.args import (
    add_output_flags,
    broker_url_arg,
    env_id_arg,
    key_value_arg,
    label_arg,
    label_key_arg,
    project_arg,
    seconds_arg,
    short_text_arg,
)
from edgeplane.controller.operator.session import add_leaf

if TYPE_CHECKING:
    from edgeplane.controller.operator.board import Board
    from edgeplane.controller.operator.client import ControllerClient, EventFeed
    from edgeplane.controller.sealing import EphemeralKey
    from edgeplane.shared.messages import Event
    from edgeplane.shared.rpc import EnvCreated, EnvInfo

__all__ = ["add_parser"]

ACK_WAIT: Final = 15.0  # default seconds to wait for the agent's ack
ROTATION_WAIT: Final = 300.0  # default seconds rotate-credentials --wait follows
ROTATION_POLL: Final = 1.0  # seconds between looks at the rotation's state

# (the controller, the flags, the most seconds to wait for each of its answers) -> exit status


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "env",
        help="manage environment records",
        description="Create, list, show, update, restart, retire, forget and diagnose "
        "environments.",
    )
    actions = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    _add_create(actions)
    _add_list(actions)
    _add_show(actions)
    _add_update(actions)
    _add_restart(actions)
    _add_retire(actions)
    _add_forget(actions)
    _add_rotate(actions)
    add_diagnose(actions)


def _add_ack_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait", action="store_true", help="send, do not wait for the agent's ack"
    )
    parser.add_argument(
        "--wait-timeout",
        type=seconds_arg(3600),
        default=ACK_WAIT,
        metavar="SECONDS",
        help=f"most seconds to wait for the agent's ack (default {ACK_WAIT:g})",
    )


# --- create -------------------------------------------------------------------------------
def _add_create(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "create", "create an environment record and print its id", _create)
    parser.add_argument(
        "id",
        nargs="?",
        metavar="ID",
        type=env_id_arg,
        help="the environment id (default: STAGE-LOCATION-PURPOSE)",
    )
    parser.add_argument("--stage", required=True, choices=["dev", "staging", "prod"])
    parser.add_argument(
        "--location", required=True, type=short_text_arg, help="where it runs, e.g. berlin"
    )
    parser.add_argument(
        "--purpose", required=True, type=short_text_arg, help="what it is for, e.g. vision"
    )
    parser.add_argument(
        "--project", default="default", type=project_arg, help="the project (default: default)"
    )
    parser.add_argument(
        "--label",
        action="append",
        type=label_arg,
        default=[],
        metavar="KEY=VALUE",
        help="set a label (repeatable)",
    )
    add_output_flags(parser, "the agent's bootstrap file (under broker init): its identity")
    parser.add_argument(
        "--agent-broker",
        type=broker_url_arg,
        metavar="URL",
        help="the broker URL the agent uses, in the bootstrap file (default: this command's)",
    )


async def _create(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvCreate

    key = _prepare_output(args)
    request = EnvCreate(
        id=args.id or "",
        stage=args.stage,
        location=args.location,
        purpose=args.purpose,
        project=args.project,
        labels=dict(args.label),
        seal_to="" if key is None else key.public,
    )
    info: EnvCreated = await controller.call(request, within=within)
    if key is not None:
        _write_bootstrap(args, controller, info, key)
    if args.json:
        print_json(info if info.credential is None else _without_credential(info))
    else:
        print(info.id)
    if key is not None:
        name = Path(args.output).name
        print(f"wrote {args.output} (mode 0600); on the gateway: edge-agent run --config {name}")
    elif controller.url.identity is not None and controller.url.identity.username:
        print(
            f"edgeplane: note: {info.id} has no broker identity: its agent cannot connect to "
            "this broker (create environments with --output FILE to enroll them)",
            file=sys.stderr,
        )
    return 0


def _prepare_output(args: argparse.Namespace) -> EphemeralKey | None:
    from edgeplane.controller.operator.enrollment_file import check_target
    from edgeplane.controller.sealing import EphemeralKey

    if args.output is None:
        return None
    check_target(args.output, force=args.force)
    return EphemeralKey()


def _write_bootstrap(
    args: argparse.Namespace, controller: ControllerClient, info: EnvCreated, key: EphemeralKey
) -> None:
    from edgeplane.controller.operator.enrollment_file import settings_toml, write_private

    credential = info.credential
    if credential is None:
        raise ControllerError(f"the controller created {info.id} but sent no credential for it")
    values = {
        "env_id": info.id,
        "broker": str(args.agent_broker or controller.url),
        "topic_root": str(controller.root),
        "username": credential.username,
        "password": key.open(credential.sealed_password),
    }
    if credential.ca_pem:
        values["ca_pem"] = credential.ca_pem
    if credential.command_key:
        values["command_key"] = credential.command_key
    header = (
        f"The bootstrap file of environment {info.id}, written by `edgeplane env create`.\n"
        "All a gateway needs: edge-agent run --config THIS_FILE. Mode 0600: it holds a password."
    )
    write_private(args.output, settings_toml(header, values), force=args.force)


def _without_credential(info: EnvCreated) -> EnvCreated:
    import msgspec

    return msgspec.structs.replace(info, credential=None)


# --- list ---------------------------------------------------------------------------------
def _add_list(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "list", "list environments", _list)
    parser.add_argument("--project", type=project_arg, help="only this project's environments")
    parser.add_argument("--all", action="store_true", help="retired environments too")


async def _list(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.env_text import env_table
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvList

    infos: list[EnvInfo] = []
    while True:  # page by id: a large fleet does not fit in one reply
        after = infos[-1].id if infos else ""
        request = EnvList(project=args.project or "", include_retired=args.all, after=after)
        page: list[EnvInfo] = await controller.call(request, within=within)
        infos.extend(page)
        if len(page) < request.limit:
            break
    if args.json:
        print_json(infos)
    elif not infos:
        print("no environments" + (f" in project {args.project}" if args.project else ""))
    else:
        print(env_table(infos))
    return 0


# --- show ---------------------------------------------------------------------------------
def _add_show(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "show", "show one environment: record, status, inventory", _show)
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")


async def _show(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    """The controller's record; with the controller not online, what the broker retains
    (the stale view, the agent's own status), marked stale, exit status 3."""
    from edgeplane.controller.operator.board import collect_board
    from edgeplane.controller.operator.env_text import env_details
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvShow

    board = await collect_board(
        controller.url,
        controller.root,
        env=args.id,
        wait_at_most=within,
        enough=lambda board: board.controller_online,
    )
    if board.stale and len(board):  # else ask anyway: a controller may still answer
        return _show_stale(board, args)
    info: EnvInfo = await controller.call(EnvShow(id=args.id), within=within)
    if args.json:
        print_json(info)
    else:
        print(env_details(info))
    return 0


def _show_stale(board: Board, args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.board import STALE_EXIT, render_row, stale_note
    from edgeplane.controller.operator.env_text import stale_env_details
    from edgeplane.controller.operator.output import print_json

    print(f"edgeplane: {stale_note(board)}", file=sys.stderr, flush=True)
    (row,) = board.rows()
    if args.json:
        print_json(render_row(row))
    else:
        print(stale_env_details(row))
    return STALE_EXIT


# --- update -------------------------------------------------------------------------------
def _add_update(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "update", "change labels, or settings the agent applies", _update)
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")
    parser.add_argument(
        "--label",
        action="append",
        type=label_arg,
        default=[],
        metavar="KEY=VALUE",
        help="set a label (repeatable)",
    )
    parser.add_argument(
        "--remove-label",
        action="append",
        type=label_key_arg,
        default=[],
        metavar="KEY",
        help="remove a label (repeatable)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=seconds_arg(86_400),
        metavar="SECONDS",
        help="sent to the agent",
    )
    parser.add_argument(
        "--set",
        action="append",
        type=key_value_arg,
        default=[],
        metavar="KEY=VALUE",
        help="agent config: heartbeat_interval, log_level, endpoints.NAME (empty removes)",
    )
    _add_ack_flags(parser)


async def _update(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.env_text import labels_text
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.errors import SettingsError
    from edgeplane.shared.rpc import EnvUpdate

    if not (args.label or args.remove_label or args.set or args.heartbeat_interval):
        flags = "--label, --remove-label, --heartbeat-interval or --set"
        raise SettingsError(f"env update: nothing to change (give {flags})")
    request = EnvUpdate(
        id=args.id,
        labels=dict(args.label),
        remove_labels=list(args.remove_label),
        interval=args.heartbeat_interval,
        config=dict(args.set),
    )
    to_agent = request.interval is not None or bool(request.config)
    feed = await controller.follow_events(args.id) if to_agent and not args.no_wait else None
    info: EnvInfo = await controller.call(request, within=within)
    if args.json and feed is None:
        print_json(info)
        return 0
    if not args.json:
        print(
            f"updated {info.id}" + (f": labels {labels_text(info.labels)}" if info.labels else "")
        )
        if to_agent and feed is None:
            print(f"{info.id}: settings sent to the agent")
    if feed is None:
        return 0
    return await _await_ack(feed, args, op="update", cmd="", result={"env": info})


# --- restart ------------------------------------------------------------------------------
def _add_restart(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "restart", "restart the running workflows (or one)", _restart)
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")
    parser.add_argument("--workflow", default="", metavar="NAME", help="only this workflow")
    _add_ack_flags(parser)


async def _restart(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvRestart

    feed = None if args.no_wait else await controller.follow_events(args.id)
    request = EnvRestart(id=args.id, workflow=args.workflow)
    result: dict[str, str] = await controller.call(request, within=within)
    cmd = result.get("cmd", "")
    if feed is None:
        if args.json:
            print_json(result)
        else:
            print(f"restart {cmd} sent to {args.id}")
        return 0
    if not args.json:
        print(f"restart {cmd} sent to {args.id}; waiting for its ack", flush=True)
    return await _await_ack(feed, args, op="restart", cmd=cmd, result=result)


# --- retire -------------------------------------------------------------------------------
def _add_retire(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "retire", "retire an environment: its agent stops for good", _retire)
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")
    parser.add_argument("--yes", action="store_true", help="do not ask (stdin a terminal)")
    _add_ack_flags(parser)


async def _retire(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvRetire, EnvShow

    before: EnvInfo = await controller.call(EnvShow(id=args.id), within=within)
    if not before.registered:
        raise ControllerError(
            f"{args.id} has no record, so nothing to retire (an agent connected with this "
            f"id, unregistered); to remove it: edgeplane env forget {args.id}"
        )
    if not args.yes and sys.stdin.isatty() and not _confirm(args.id):
        print("edgeplane: not retired", file=sys.stderr)
        return 1
    online = before.status == "online"
    feed = await controller.follow_events(args.id) if online and not args.no_wait else None
    info: EnvInfo = await controller.call(EnvRetire(id=args.id), within=within)
    if args.json and feed is None:
        print_json(info)
        return 0
    if not args.json:
        print(f"retired {info.id}: deployments to it are refused from now on")
        if online:
            print(f"{info.id}: the agent was told to stop its workflows and exit")
        else:
            print(f"{info.id}: its agent is {before.status}; it is told to retire when it connects")
    if feed is None:
        return 0
    return await _await_ack(feed, args, op="retire", cmd="", result={"env": info})


def _confirm(env: str) -> bool:
    answer = input(f"retire {env}? its agent stops its workflows and will not start again [y/N] ")
    return answer.strip().lower() in ("y", "yes")


# --- forget -------------------------------------------------------------------------------
def _add_forget(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(
        actions,
        "forget",
        "remove an id without a record (a mistyped agent id), or what a retired one left",
        _forget,
    )
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")


async def _forget(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvForget

    info: EnvInfo = await controller.call(EnvForget(id=args.id), within=within)
    if args.json:
        print_json(info)
    elif info.registered:
        print(f"forgot what retired {info.id} left: its retained status is cleared "
              "(its record and history stay)")  # fmt: skip
    else:
        print(f"forgot {info.id}: its view and retained status are cleared, and the "
              "controller keeps nothing of it")  # fmt: skip
    return 0


# --- rotate-credentials -------------------------------------------------------------------
def _add_rotate(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(
        actions,
        "rotate-credentials",
        "give an environment's agent a new broker credential and remove the old one",
        _rotate,
    )
    parser.add_argument("id", metavar="ID", type=env_id_arg, help="the environment id")
    parser.add_argument(
        "--wait", action="store_true", help="follow until the old credential is removed"
    )
    parser.add_argument(
        "--repin",
        action="store_true",
        help="the agent was reinstalled: pin the box key of its current connection first",
    )
    parser.add_argument(
        "--wait-timeout",
        type=seconds_arg(86_400),
        default=ROTATION_WAIT,
        metavar="SECONDS",
        help=f"most seconds --wait follows (default {ROTATION_WAIT:g})",
    )


async def _rotate(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import EnvRotateCredentials

    request = EnvRotateCredentials(id=args.id, repin=args.repin)
    info: EnvInfo = await controller.call(request, within=within)
    target = info.rotation_target
    if not args.json:
        print(f"{info.id}: new credential generation {target} ({info.rotation_state})", flush=True)
    if not args.wait:
        if args.json:
            print_json(info)
        return 0
    done = await _rotated(controller, args, target, within)
    if done is None:
        print(
            f"edgeplane: {args.id}: generation {target} is not in use after "
            f"{args.wait_timeout:g} s (the old credential stays until the agent is online "
            f"with the new one; see: edgeplane env show {args.id})",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print_json(done)
    else:
        print(f"{done.id}: on credential generation {target}; the old credential is removed")
    return 0


async def _rotated(
    controller: ControllerClient, args: argparse.Namespace, target: int, within: float
) -> EnvInfo | None:
    """The environment once it is on generation ``target`` with no rotation under way;
    None when that did not happen within ``--wait-timeout``."""
    from edgeplane.shared.rpc import EnvShow

    loop = asyncio.get_running_loop()
    give_up = loop.time() + args.wait_timeout
    while True:
        info: EnvInfo = await controller.call(EnvShow(id=args.id), within=within)
        if info.credential_generation == target and not info.rotation_state:
            return info
        if info.credential_generation is not None and info.credential_generation > target:
            return info  # rotated again meanwhile: ours is over too
        if loop.time() >= give_up:
            return None
        await asyncio.sleep(ROTATION_POLL)


# --- the agent's ack ----------------------------------------------------------------------
async def _await_ack(
    feed: EventFeed, args: argparse.Namespace, *, op: str, cmd: str, result: dict[str, Any]
) -> int:
    """Print the agent's answer to the command: ``ack`` (ok or not), ``rejected`` or
    ``expired``. ``cmd`` empty: the first answer to an ``op`` command after sending. With
    ``--json``: ``result`` and ``"ack"``, the answer (null when none came)."""
    from edgeplane.controller.operator.event_text import describe
    from edgeplane.controller.operator.output import print_json

    try:
        event = await _answer(feed, op, cmd, args.wait_timeout)
    except TimeoutError:
        if args.json:
            print_json({**result, "ack": None})
        waited = f"within {args.wait_timeout:g} s (see: edgeplane events --env {args.id})"
        print(
            f"edgeplane: {args.id}: no answer from the agent to the {op} {waited}", file=sys.stderr
        )
        return 1
    ok = bool(getattr(event, "ok", False))
    if args.json:
        print_json({**result, "ack": event})
    elif ok:
        print(f"{event.env}: {describe(event)}")
    if not ok:
        print(f"edgeplane: {event.env}: {describe(event)}", file=sys.stderr)
    return 0 if ok else 1


async def _answer(feed: EventFeed, op: str, cmd: str, within: float) -> Event:
    from edgeplane.shared.messages import Ack, CommandRejected, Expired

    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        event = await feed.next(within=max(0.0, give_up - loop.time()))
        if cmd and event.cmd != cmd:
            continue
        if isinstance(event, Ack) and event.op == op:
            return event
        if cmd and isinstance(event, CommandRejected | Expired):
            return event
