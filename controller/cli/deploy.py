"""``edgeplane deploy FILE --env ID [--env ID]...``: send a workflow to one environment
or several (one deployment each, shown together), and with ``--wait`` follow them to their
end. ``--force --reason TEXT`` sends past a flapping environment's refusal (only that
one), and the controller records the override with the deployment. ``--validate-first``
sends a dry run first; the deployment waits for it and follows only if it passes (what a
``critical: true`` workflow needs when it has no recent passing dry run there).

The file is loaded and checked here first: a bad file is one line naming the file, the
field and what was expected, exit status 2, and nothing is sent. The events topic of the
environment is subscribed before the request goes out, so no event can be missed.

Exit status: 0 when the deployment was sent or queued (without ``--wait``), succeeded (a
job), is running (a service) or passed its preflight (``--dry-run``), each of them when
there are several; 1 for a refusal, a failure, a failed check, or when the end could not
be learned (of any of them); 2 for usage errors (an ``--env`` given twice, ``--force``
without ``--reason``) and bad workflow files.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from edgeplane.controller.operator.args import (
    add_operator_flags,
    env_id_arg,
    seconds_arg,
    short_text_arg,
)
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
    parser.add_argument(
        "--env",
        required=True,
        action="append",
        type=env_id_arg,
        metavar="ID",
        help="the environment id; repeat for several (one deployment each)",
    )
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="send to a flapping environment all the same (only that refusal); needs --reason",
    )
    parser.add_argument(
        "--reason",
        type=short_text_arg,
        metavar="TEXT",
        help="why --force: recorded with the deployment and in the operations log",
    )
    parser.add_argument(
        "--validate-first",
        action="store_true",
        help="send a dry run first; the deployment follows only if it passes (each --env its own)",
    )
    add_operator_flags(parser)
    parser.set_defaults(handler=deploy)


def deploy(args: argparse.Namespace) -> int:
    from edgeplane.controller.operator.deploy_follow import DeployFollower
    from edgeplane.controller.operator.workflow_file import read_for_command
    from edgeplane.shared.rpc import DeployRequest

    if args.ttl is not None and not args.when_online:
        raise SettingsError("--ttl: only with --when-online (how long it may stay queued)")
    envs: list[str] = args.env
    repeated = sorted({env for env in envs if envs.count(env) > 1})
    if repeated:
        raise SettingsError(
            f"--env {', '.join(repeated)}: given more than once (each environment gets one "
            "deployment)"
        )
    if args.force and not args.reason:
        raise SettingsError("--force: needs --reason TEXT (the override is recorded)")
    if args.validate_first and args.dry_run:
        raise SettingsError("--validate-first: not with --dry-run (the dry run is the validation)")
    if args.reason and not args.force:
        raise SettingsError("--reason: only with --force (why the gate is overridden)")
    settings = load_operator_settings(args)
    workflow = read_for_command(args.file)
    if workflow is None:
        return 2
    requests = [
        DeployRequest(
            env=env,
            workflow=workflow,
            when_online=args.when_online,
            dry_run=args.dry_run,
            force=args.force,
            reason=args.reason or "",
            validate_first=args.validate_first,
            **({"ttl": args.ttl} if args.ttl is not None else {}),
        )
        for env in envs
    ]
    follow = args.wait or args.dry_run
    wait_for = args.wait_timeout or _default_wait(requests[0])
    if len(requests) > 1:
        from edgeplane.controller.operator.deploy_many import deploy_many

        many = deploy_many(
            settings.broker,
            settings.topic_root,
            settings.timeout,
            args.json,
            requests,
            follow=follow,
            wait_for=wait_for,
        )
        return asyncio.run(many)
    follower = DeployFollower(settings.broker, settings.topic_root, settings.timeout, args.json)
    return asyncio.run(follower.run(requests[0], follow=follow, wait_for=wait_for))


def _default_wait(request: DeployRequest) -> float:
    if request.dry_run:
        return DRY_RUN_WAIT + (request.ttl if request.when_online else 0)
    first = DRY_RUN_WAIT if request.validate_first else 0.0
    queued = request.ttl if request.when_online else 0.0
    return first + _steps_time(request.workflow) + MARGIN + queued


def _steps_time(workflow: Workflow) -> float:
    steps = workflow.steps[:-1] if workflow.kind == "service" else workflow.steps
    return sum(step.timeout for step in steps)
