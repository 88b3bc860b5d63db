"""``edgeplane deploy FILE --env ID``: send a workflow to an environment, and with
``--wait`` follow it to its end.

The file is loaded and checked here first: a bad file is one line naming the file, the
field and what was expected, exit status 2, and nothing is sent. The events topic of the
environment is subscribed before the request goes out, so no event can be missed.

Exit status: 0 when the deployment was sent or queued (without ``--wait``), succeeded (a
job), is running (a service) or passed its preflight (``--dry-run``); 1 for a refusal, a
failure, a failed check, or when the end could not be learned; 2 for usage errors and bad
workflow files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import add_operator_flags, env_id_arg, seconds_arg
from edgeplane.controller.operator.settings import load_operator_settings
from edgeplane.shared.errors import SettingsError

if TYPE_CHECKING:
    from edgeplane.shared.rpc import DeployRequest
    from edgeplane.shared.workflow import Workflow

__all__ = ["add_parser"]

MAX_TTL = 30 * 86_400
DRY_RUN_WAIT = 60.0  # seconds a dry run waits for the preflight report by default
MARGIN = 60.0  # seconds added to the steps' timeouts for the default --wait-timeout


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="deploy a workflow to an environment",
        description="Load a workflow file (YAML or JSON), send it to an environment and, "
        "with --wait, follow it to its end. --dry-run runs only the agent's preflight.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the workflow file")
    parser.add_argument("--env", required=True, type=env_id_arg, help="the environment id")
    parser.add_argument(
        "--wait", action="store_true", help="show progress; exit 0 only when it succeeded"
    )
    parser.add_argument(
        "--when-online",
        action="store_true",
        help="queue it until the environment comes online (else an offline one refuses)",
    )
    parser.add_argument(
        "--ttl",
        type=seconds_arg(MAX_TTL),
        metavar="SECONDS",
        help="how long it may stay queued (default 3600)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run only the preflight checks and print them"
    )
    parser.add_argument(
        "--wait-timeout",
        type=seconds_arg(MAX_TTL),
        metavar="SECONDS",
        help="most seconds to follow it (default: the steps' timeouts + 60, + the TTL)",
    )
    add_operator_flags(parser)
    parser.set_defaults(handler=deploy)


def deploy(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.deploy_follow import DeployFollower
    from edgeplane.controller.operator.workflow_file import read_workflow_file
    from edgeplane.shared.errors import WorkflowFileError
    from edgeplane.shared.rpc import DeployRequest

    if args.ttl is not None and not args.when_online:
        raise SettingsError("--ttl: only with --when-online (how long it may stay queued)")
    settings = load_operator_settings(args)
    try:
        loaded = read_workflow_file(args.file)
    except WorkflowFileError as exc:
        print(f"edgeplane: {exc}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"edgeplane: warning: {warning}", file=sys.stderr)
    request = DeployRequest(
        env=args.env,
        workflow=loaded.workflow,
        when_online=args.when_online,
        dry_run=args.dry_run,
        **({"ttl": args.ttl} if args.ttl is not None else {}),
    )
    follow = args.wait or args.dry_run
    wait_for = args.wait_timeout or _default_wait(request)
    follower = DeployFollower(settings.broker, settings.topic_root, settings.timeout, args.json)
    return asyncio.run(follower.run(request, follow=follow, wait_for=wait_for))


def _default_wait(request: DeployRequest) -> float:
    if request.dry_run:
        return DRY_RUN_WAIT + (request.ttl if request.when_online else 0)
    return _steps_time(request.workflow) + MARGIN + (request.ttl if request.when_online else 0)


def _steps_time(workflow: Workflow) -> float:
    steps = workflow.steps[:-1] if workflow.kind == "service" else workflow.steps
    return sum(step.timeout for step in steps)
