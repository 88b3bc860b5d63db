"""Sending one deployment and following it to its end: the shell of ``edgeplane deploy``
(the judgement of events is :mod:`controller.operator.deploy_watch`).

Following survives a lost connection: the command connects again through the one
reconnect loop (:class:`controller.reconnect.Reconnect`: capped, jittered pauses, for up to
:data:`RECONNECT_FOR` seconds after the loss), subscribes again, then asks the controller
for the deployment's record and prints the events it missed meanwhile (each event is
printed once, by its stream and sequence). The record is also read whenever no event came
for :data:`RECHECK` seconds, and when the wait runs out.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Final

from edgeplane.controller.errors import BrokerUnavailable, NoControllerAnswer
from edgeplane.controller.operator.client import ControllerClient, EventFeed
from edgeplane.controller.operator.deploy_watch import DeploymentWatch, Outcome
from edgeplane.controller.operator.event_text import check_line, describe, output_block
from edgeplane.controller.operator.output import print_json, visible, when
from edgeplane.controller.reconnect import Reconnect, Retry
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.messages import Event, Preflight, StepFinished
from edgeplane.shared.rpc import DeploymentInfo, DeploymentShow, DeployRequest
from edgeplane.shared.topics import TopicRoot

__all__ = ["RECHECK", "RECONNECT_FOR", "DeployFollower"]

RECONNECT_FOR: Final = 30.0  # seconds to keep trying after the connection was lost
RECONNECT_PAUSE: Final = 0.5  # seconds before the first attempt; the pauses double ...
RECONNECT_PAUSE_CAP: Final = 2.0  # ... up to this
RECHECK: Final = 5.0  # quiet seconds after which the controller's record is read


class DeployFollower:
    """One ``deploy`` run: send the request, then (with ``follow``) follow the deployment
    across lost connections, report how it ended and return the exit status."""

    def __init__(
        self,
        url: BrokerUrl,
        root: TopicRoot,
        timeout: float,
        as_json: bool,
        *,
        collect: bool = False,
    ) -> None:
        """``collect``: keep the ``--json`` report in :attr:`report` instead of printing it
        (``deploy`` to several environments prints them together)."""
        self.url = url
        self.root = root
        self.timeout = timeout
        self.as_json = as_json
        self.collect = collect
        self.report: dict[str, Any] | None = None
        self.seen: list[Event] = []
        self._seen_keys: set[tuple[str, int]] = set()
        self._sent: DeploymentInfo | None = None  # the controller's answer to the request
        self._watch: DeploymentWatch | None = None
        self._give_up = 0.0

    async def run(self, request: DeployRequest, *, follow: bool, wait_for: float) -> int:
        if not follow:
            async with self._connect() as ctl:
                info: DeploymentInfo = await ctl.call(request, within=self.timeout)
            self._announce(info, final=True)
            return 0
        reconnect = Reconnect(
            backoff=Backoff(initial=RECONNECT_PAUSE, cap=RECONNECT_PAUSE_CAP),
            patience=RECONNECT_FOR,
            first_must_succeed=True,  # the request is sent once, on the first connection
            on_retry=self._on_retry,
        )

        async def session(ctl: ControllerClient) -> Outcome | str:
            return await self._session(ctl, request, reconnect, wait_for)

        try:
            outcome = await reconnect.run(self._connect, session)
        except BrokerUnavailable as exc:
            if self._sent is None:
                raise
            outcome = f"lost the connection to the broker while following it: {exc}"
        assert self._sent is not None  # else the first connection's error was raised
        assert outcome is not None  # no stop: the session ends with an outcome
        return self._report(self._sent, outcome)

    def _connect(self) -> ControllerClient:
        return ControllerClient(self.url, self.root, connect_timeout=self.timeout)

    async def _session(
        self, ctl: ControllerClient, request: DeployRequest, reconnect: Reconnect, wait_for: float
    ) -> Outcome | str:
        """On each connection: subscribe, then send (the first time) or catch up with what
        was missed (every later time), then follow until it ends or the wait runs out."""
        feed = await ctl.follow_events(request.env)
        if self._watch is None:
            self._sent = await ctl.call(request, within=self.timeout)
            self._announce(self._sent, final=False)
            workflow = request.workflow
            self._watch = DeploymentWatch(
                self._sent, service=workflow.kind == "service", requires=workflow.requires
            )
            self._give_up = time.monotonic() + wait_for
            reconnect.deadline = self._give_up
            reconnect.settled()
        else:
            self._note("connected again")
            outcome = await self._catch_up(ctl, self._watch)
            if outcome is not None:
                return outcome
        outcome = await self._from_feed(ctl, feed, self._watch, self._give_up)
        if outcome is not None:
            return outcome
        return await self._ask(ctl, self._watch, f"still in progress after {wait_for:g} s")

    def _on_retry(self, retry: Retry) -> None:
        if retry.lost:
            self._note(f"{retry.error}; connecting again")

    def _announce(self, info: DeploymentInfo, *, final: bool) -> None:
        if self.as_json:
            if final:
                print_json(info)
            return
        what = "dry run" if info.dry_run else "deployment"
        if info.waiting:
            told = f"{what} {info.id} waits for its validation, dry run {info.validation}"
            print(visible(told), flush=True)
        elif info.state == "queued":
            print(f"{what} {info.id} queued until {info.env} comes online", end="")
            print(f" (expires {when(info.expires)})" if info.expires else "")
        else:
            print(f"{what} {info.id} sent to {info.env}", flush=True)
        if info.forced:
            check, _, reason = info.forced.partition(": ")
            told = f"{what} {info.id}: the {check} refusal overridden, recorded: {reason}"
            print(visible(told), flush=True)

    # following ---------------------------------------------------------------------------
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
            elif self._validating(event) and self._first_time(event):
                self._progress(event)  # the dry run it waits for: shown, not followed
        return None

    def _validating(self, event: Event) -> bool:
        sent = self._sent
        return sent is not None and bool(sent.validation) and event.dep == sent.validation

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
            print(f"({visible(text)})", flush=True)

    def _progress(self, event: Event) -> None:
        self.seen.append(event)
        if self.as_json:
            return
        print(f"{event.env}: {describe(event)}")
        if isinstance(event, Preflight):
            for check in event.checks:
                print(f"  {check_line(check)}")
        if isinstance(event, StepFinished) and not event.ok:
            for line in output_block(event.stderr, "stderr"):
                print(line)
        sys.stdout.flush()

    def _report(self, info: DeploymentInfo, outcome: Outcome | str) -> int:
        if isinstance(outcome, str):
            see = f"see: edgeplane deployments show {info.id}"
            told = visible(f"edgeplane: deployment {info.id} to {info.env}: {outcome}; {see}")
            print(told, file=sys.stderr)
            self.report = _json_report(info, Outcome("unknown", False, outcome), self.seen)
            return 1
        self.report = _json_report(info, outcome, self.seen)
        if self.as_json:
            if not self.collect:
                print_json(self.report)
        elif outcome.ok:
            print(visible(_ending(info, outcome)))
        if not outcome.ok:
            print(f"edgeplane: {visible(_ending(info, outcome))}", file=sys.stderr)
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
