"""``edgeplane rollout start|list|status|pause|resume|abort|approve``: a workflow to every
environment a selector matches, wave by wave, through the controller.

``start FILE --selector K=V[,K=V...]`` prints the plan (each wave's environments, by id)
and the rollout's id; the controller then runs it, also when this command has exited.
``start --undeploy NAME --selector ...`` (instead of FILE) takes workflow NAME off every
target, wave by wave, as ``edgeplane undeploy`` does; with ``--rollback-on-abort`` an
abort deploys again what it stopped.
``--dry-run`` stores nothing: it prints the plan, sends the first wave's preflight (a
dry-run deployment each) and prints each result (exit 1 when one did not pass).
``status ID`` shows each wave and each target, ``--follow`` live until the rollout ends
(redrawn on a terminal, a line per change into a pipe); its exit status is then the
rollout's (0 succeeded, 1 otherwise).

A bad ``--selector``, ``--waves`` or ``--max-failures`` is a usage error naming the flag
(exit 2), before anything is sent; a selector that matches nothing is refused by the
controller (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edgeplane.controller.operator.session import add_leaf
from edgeplane.shared.errors import RequestRefused

if TYPE_CHECKING:
    from edgeplane.controller.operator.client import ControllerClient
    from edgeplane.shared.rpc import DeploymentInfo, RolloutInfo

__all__ = ["add_parser"]

FOLLOW_POLL: Final = 0.5  # seconds between looks at a followed rollout
DRY_RUN_WAIT: Final = 60.0  # seconds --dry-run waits for the preflight reports
FINAL: Final = frozenset({"succeeded", "aborted", "failed"})
MAX_SECONDS: Final = 30 * 86_400


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "rollout",
        help="roll a workflow out to many environments, wave by wave",
        description="Start a rollout (a workflow to every environment a selector matches, "
        "in waves), list rollouts, show one, and pause, resume, abort or approve it.",
    )
    actions = parser.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    _add_start(actions)
    add_leaf(actions, "list", "list rollouts, newest first", _list)
    status = add_leaf(actions, "status", "show a rollout's waves and targets", _status)
    status.add_argument("id", metavar="ID", help="the rollout id")
    status.add_argument("--follow", "-f", action="store_true", help="live until the rollout ends")
    for name, text in (
        ("pause", "pause a rollout: nothing more is sent until resume"),
        ("resume", "resume a paused rollout"),
        ("abort", "abort a rollout for good (rolling back with --rollback-on-abort)"),
        ("approve", "start the wave that waits for approval (--approve-each-wave)"),
    ):
        leaf = add_leaf(actions, name, text, _action)
        leaf.add_argument("id", metavar="ID", help="the rollout id")
        leaf.set_defaults(action=name)


def _non_negative_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 <= seconds <= 7 * 86_400:
        raise argparse.ArgumentTypeError(f"expected 0 to 604800 seconds, got {value}")
    return seconds


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 < seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected 0 < SECONDS <= {MAX_SECONDS}, got {value}")
    return seconds


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return number


def _selector(value: str) -> dict[str, str]:
    from edgeplane.controller.core.rollout_plan import parse_selector

    try:
        return parse_selector(value)
    except RequestRefused as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--selector: ")) from None


def _waves(value: str) -> tuple[str, ...]:
    from edgeplane.controller.core.rollout_plan import parse_waves

    try:
        return parse_waves(value.split(","))
    except RequestRefused as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--waves: ")) from None


def _threshold(value: str) -> str:
    from edgeplane.controller.core.rollout_plan import parse_threshold

    try:
        return parse_threshold(value).text
    except RequestRefused as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--max-failures: ")) from None


def _workflow_name(value: str) -> str:
    from edgeplane.shared.workflow import is_name

    if not is_name(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a workflow name (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


def _add_start(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_leaf(actions, "start", "start a rollout of a workflow file", _start)
    parser.add_argument(
        "file", type=Path, nargs="?", metavar="FILE", help="the workflow file to deploy"
    )
    parser.add_argument(
        "--undeploy",
        metavar="NAME",
        type=_workflow_name,
        help="instead of FILE: stop workflow NAME and take it off every target",
    )
    parser.add_argument(
        "--selector",
        required=True,
        type=_selector,
        metavar="K=V[,K=V...]",
        help="the environments: stage, location, purpose, project, or a label (all must hold)",
    )
    parser.add_argument(
        "--waves",
        type=_waves,
        default=("1", "10%", "50%", "100%"),
        metavar="LIST",
        help="cumulative counts or shares of the matched environments, by id "
        "(default: 1,10%%,50%%,100%%)",
    )
    parser.add_argument(
        "--max-failures",
        type=_threshold,
        default="10%",
        metavar="N|P%",
        help="failures the rollout tolerates, a count or a share of those finished (default: 10%%)",
    )
    parser.add_argument(
        "--min-executed",
        type=_count,
        default=1,
        metavar="N",
        help="targets finished before the failures are judged (default: 1)",
    )
    parser.add_argument(
        "--bake",
        type=_non_negative_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds after a wave is done before the next starts (default: 60)",
    )
    parser.add_argument(
        "--target-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="seconds a target may take (an offline one: to come online) (default: 300)",
    )
    parser.add_argument(
        "--concurrency",
        type=_count,
        default=50,
        metavar="N",
        help="targets of a wave in flight at once (default: 50)",
    )
    parser.add_argument(
        "--rollback-on-abort",
        action="store_true",
        help="on abort, return every environment changed to what ran there before",
    )
    parser.add_argument(
        "--approve-each-wave",
        action="store_true",
        help="each wave after the first waits for rollout approve",
    )
    parser.add_argument(
        "--skip-offline",
        action="store_true",
        help="offline targets (not deployed) do not count as failures",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the first wave's preflight; store and deploy nothing",
    )
    parser.add_argument(
        "--validate-first",
        action="store_true",
        help="each target gets a dry run first; its deployment follows only if it passes",
    )


async def _start(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.controller.operator.rollout_text import plan_text
    from edgeplane.controller.operator.workflow_file import read_for_command
    from edgeplane.shared.rpc import RolloutStart

    if (args.file is None) == (args.undeploy is None):
        print(
            "edgeplane: rollout start: give a workflow FILE to deploy, or --undeploy NAME "
            "(one of the two)",
            file=sys.stderr,
        )
        return 2
    workflow = None
    if args.file is not None:
        workflow = read_for_command(args.file)
        if workflow is None:
            return 2
    request = RolloutStart(
        workflow=workflow,
        undeploy=args.undeploy or "",
        selector=args.selector,
        waves=list(args.waves),
        max_failures=args.max_failures,
        min_executed=args.min_executed,
        bake=args.bake,
        target_timeout=args.target_timeout,
        concurrency=args.concurrency,
        rollback_on_abort=args.rollback_on_abort,
        approve_each_wave=args.approve_each_wave,
        skip_offline=args.skip_offline,
        dry_run=args.dry_run,
        validate_first=args.validate_first,
    )
    info: RolloutInfo = await controller.call(request, within=within)
    if not args.dry_run:
        if args.json:
            print_json(info)
        else:
            print(plan_text(info))
            print(f"started rollout {info.id}: edgeplane rollout status {info.id} --follow")
        return 0
    if args.undeploy:  # nothing to check beforehand: the plan is all
        if args.json:
            print_json({"plan": info, "preflight": []})
        else:
            print(plan_text(info))
        return 0
    if not args.json:
        print(plan_text(info), flush=True)
    results = await _preflights(controller, info, within)
    if args.json:
        print_json({"plan": info, "preflight": results})
    else:
        for target in info.targets:
            if target.wave == 0:
                print(_preflight_line(target.env, target.reason, results.get(target.env)))
    passed = all(
        r is not None and r.state == "checked" and r.reason == "preflight passed"
        for r in (results.get(t.env) for t in info.targets if t.wave == 0)
    )
    return 0 if passed else 1


async def _preflights(
    controller: ControllerClient, info: RolloutInfo, within: float
) -> dict[str, DeploymentInfo | None]:
    """Each first-wave target's dry-run deployment once its report is in (or as it is
    when the wait runs out)."""
    from edgeplane.shared.rpc import TERMINAL_STATES, DeploymentShow

    results: dict[str, DeploymentInfo | None] = {}
    deadline = time.monotonic() + DRY_RUN_WAIT
    for target in (t for t in info.targets if t.wave == 0):
        if not target.dep:
            results[target.env] = None
            continue
        shown: DeploymentInfo = await controller.call(DeploymentShow(id=target.dep), within)
        while shown.state not in TERMINAL_STATES and time.monotonic() < deadline:
            await asyncio.sleep(FOLLOW_POLL)
            shown = await controller.call(DeploymentShow(id=target.dep), within)
        results[target.env] = shown
    return results


def _preflight_line(env: str, refused: str, shown: DeploymentInfo | None) -> str:
    from edgeplane.controller.operator.output import visible

    if shown is None:
        return f"  {env}: {visible(refused)}"
    if shown.state != "checked":
        return f"  {env}: no preflight report ({shown.state})"
    verdict = "PASS" if shown.reason == "preflight passed" else "FAIL"
    return f"  {env}: {verdict} {visible(shown.reason)}"


async def _list(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.controller.operator.rollout_text import rollout_table
    from edgeplane.shared.rpc import RolloutList

    infos: list[RolloutInfo] = await controller.call(RolloutList(), within=within)
    if args.json:
        print_json(infos)
    else:
        print(rollout_table(infos))
    return 0


async def _status(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    import msgspec

    from edgeplane.controller.operator.output import json_safe, print_json
    from edgeplane.controller.operator.rollout_text import changes, status_text
    from edgeplane.shared.rpc import RolloutShow

    info: RolloutInfo = await controller.call(RolloutShow(id=args.id), within=within)
    if not args.follow:
        if args.json:
            print_json(info)
        else:
            print(status_text(info))
        return 0
    live = sys.stdout.isatty() and not args.json
    before: RolloutInfo | None = None
    drawn = 0
    while True:
        if args.json:
            if before is None or info != before:
                print(json_safe(msgspec.json.encode(info).decode()), flush=True)
        elif live:
            rows = shutil.get_terminal_size().lines
            per_wave = max(1, (rows - 4 - 2 * len(info.waves)) // max(1, len(info.waves)))
            text = status_text(info, per_wave=per_wave)
            if drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            drawn = text.count("\n") + 1
        else:
            for line in changes(before, info):
                print(line, flush=True)
        if info.state in FINAL:
            return 0 if info.state == "succeeded" else 1
        before = info
        await asyncio.sleep(FOLLOW_POLL)
        info = await controller.call(RolloutShow(id=args.id), within=within)


async def _action(controller: ControllerClient, args: argparse.Namespace, within: float) -> int:
    from edgeplane.controller.operator.output import print_json
    from edgeplane.shared.rpc import RolloutAction

    info: RolloutInfo = await controller.call(
        RolloutAction(id=args.id, action=args.action), within=within
    )
    if args.json:
        print_json(info)
    else:
        reason = f" ({info.reason})" if info.reason else ""
        print(f"rollout {info.id}: {info.state}{reason}")
    return 0
