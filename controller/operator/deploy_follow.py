"""Sending one deployment and following it to its end: the shell of ``edgeplane deploy``
(the judgement of events is :mod:`controller.operator.deploy_watch`).

Following survives a lost connection: the command connects again (for up to
:data:`RECONNECT_FOR` seconds), subscribes again, then asks the controller for the
deployment's record and prints the events it missed meanwhile (each event is printed once,
by its stream and sequence). The record is also read whenever no event came for
:data:`RECHECK` seconds, and when the wait runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any, Final

from edgeplane.controller.errors import BrokerUnavailable, NoControllerAnswer
from edgeplane.controller.operator.client import ControllerClient, EventFeed
from edgeplane.controller.operator.deploy_watch import DeploymentWatch, Outcome
from edgeplane.controller.operator.event_text import check_line, describe, output_tail
from edgeplane.controller.operator.output import print_json, when
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.messages import Event, Preflight, StepFinished
from edgeplane.shared.rpc import DeploymentInfo, DeploymentShow, DeployRequest
from edgeplane.shared.topics import TopicRoot

__all__ = ["RECHECK", "RECONNECT_FOR", "Session"]

RECONNECT_FOR: Final = 30.0  # seconds to keep trying after the connection was lost
RECONNECT_PAUSE: Final = 0.5  # seconds between attempts
RECHECK: Final = 5.0  # quiet seconds after which the controller's record is read


class Session:
    """One ``deploy`` run: send, then follow and report."""

    def __init__(self, url: BrokerUrl, root: TopicRoot, timeout: float, as_json: bool) -> None:
        self.url = url
        self.root = root
        self.timeout = timeout
        self.as_json = as_json
        self.seen: list[Event] = []
        self._seen_keys: set[tuple[str, int]] = set()
        self._connections = contextlib.AsyncExitStack()

    async def run(self, request: DeployRequest, *, follow: bool, wait_for: float) -> int:
        async with self._connections:
            ctl = await self._connect()
            feed = await ctl.follow_events(request.env) if follow else None
            info: DeploymentInfo = await ctl.call(request, within=self.timeout)
            if feed is None:
                self._announce(info, final=True)
                return 0
            self._announce(info, final=False)
            watch = DeploymentWatch(info, service=request.workflow.kind == "service")
            outcome = await self._follow(ctl, feed, watch, wait_for)
        return self._report(info, outcome)

    async def _connect(self) -> ControllerClient:
        client = ControllerClient(self.url, self.root, connect_timeout=self.timeout)
        return await self._connections.enter_async_context(client)

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

    # following ---------------------------------------------------------------------------
    async def _follow(
        self, ctl: ControllerClient, feed: EventFeed, watch: DeploymentWatch, wait_for: float
    ) -> Outcome | str:
        """The outcome from the events, else from the controller's record; a string says
        why neither could tell."""
        give_up = time.monotonic() + wait_for
        while True:
            try:
                outcome = await self._from_feed(ctl, feed, watch, give_up)
                if outcome is not None:
                    return outcome
                return await self._ask(ctl, watch, f"still in progress after {wait_for:g} s")
            except BrokerUnavailable as lost:
                self._note(f"{lost}; connecting again")
                connected = await self._reconnect(watch.env, give_up)
                if isinstance(connected, str):
                    return connected
                ctl, feed = connected
                outcome = await self._catch_up(ctl, watch)
                if outcome is not None:
                    return outcome

    async def _from_feed(
        self, ctl: ControllerClient, feed: EventFeed, watch: DeploymentWatch, give_up: float
    ) -> Outcome | None:
        """The outcome once an event ends it; None when the time is up. After
        :data:`RECHECK` quiet seconds the controller's record is read too: an event can
        pass while connections to the broker are made again (ours, the agent's, the
        controller's), and the record has it."""
        while (left := give_up - time.monotonic()) > 0:
            try:
                event = await feed.next(within=min(left, RECHECK))
            except TimeoutError:
                outcome = await self._catch_up(ctl, watch) if left > RECHECK else None
                if outcome is not None:
                    return outcome
                continue
            if watch.belongs(event) and self._first_time(event):
                self._progress(event)
                outcome = watch.take(event)
                if outcome is not None:
                    return outcome
        return None

    async def _reconnect(
        self, env: str, give_up: float
    ) -> tuple[ControllerClient, EventFeed] | str:
        until = min(give_up, time.monotonic() + RECONNECT_FOR)
        while True:
            try:
                ctl = await self._connect()
                feed = await ctl.follow_events(env)
            except BrokerUnavailable as exc:
                if time.monotonic() + RECONNECT_PAUSE >= until:
                    return f"lost the connection to the broker while following it: {exc}"
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            self._note("connected again")
            return ctl, feed

    async def _catch_up(self, ctl: ControllerClient, watch: DeploymentWatch) -> Outcome | None:
        """Print what was missed while disconnected (from the controller's record); the
        outcome if it already ended. A controller not back yet is no reason to stop: the
        events still come, and the record is asked again at the end of the wait."""
        try:
            record: DeploymentInfo = await ctl.call(
                DeploymentShow(id=watch.dep), within=self.timeout
            )
        except NoControllerAnswer:
            return None
        for logged in record.events:
            if watch.belongs(logged.event) and self._first_time(logged.event):
                self._progress(logged.event)
                outcome = watch.take(logged.event)
                if outcome is not None:
                    return outcome
        return watch.from_info(record)

    async def _ask(self, ctl: ControllerClient, watch: DeploymentWatch, why: str) -> Outcome | str:
        record: DeploymentInfo = await ctl.call(DeploymentShow(id=watch.dep), within=self.timeout)
        outcome = watch.from_info(record)
        return outcome if outcome is not None else f"{why} ({record.state})"

    def _first_time(self, event: Event) -> bool:
        key = (event.src, event.seq)
        if key in self._seen_keys:
            return False
        self._seen_keys.add(key)
        return True

    # output ------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        if not self.as_json:
            print(f"({text})", flush=True)

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
