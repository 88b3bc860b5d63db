"""``edgeplane undeploy WORKFLOW --env ID``: stop a workflow on an environment and remove
it from what the agent starts again at boot, so that what runs there is what the operator
sees; its deployment ends ``cancelled`` (:mod:`controller.operator.take_back`).

Exit status: 0 undeployed (or sent, with ``--no-wait``); 1 refused (the workflow does not
run there, the environment is unknown, retired or offline), not undeployed by the agent,
or no answer; 2 usage errors.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import (
    StoreOnce,
    add_operator_flags,
    env_id_arg,
    seconds_arg,
    short_text_arg,
)

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "undeploy",
        help="stop a workflow on an environment and remove it from there",
        description="Stop a workflow on an environment (its service, or its job) and remove "
        "it from what the agent starts again at boot; its deployment ends cancelled.",
    )
    parser.add_argument("workflow", type=short_text_arg, metavar="WORKFLOW", help="its name")
    parser.add_argument(
        "--env",
        required=True,
        type=env_id_arg,
        action=StoreOnce,
        metavar="ID",
        help="the environment id",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="send, do not wait for the agent's answer"
    )
    parser.add_argument(
        "--wait-timeout",
        type=seconds_arg(86_400),
        default=None,
        metavar="SECONDS",
        help="most seconds to wait for the agent's answer (default 15)",
    )
    add_operator_flags(parser)
    parser.set_defaults(handler=undeploy, parser=parser)


def undeploy(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.session import run_handler

    if args.no_wait and args.wait_timeout is not None:
        args.parser.error("--wait-timeout: not with --no-wait")
    return run_handler(_undeploy, args)


async def _undeploy(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.take_back import ANSWER_WAIT, take_back
    from edgeplane.shared.rpc import UndeployRequest

    wait = None if args.no_wait else (args.wait_timeout or ANSWER_WAIT)
    request = UndeployRequest(env=args.env, workflow=args.workflow)
    return await take_back(
        controller, request, args.env, wait=wait, within=within, as_json=args.json
    )
