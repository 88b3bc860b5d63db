"""Sending one deployment and following it to its end: the shell of ``edgeplane deploy``
(the judgement of events is :mod:`controller.deploywatch`)."""

from __future__ import annotations

import sys
import time
from typing import Any

from controller.deploywatch import DeploymentWatch, Outcome
from controller.errors import BrokerUnavailable, ControllerError
from controller.eventtext import check_line, describe, output_tail
from controller.operator import print_json, when
from controller.rpc import ControllerClient, EventFeed
from shared.broker_url import BrokerUrl
from shared.messages import Event, Preflight, StepFinished
from shared.rpc import DeploymentInfo, DeploymentShow, DeployRequest
from shared.topics import TopicRoot

__all__ = ["Session"]


class Session:
    """One ``deploy`` run: send, then follow and report."""

    def __init__(self, url: BrokerUrl, root: TopicRoot, timeout: float, as_json: bool) -> None:
        self.url = url
        self.root = root
        self.timeout = timeout
        self.as_json = as_json
        self.seen: list[Event] = []

    async def run(self, request: DeployRequest, *, follow: bool, wait_for: float) -> int:
        async with ControllerClient(self.url, self.root, connect_timeout=self.timeout) as ctl:
            feed = await ctl.follow_events(request.env) if follow else None
            info: DeploymentInfo = await ctl.call(request, within=self.timeout)
            if feed is None:
                self._announce(info, final=True)
                return 0
            self._announce(info, final=False)
            watch = DeploymentWatch(info, service=request.workflow.kind == "service")
            outcome = await self._follow(ctl, feed, watch, wait_for)
        return self._report(info, outcome)

    def _announce(self, info: DeploymentInfo, *, final: bool) -> None:
        if self.as_json:
            if final:
                print_json(info)
            return
        what = "dry run" if info.dry_run else "deployment"
        if info.state == "queued":
            print(f"{what} {info.id} queued until {info.env} comes online", end="")
            print(f" (expires {when(info.expires)})" if info.expires else "")
        else:
            print(f"{what} {info.id} sent to {info.env}", flush=True)

    async def _follow(
        self, ctl: ControllerClient, feed: EventFeed, watch: DeploymentWatch, wait_for: float
    ) -> Outcome | str:
        """The outcome from the events, else from the controller's record; a string says
        why neither could tell."""
        give_up = time.monotonic() + wait_for
        try:
            while (left := give_up - time.monotonic()) > 0:
                event = await feed.next(within=left)
                if not watch.belongs(event):
                    continue
                self._progress(event)
                outcome = watch.take(event)
                if outcome is not None:
                    return outcome
        except TimeoutError:
            pass
        except BrokerUnavailable:
            return await self._ask_again(watch)
        return await self._ask(ctl, watch, f"still in progress after {wait_for:g} s")

    async def _ask_again(self, watch: DeploymentWatch) -> Outcome | str:
        """The connection broke while following: a new one, to ask the controller."""
        try:
            async with ControllerClient(self.url, self.root, connect_timeout=self.timeout) as ctl:
                return await self._ask(ctl, watch, "still in progress when the connection broke")
        except ControllerError as exc:
            return f"lost the connection while following it, and then: {exc}"

    async def _ask(self, ctl: ControllerClient, watch: DeploymentWatch, why: str) -> Outcome | str:
        info: DeploymentInfo = await ctl.call(DeploymentShow(id=watch.dep), within=self.timeout)
        outcome = watch.from_info(info)
        return outcome if outcome is not None else f"{why} ({info.state})"

    def _progress(self, event: Event) -> None:
        self.seen.append(event)
        if self.as_json:
            return
        print(f"{event.env}: {describe(event)}")
        if isinstance(event, Preflight):
            for check in event.checks:
                print(f"  {check_line(check)}")
        if isinstance(event, StepFinished) and not event.ok:
            for line in output_tail(event.stderr):
                print(f"    stderr | {line}")
        sys.stdout.flush()

    def _report(self, info: DeploymentInfo, outcome: Outcome | str) -> int:
        if isinstance(outcome, str):
            see = f"see: edgeplane deployments show {info.id}"
            print(
                f"edgeplane: deployment {info.id} to {info.env}: {outcome}; {see}", file=sys.stderr
            )
            return 1
        if self.as_json:
            print_json(_json_report(info, outcome, self.seen))
        elif outcome.ok:
            print(_ending(info, outcome))
        if not outcome.ok:
            print(f"edgeplane: {_ending(info, outcome)}", file=sys.stderr)
        return 0 if outcome.ok else 1


def _ending(info: DeploymentInfo, outcome: Outcome) -> str:
    """The last line: how it ended, and why when it failed."""
    if info.dry_run:
        verdict = "every check passed, nothing was run" if outcome.ok else outcome.reason
        return f"dry run {info.id} on {info.env}: {verdict}"
    why = f": {outcome.reason}" if outcome.reason else ""
    return f"deployment {info.id} to {info.env} {outcome.state}{why}"


def _json_report(info: DeploymentInfo, outcome: Outcome, seen: list[Event]) -> dict[str, Any]:
    return {
        "id": info.id,
        "env": info.env,
        "workflow": info.workflow,
        "version": info.version,
        "dry_run": info.dry_run,
        "state": outcome.state,
        "ok": outcome.ok,
        "reason": outcome.reason,
        "events": seen,
    }
