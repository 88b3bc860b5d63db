"""``edgeplane controller rotate-command-key [--finish | --status]``: rotate the running
controller's command key without locking any agent out (an operator request over MQTT).

Without flags it starts a rotation: a new key beside the old one, announced to every agent
in a ``trust`` command signed with the old key; each agent that acknowledges gets commands
signed with the new key, and once all have, the old key is dropped. ``--status`` shows
where a rotation is; ``--finish`` drops the old key now (agents that have not taken the new
key then refuse every command and must be enrolled again).

Exit status: 0 done; 1 refused or no answer (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Literal

from edgeplane.controller.operator.args import add_operator_flags
from edgeplane.controller.operator.settings import load_operator_settings

if TYPE_CHECKING:
    from edgeplane.shared.rpc import CommandKeyInfo

__all__ = ["add_parser", "describe"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "rotate-command-key",
        help="rotate the key that signs commands, without locking agents out",
        description="Make a new command key and roll it out to every agent (signed with the "
        "old key); the old key is dropped once every agent has taken the new one.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--finish",
        action="store_true",
        help="drop the old key now; agents that have not taken the new key must be enrolled again",
    )
    which.add_argument("--status", action="store_true", help="only show where a rotation is")
    add_operator_flags(parser)
    parser.set_defaults(handler=rotate_command_key)


def rotate_command_key(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import CommandKeyRequest

    settings = load_operator_settings(args)
    action: Literal["status", "rotate", "finish"] = (
        "finish" if args.finish else "status" if args.status else "rotate"
    )

    async def session() -> CommandKeyInfo:
        async with ControllerClient(
            settings.broker, settings.topic_root, connect_timeout=settings.timeout
        ) as controller:
            info: CommandKeyInfo = await controller.call(
                CommandKeyRequest(action=action), within=settings.timeout
            )
            return info

    info = asyncio.run(session())
    if args.json:
        print_json(info)
    else:
        print("\n".join(describe(info)))
    return 0


def describe(info: CommandKeyInfo) -> list[str]:
    """The rotation as lines for people."""
    lines = [f"command key: {info.key_id}"]
    if info.state == "rolling":
        lines.append(
            f"rotating to {info.next_key_id}: {len(info.trusted)} agent(s) took it, "
            f"{len(info.pending)} not yet (the old key stays until all have, or --finish)"
        )
    elif info.state in ("finished", "done"):
        told = "every agent trusts only the new key" if info.state == "done" else (
            f"{len(info.trusted)} agent(s) still to be told to drop the old key"
        )  # fmt: skip
        lines.append(f"last rotation finished; the old key is dropped; {told}")
    else:
        lines.append("never rotated")
    for label, envs in (
        ("waiting for", info.pending),
        ("took the new key", info.trusted),
        ("trust only the new key", info.done),
    ):
        if envs:
            lines.append(f"  {label}: {', '.join(envs)}")
    if info.lost:
        lines.append(
            f"  NEVER took the new key, refuse every command, enrol again: {', '.join(info.lost)}"
        )
    return lines
