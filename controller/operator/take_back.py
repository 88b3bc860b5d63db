"""Taking a workflow back off a target, for ``deployments cancel ID`` and ``undeploy
WORKFLOW --env ID``: send the request, then (unless ``--no-wait``) wait for the agent's
answer to the ``cancel`` command and show the deployment as the controller records it.

The environment's events are subscribed before the request goes out, so the answer cannot
be missed. The answer is the agent's ``cancelled`` event naming the command (done), or its
``rejected`` / ``expired`` (not done: nothing was stopped). A deployment still queued in
the controller is cancelled at once, with no command and nothing to wait for. Once the
agent said ``cancelled``, the controller's record is read until it says so too, so what
``deployments`` and ``env show`` print next agrees with this command.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

from edgeplane.controller.errors import NoControllerAnswer
from edgeplane.controller.operator.client import ControllerClient, EventFeed
from edgeplane.controller.operator.event_text import describe
from edgeplane.controller.operator.output import print_json, visible
from edgeplane.shared.messages import Cancelled, CommandRejected, Event, Expired
from edgeplane.shared.rpc import (
    TERMINAL_STATES,
    CancelResult,
    DeploymentCancel,
    DeploymentInfo,
    DeploymentShow,
    UndeployRequest,
)

__all__ = ["ANSWER_WAIT", "take_back"]

ANSWER_WAIT: Final = 15.0  # default seconds to wait for the agent's answer
RECORD_WAIT: Final = 5.0  # most seconds to wait for the controller's record to agree
RECORD_POLL: Final = 0.2


async def take_back(
    ctl: ControllerClient,
    request: DeploymentCancel | UndeployRequest,
    env: str,
    *,
    wait: float | None,
    within: float,
    as_json: bool,
) -> int:
    """Send ``request`` (for environment ``env``); with ``wait`` seconds, wait for the
    agent's answer. The exit status: 0 cancelled (or sent, without waiting), 1 not."""
    what = "undeploy" if isinstance(request, UndeployRequest) else "cancel"
    feed = await ctl.follow_events(env) if wait is not None else None
    result: CancelResult = await ctl.call(request, within=within)
    info = result.deployment
    if not result.cmd:  # the controller ended it itself: nothing went to the agent
        _show(result, info, None, as_json)
        return 0
    if feed is None or wait is None:
        if as_json:
            print_json(_report(info, result.cmd, None))
        else:
            print(f"{what} {result.cmd} of {info.id} ({info.workflow}) sent to {info.env}")
        return 0
    if not as_json:
        print(
            f"{what} {result.cmd} of {info.id} ({info.workflow}) sent to {info.env}; "
            "waiting for the agent",
            flush=True,
        )
    try:
        answer = await _answer(feed, result.cmd, wait)
    except TimeoutError:
        if as_json:
            print_json(_report(info, result.cmd, None))
        print(
            f"edgeplane: {info.env}: no answer from the agent to {what} {result.cmd} within "
            f"{wait:g} s (see: edgeplane events --env {info.env})",
            file=sys.stderr,
        )
        return 1
    if not isinstance(answer, Cancelled):
        if as_json:
            print_json(_report(info, result.cmd, answer))
        print(f"edgeplane: {info.env}: {what} {describe(answer)}", file=sys.stderr)
        return 1
    record = await _recorded(ctl, answer.dep or info.id, within)
    _show(result, record or info, answer, as_json)
    return 0


async def _answer(feed: EventFeed, cmd: str, within: float) -> Event:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        event = await feed.next(within=max(0.0, give_up - loop.time()))
        if event.cmd == cmd and isinstance(event, Cancelled | CommandRejected | Expired):
            return event


async def _recorded(ctl: ControllerClient, dep: str, within: float) -> DeploymentInfo | None:
    """The controller's record of ``dep`` once it is final (None: it did not answer)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RECORD_WAIT
    record: DeploymentInfo | None = None
    while True:
        try:
            record = await ctl.call(DeploymentShow(id=dep), within=within)
        except NoControllerAnswer:
            return record
        if record.state in TERMINAL_STATES or loop.time() >= give_up:
            return record
        await asyncio.sleep(RECORD_POLL)


def _show(result: CancelResult, info: DeploymentInfo, answer: Event | None, as_json: bool) -> None:
    if as_json:
        print_json(_report(info, result.cmd, answer))
        return
    if answer is not None:
        print(f"{answer.env}: {describe(answer)}")
    reason = f": {info.reason}" if info.reason else ""
    print(visible(f"deployment {info.id} ({info.workflow}) on {info.env} {info.state}{reason}"))


def _report(info: DeploymentInfo, cmd: str, answer: Event | None) -> dict[str, object]:
    """The ``--json`` output: the deployment, the cancel command's id ("" none was needed)
    and the agent's answer (null: none, or not waited for)."""
    return {"deployment": info, "cmd": cmd, "answer": answer}
