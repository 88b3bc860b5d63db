"""Following one deployment for ``deploy --wait`` / ``--dry-run``: which events are its own,
and when it is over, with the cause of a failure named. Pure: events in, outcome out.

The end, as the command reports it:

- a job: ``succeeded`` (exit 0), or ``failed`` / ``rejected`` / ``rolled-back`` /
  ``expired`` / ``stopped`` / ``cancelled`` (exit 1);
- a service: ``running`` (exit 0) once its last step is up, or one of the failures;
- a dry run: ``checked``, ok when every preflight check passed.

A preflight report that leaves out a requirement of the workflow sent (an impersonator
answering "nothing required") ends it as ``failed``, naming what was not checked, as the
controller judges it too. A failed preflight ends a real deployment at once (the agent
runs nothing after it), with the failed checks named. A deployment that replaced a
running one (the agent says so by stopping the old one "replaced by" the new id) is not
over when it fails: the agent then restores the old one, and the end is ``rolled-back``
(or ``failed`` when the old one could not be restored either).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeplane.controller.core.deployments import unchecked
from edgeplane.controller.operator.event_text import failed_checks, output_tail
from edgeplane.shared.messages import (
    Cancelled,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Preflight,
    RolledBack,
    Running,
    StepFinished,
    Stopped,
    Succeeded,
)
from edgeplane.shared.rpc import TERMINAL_STATES, DeploymentInfo
from edgeplane.shared.workflow import Requires

__all__ = ["DeploymentWatch", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str
    ok: bool
    reason: str = ""  # for a failure: the cause, naming the check or step


class DeploymentWatch:
    def __init__(
        self, info: DeploymentInfo, *, service: bool, requires: Requires | None = None
    ) -> None:
        self.dep = info.id
        self.requires = requires or Requires()  # what the workflow sent needs checked
        self.env = info.env
        self.dry_run = info.dry_run
        self.service = service
        self._stderr = ""  # the last stderr line of the last failed step
        self._replaced = ""  # the deployment this one stopped, restored if this one fails
        self._failed = ""  # why this one failed, while a rollback is awaited

    def belongs(self, event: Event) -> bool:
        """This deployment's events, and those of the one it replaced."""
        if event.env != self.env:
            return False
        if isinstance(event, Stopped) and event.dep != self.dep:
            return self.dep in event.reason  # "replaced by d-..."
        return event.dep in (self.dep, self._replaced or self.dep)

    def take(self, event: Event) -> Outcome | None:
        """The outcome if ``event`` (one of this deployment's) ends it, else None."""
        if event.dep != self.dep:
            return self._take_replaced(event)
        match event:
            case Preflight() if missing := unchecked(self.requires, event.checks):
                why = "preflight did not check: " + ", ".join(missing)
                return Outcome("checked" if self.dry_run else "failed", False, why)
            case Preflight() if self.dry_run or not event.ok:
                failed = "" if event.ok else f"preflight failed: {failed_checks(event)}"
                return Outcome("checked" if self.dry_run else "rejected", event.ok, failed)
            case StepFinished() if not event.ok:
                self._stderr = "\n".join(output_tail(event.stderr, 1))
            case Succeeded():
                return Outcome("succeeded", True)
            case Running():
                return Outcome("running", self.service, "" if self.service else "a job ran on")
            case Failed() if self._replaced:
                self._failed = self._failure(event)  # the old one is restored next
            case Failed():
                return Outcome("failed", False, self._failure(event))
            case RolledBack():
                failure = self._failed or event.reason
                why = f"{failure}; " if failure else ""
                version = f" ({event.version})" if event.version else ""
                return Outcome("rolled-back", False, f"{why}restored {event.restored}{version}")
            case CommandRejected():
                return Outcome("rejected", False, event.reason)
            case Expired():
                return Outcome("expired", False, event.reason or "its time ran out")
            case Stopped():
                return Outcome("stopped", False, event.reason)
            case Cancelled():
                return Outcome("cancelled", False, event.reason or "cancelled")
        return None

    def _take_replaced(self, event: Event) -> Outcome | None:
        if isinstance(event, Stopped):
            self._replaced = event.dep
        elif isinstance(event, Failed) and self._failed:
            not_restored = f"{self._failed}; {event.dep} not restored either: {event.reason}"
            return Outcome("failed", False, not_restored)
        return None

    def _failure(self, event: Failed) -> str:
        reason = event.reason
        if event.step and event.step not in reason:
            reason = f"step {event.step}: {reason}"
        return f"{reason}; stderr: {self._stderr}" if self._stderr else reason

    def from_info(self, info: DeploymentInfo) -> Outcome | None:
        """The outcome from the controller's record (``deployment-show``), when the event
        stream ended early: its logged events first, then its state."""
        outcome = None
        for logged in info.events:
            if self.belongs(logged.event):
                outcome = outcome or self.take(logged.event)
        if outcome is not None:
            return outcome
        if info.state == "running" and self.service:
            return Outcome("running", True)
        if info.state in TERMINAL_STATES:
            ok = info.state in ("succeeded", "checked")
            return Outcome(info.state, ok, info.reason)
        return None
