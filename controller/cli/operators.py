"""``edgeplane operator add|list|remove``: the people and programs that run operator
commands, as broker identities (under ``edgeplane broker init``; admins only).

``add NAME --role admin|viewer --output FILE`` writes the new operator's settings file
(mode 0600): broker, topic root, user name, password and CA. The password comes sealed to
a key made for this one command, so it is never readable on the wire.

Exit status: 0 done; 1 refused or no answer (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import add_operator_flags, add_output_flags, env_id_arg
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.controller.sealing import EphemeralKey
    from edgeplane.shared.rpc import OperatorAdded, OperatorInfo

__all__ = ["add_parser"]

Handler = Callable[["ControllerClient", argparse.Namespace, float], Awaitable[int]]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="manage operator identities (broker init)",
        description="Add, list and remove the operators who may use this controller.",
    )
    actions = parser.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    add = _leaf(actions, "add", "add an operator and write its settings file", _add)
    add.add_argument("name", metavar="NAME", type=env_id_arg, help="its user name")
    add.add_argument("--role", required=True, choices=["admin", "viewer"])
    add_output_flags(add, "the operator's settings file")
    _leaf(actions, "list", "list the operators and their roles", _list)
    remove = _leaf(actions, "remove", "remove an operator: its password stops working", _remove)
    remove.add_argument("name", metavar="NAME", type=env_id_arg, help="its user name")


def _leaf(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    description = help_text[:1].upper() + help_text[1:] + "."
    parser = actions.add_parser(name, help=help_text, description=description)
    add_operator_flags(parser)
    parser.set_defaults(handler=lambda args: _run(handler, args))
    return parser


def _run(handler: Handler, args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.client import ControllerClient

    settings = load_operator_settings(args)

    async def session() -> int:
        async with ControllerClient(
            settings.broker, settings.topic_root, connect_timeout=settings.timeout
        ) as controller:
            return await handler(controller, args, settings.timeout)

    return asyncio.run(session())


async def _add(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.enrollment_file import check_target
    from edgeplane.controller.operator.output import print_json
    from edgeplane.controller.sealing import EphemeralKey
    from edgeplane.shared.errors import SettingsError
    from edgeplane.shared.rpc import OperatorAdd

    if args.output is None:
        raise SettingsError("operator add: --output FILE is required (its settings file)")
    check_target(args.output, force=args.force)
    key = EphemeralKey()
    request = OperatorAdd(name=args.name, role=args.role, seal_to=key.public)
    added: OperatorAdded = await controller.call(request, within=within)
    _write_settings(args, controller, added, key)
    if args.json:
        print_json({"name": added.name, "role": added.role, "output": str(args.output)})
    else:
        print(f"added operator {added.name} ({added.role}); wrote {args.output} (mode 0600)")
    return 0


def _write_settings(
    args: argparse.Namespace, controller: ControllerClient, added: OperatorAdded, key: EphemeralKey
) -> None:
    from edgeplane.controller.operator.enrollment_file import settings_toml, write_private

    credential = added.credential
    values = {
        "broker": str(controller.url),
        "topic_root": str(controller.root),
        "username": credential.username,
        "password": key.open(credential.sealed_password),
    }
    if credential.ca_pem:
        values["ca_pem"] = credential.ca_pem
    header = (
        f"Operator {added.name} (role {added.role}), written by `edgeplane operator add`.\n"
        "Use: edgeplane ... --config THIS_FILE. Mode 0600: it holds a password."
    )
    write_private(args.output, settings_toml(header, values), force=args.force)


async def _list(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import OperatorList

    operators: list[OperatorInfo] = await controller.call(OperatorList(), within=within)
    if args.json:
        print_json(operators)
        return 0
    width = max([4, *(len(info.name) for info in operators)])
    print(f"{'NAME':<{width}}  ROLE")
    for info in operators:
        print(f"{info.name:<{width}}  {info.role}")
    return 0


async def _remove(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import OperatorRemove

    removed: OperatorInfo = await controller.call(OperatorRemove(name=args.name), within=within)
    if args.json:
        print_json(removed)
    else:
        print(f"removed operator {removed.name} ({removed.role}): its password no longer works")
    return 0
