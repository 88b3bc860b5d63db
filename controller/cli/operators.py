"""``edgeplane operator add|list|remove|rotate-credentials``: the people and programs that
run operator commands, as broker identities (under ``edgeplane broker init``; admins only).

``add NAME --role admin|viewer --output FILE`` writes the new operator's settings file
(mode 0600): broker, topic root, user name, password and CA. The password comes sealed to
a key made for this one command, so it is never readable on the wire.

``rotate-credentials NAME --output FILE [--force]`` gets a new credential ``NAME.N``
beside the old one (sealed the same way), writes FILE (atomically; it may be the very file
the command was run with, with ``--force``), logs in with the new credential and confirms:
only then does the controller delete every other credential of NAME. A command that dies
before confirming leaves both working; running it again replaces the pending one.

Exit status: 0 done; 1 refused or no answer (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import add_operator_flags, add_output_flags, env_id_arg
from edgeplane.controller.operator.session import add_leaf
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.controller.operator.settings import OperatorSettings
    from edgeplane.controller.sealing import EphemeralKey
    from edgeplane.shared.broker_url import BrokerUrl
    from edgeplane.shared.rpc import OperatorAdded, OperatorInfo, OperatorRotated

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="manage operator identities (broker init)",
        description="Add, list and remove the operators who may use this controller.",
    )
    actions = parser.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    add = add_leaf(actions, "add", "add an operator and write its settings file", _add)
    add.add_argument("name", metavar="NAME", type=env_id_arg, help="its user name")
    add.add_argument("--role", required=True, choices=["admin", "viewer"])
    add_output_flags(add, "the operator's settings file")
    add_leaf(actions, "list", "list the operators, their roles and credentials' ages", _list)
    remove = add_leaf(actions, "remove", "remove an operator: its password stops working", _remove)
    remove.add_argument("name", metavar="NAME", type=env_id_arg, help="its user name")
    rotate = actions.add_parser(
        "rotate-credentials",
        help="give an operator a new password, without locking it out",
        description="Give an operator a new password and write its new settings file; "
        "the old password stops working once the new one was used.",
    )
    add_operator_flags(rotate)
    rotate.add_argument("name", metavar="NAME", type=env_id_arg, help="its name")
    add_output_flags(rotate, "the operator's new settings file")
    rotate.set_defaults(handler=_rotate)


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
    print(f"{'NAME':<{width}}  {'ROLE':<6}  {'GEN':>3}  {'AGE':>7}  STATE")
    for info in operators:
        print(f"{info.name:<{width}}  {info.role:<6}  {info.generation:>3}  "
              f"{_age(info.age):>7}  {_state(info)}")  # fmt: skip
    return 0


def _age(seconds: float | None) -> str:
    """``3d``, ``5h``, ``12m``, ``40s``; ``unknown`` for a credential made before ages
    were recorded."""
    if seconds is None:
        return "unknown"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _state(info: OperatorInfo) -> str:
    """``ok``, ``due`` (older than the controller's rotate_after) and/or a pending rotation."""
    words = ["due"] if info.due else []
    if info.pending:
        words.append(f"pending {info.name}.{info.pending}")
    return ", ".join(words) or "ok"


async def _remove(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import OperatorRemove

    removed: OperatorInfo = await controller.call(OperatorRemove(name=args.name), within=within)
    if args.json:
        print_json(removed)
    else:
        print(f"removed operator {removed.name} ({removed.role}): its password no longer works")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.enrollment_file import check_target
    from edgeplane.controller.sealing import EphemeralKey
    from edgeplane.shared.errors import SettingsError

    if args.output is None:
        raise SettingsError("operator rotate-credentials: --output FILE is required")
    check_target(args.output, force=args.force)
    settings = load_operator_settings(args)
    key = EphemeralKey()
    rotated = asyncio.run(_ask_rotation(settings, args.name, key))
    password = key.open(rotated.credential.sealed_password)
    new_url = _new_login(settings.broker, rotated, password)
    _write_rotated(args, settings, rotated, new_url, password)
    asyncio.run(_confirm(settings, new_url, rotated, key))
    _print_rotated(args, rotated)
    return 0


async def _ask_rotation(
    settings: OperatorSettings, name: str, key: EphemeralKey
) -> OperatorRotated:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.shared.rpc import OperatorRotate

    identity = settings.broker.identity
    login = identity.username if identity is not None and identity.username else ""
    request = OperatorRotate(name=name, seal_to=key.public, login=login)
    async with ControllerClient(
        settings.broker, settings.topic_root, connect_timeout=settings.timeout
    ) as controller:
        rotated: OperatorRotated = await controller.call(request, within=settings.timeout)
    return rotated


def _new_login(broker: BrokerUrl, rotated: OperatorRotated, password: str) -> BrokerUrl:
    """``broker`` as the new credential: the old identity's CA and certificate, the new
    user name and password."""
    import msgspec

    from edgeplane.shared.identity import Identity, Password

    credential = rotated.credential
    old = broker.identity or Identity()
    new = msgspec.structs.replace(
        old,
        username=credential.username,
        password=Password(password),
        ca_pem=credential.ca_pem or old.ca_pem,
    )
    return broker.with_identity(new)


def _write_rotated(
    args: argparse.Namespace,
    settings: OperatorSettings,
    rotated: OperatorRotated,
    url: BrokerUrl,
    password: str,
) -> None:
    from edgeplane.controller.operator.enrollment_file import settings_toml, write_private
    from edgeplane.shared.identity import Identity

    identity = url.identity or Identity()
    values = {
        "broker": str(url),
        "topic_root": str(settings.topic_root),
        "username": rotated.credential.username,
        "password": password,
    }
    if identity.ca_pem:
        values["ca_pem"] = identity.ca_pem
    elif identity.ca_file is not None:
        values["ca_file"] = str(identity.ca_file.resolve())
    header = (
        f"Operator {rotated.name} (role {rotated.role}), credential generation "
        f"{rotated.rotated_to}, written by `edgeplane operator rotate-credentials`.\n"
        "Use: edgeplane ... --config THIS_FILE. Mode 0600: it holds a password."
    )
    write_private(args.output, settings_toml(header, values), force=args.force)


async def _confirm(
    settings: OperatorSettings, new_url: BrokerUrl, rotated: OperatorRotated, key: EphemeralKey
) -> None:
    """Log in with the new credential, then confirm: as the new identity for an admin; a
    viewer may send nothing, so its new login is tried and the requester confirms."""
    from edgeplane.controller.errors import ControllerError
    from edgeplane.controller.mqtt import Connection, unique_client_id
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.shared.rpc import OperatorRotateConfirm

    confirm = OperatorRotateConfirm(
        name=rotated.name,
        generation=rotated.rotated_to,
        proof=key.open(rotated.sealed_proof),
    )
    confirm_url = new_url if rotated.role == "admin" else settings.broker
    try:
        if rotated.role != "admin":
            async with Connection(new_url, unique_client_id("edgeplane-cli"),
                                  timeout=settings.timeout):  # fmt: skip
                pass
        async with ControllerClient(
            confirm_url, settings.topic_root, connect_timeout=settings.timeout
        ) as controller:
            await controller.call(confirm, within=settings.timeout)
    except ControllerError as exc:
        raise ControllerError(
            f"the new settings file is written but the rotation is not confirmed ({exc}); "
            "the old and the new password both work: run the command again"
        ) from exc


def _print_rotated(args: argparse.Namespace, rotated: OperatorRotated) -> None:
    from edgeplane.controller.operator.output import print_json

    username = rotated.credential.username
    if args.json:
        print_json({"name": rotated.name, "username": username, "output": str(args.output)})
        return
    print(
        f"rotated operator {rotated.name} to {username}; wrote {args.output} (mode 0600); "
        "its other passwords no longer work"
    )
