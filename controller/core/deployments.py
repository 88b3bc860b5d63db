"""Deployments and operator commands: their records, and the one fold that decides their
state from their environment's events (pure).

Every state a deployment or an operator command (``restart``, ``update``, ``retire``) is in
comes from :func:`fold`: the controller's own inputs (a deployment created, its command
sent; a command issued) and then each event of the environment, in order. The book
(:mod:`.deployment_book`) keeps what the fold says, the store writes it, ``deployments``,
``env show`` and a restarted controller read it, so they cannot disagree. A deployment::

    queued -> sent -> accepted -> running -> succeeded | failed | rolled-back | stopped
                         |  \\-> rejected (bad command, failed preflight)
                         \\-> checked (a dry run's preflight report)
    queued -> expired (the TTL passed), sent -> expired (the agent dropped it, or never
    took it before the command's expiry)
    queued | sent | accepted | running | restarting -> cancelled (deployments cancel,
    undeploy: the controller's own ``cancelled`` for a queued one, the agent's otherwise)

The agent stops a running workflow and may start it again: ``stopped`` by a restart (shown
``restarting`` while that restart is under way) or by an agent stop is followed by
``running`` (or ``failed``) when it comes back, and one stopped by a replacement (``by``)
comes back when the replacement fails and is rolled back: the replacement is ``failed``
until the agent says ``rolled-back`` (the old one ``running`` again) or that the old one
could not be restored either. Such a deployment is *revivable*: not yet final. A stopped
one is final once another deployment of its workflow runs there, or its environment is
retired. ``succeeded``, ``rejected``, ``expired``, ``checked``, ``rolled-back`` and every
other ``failed`` are final at once, and so is whatever the controller ends itself
(``src`` ``controller``: a queue's TTL, a retired environment's queue). ``cancelled`` is
final too, whoever says it: a cancelled deployment never comes back (the agent no longer
starts it again at boot).

Events are QoS 1 and an agent re-sends its outbox after a reconnect, so one may come twice
or after a newer one: an event of the agent's stream (``src``) whose ``seq`` is not above
the last one folded into a deployment is old news and changes nothing.

An operator command is ``pending`` until the agent answers (``ack``: ``done`` or
``failed``; a ``cancel`` command's ``cancelled``: ``done``; ``rejected``; ``expired``) or,
when no answer came before its expiry (plus :data:`SENT_GRACE`), ``unanswered`` (the
controller's own ``expired`` event). Deadlines are wall-clock times, because they are
stored and survive a controller restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Cancelled,
    Check,
    CheckKind,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Preflight,
    RolledBack,
    Running,
    ServiceRestarted,
    Started,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)
from edgeplane.shared.rpc import (
    CommandInfo,
    CommandState,
    DeploymentInfo,
    DeploymentState,
    LoggedEvent,
)
from edgeplane.shared.workflow import Requires, Workflow

__all__ = [
    "CONTROLLER_SRC",
    "OPEN_STATES",
    "PREFLIGHT_PASSED",
    "REFOLD",
    "SENT_GRACE",
    "Change",
    "Deployment",
    "Ledger",
    "OperatorCommand",
    "expiry_reason",
    "fold",
    "next_state",
    "refold",
    "replay",
    "sent",
    "short",
    "unchecked",
]

CONTROLLER_SRC: Final = "controller"  # the event stream of the controller's own events
SENT_GRACE: Final = 30.0  # seconds past a command's expiry before it counts as unanswered
REASON_LIMIT: Final = 256
OPEN_STATES: Final[frozenset[str]] = frozenset(
    {"queued", "sent", "accepted", "running", "restarting"}
)
# The last_seq of a deployment that an older controller kept without the fold's marks (the
# store's migration says which): its logged events are folded again at the start.
REFOLD: Final = -2
PREFLIGHT_PASSED: Final = "preflight passed"  # a dry run's reason when every check passed
_NOT_STARTED: Final[frozenset[str]] = frozenset({"queued", "sent", "accepted"})


def short(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (reasons travel in length-limited fields)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment as the fold left it. ``revivable``: stopped (or failed, waiting for
    the rollback's outcome) but the agent may yet change it; ``replaced_by``: the deployment
    whose start stopped this one; ``last_src``/``last_seq``: the agent event last folded in."""

    id: str
    env: str
    workflow: Workflow
    state: DeploymentState
    created: float
    updated: float
    cmd: str
    reason: str = ""
    expires: float | None = None  # queued: the TTL; sent: the command's expiry
    dry_run: bool = False
    when_online: bool = False
    revivable: bool = False
    replaced_by: str = ""
    last_src: str = ""
    last_seq: int = -1
    forced: str = ""  # the gate refusal overridden at the operator's word, and why
    after: str = ""  # queued: waits for this dry run (--validate-first) before it is sent
    validation: str = ""  # the dry run that validated it
    up: bool = False  # a service: its agent said it runs (``running``), not only started

    @property
    def final(self) -> bool:
        return self.state not in OPEN_STATES and not self.revivable

    @property
    def waiting(self) -> bool:
        """Queued behind its validation (the dry run ``after``), not for its environment."""
        return self.state == "queued" and bool(self.after)

    @property
    def passed(self) -> bool:
        """A dry run whose preflight report came in with every check passed."""
        return self.dry_run and self.state == "checked" and self.reason == PREFLIGHT_PASSED

    @property
    def awaiting_rollback(self) -> bool:
        return self.state == "failed" and self.revivable

    def info(self, events: Iterable[LoggedEvent] = ()) -> DeploymentInfo:
        return DeploymentInfo(
            id=self.id,
            env=self.env,
            workflow=self.workflow.name,
            version=self.workflow.version,
            kind=self.workflow.kind,
            state=self.state,
            reason=short(self.reason),
            created=self.created,
            updated=self.updated,
            expires=self.expires,
            dry_run=self.dry_run,
            cmd=self.cmd,
            events=list(events),
            forced=short(self.forced),
            validation=self.after or self.validation,
            waiting=self.waiting,
        )

    def moved(
        self, state: DeploymentState, reason: str, now: float, **changes: object
    ) -> Deployment:
        """In ``state`` for ``reason`` (``updated`` moves only when one of them changes)."""
        reason = short(reason)
        updated = self.updated if (state, reason) == (self.state, self.reason) else now
        return dataclasses.replace(
            self,
            state=state,
            reason=reason,
            updated=updated,
            **changes,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """An operator command sent to an environment and what became of it."""

    id: str
    env: str
    op: str  # restart, update, retire
    sent: float
    expires: float
    workflow: str = ""  # a restart of this workflow only ("" every one)
    state: CommandState = "pending"
    detail: str = ""
    answered: float | None = None

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def restarts(self, deployment: Deployment) -> bool:
        """A restart under way that covers ``deployment``'s workflow."""
        return (
            self.op == "restart"
            and self.pending
            and self.workflow in ("", deployment.workflow.name)
        )

    def answered_with(self, state: CommandState, detail: str, now: float) -> OperatorCommand:
        return dataclasses.replace(self, state=state, detail=short(detail), answered=now)

    def info(self) -> CommandInfo:
        return CommandInfo(
            id=self.id,
            op=self.op,
            state=self.state,
            sent=self.sent,
            expires=self.expires,
            answered=self.answered,
            detail=self.detail,
            workflow=self.workflow,
        )


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the fold reads: one environment's deployments that are not final, and its
    operator commands still pending, by id."""

    deployments: Mapping[str, Deployment] = field(default_factory=dict)
    commands: Mapping[str, OperatorCommand] = field(default_factory=dict)


@dataclass(slots=True)
class Change:
    """What one event changed: deployments and commands in their new state, in order."""

    deployments: list[Deployment] = field(default_factory=list)
    commands: list[OperatorCommand] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.deployments or self.commands)


# --- the controller's own inputs ---------------------------------------------------------
def sent(deployment: Deployment, cmd: str, expires: float, now: float) -> Deployment:
    """``deployment`` once its deploy command ``cmd`` (expiring at ``expires``) is out."""
    return dataclasses.replace(deployment, state="sent", cmd=cmd, expires=expires, updated=now)


def expiry_reason(deployment: Deployment) -> str:
    """Why a queued or sent deployment whose time ran out is ``expired``."""
    if deployment.state == "queued":
        return (
            f"environment {deployment.env} did not come online before the deployment's TTL ran out"
        )
    return f"the agent of {deployment.env} did not take the command before it expired"


# --- the fold ---------------------------------------------------------------------------
def fold(ledger: Ledger, event: Event, now: float) -> Change:
    """What ``event`` (of ``ledger``'s environment, received at ``now``) changes."""
    return _Fold(ledger, now).take(event)


def next_state(deployment: Deployment, event: Event) -> tuple[DeploymentState, str] | None:
    """The fold for ``deployment`` alone: the state and reason ``event`` moves it to, None
    when it changes neither."""
    change = fold(Ledger({deployment.id: deployment} if not deployment.final else {}), event, 0.0)
    for moved in change.deployments:
        if moved.id == deployment.id and (moved.state, moved.reason) != (
            deployment.state,
            deployment.reason,
        ):
            return moved.state, moved.reason
    return None


def replay(
    deployments: Iterable[Deployment],
    commands: Iterable[OperatorCommand],
    events: Iterable[tuple[Event, float]],
) -> tuple[dict[str, Deployment], dict[str, OperatorCommand]]:
    """Every deployment and command after folding ``events`` (each with its receipt
    time) in order, starting from ``deployments`` and ``commands``: the state re-derived
    from an environment's log."""
    all_deployments = {d.id: d for d in deployments}
    all_commands = {c.id: c for c in commands}
    for event, at in events:
        ledger = Ledger(
            {k: d for k, d in all_deployments.items() if not d.final and d.env == event.env},
            {k: c for k, c in all_commands.items() if c.pending and c.env == event.env},
        )
        change = fold(ledger, event, at)
        all_deployments.update((d.id, d) for d in change.deployments)
        all_commands.update((c.id, c) for c in change.commands)
    return all_deployments, all_commands


def refold(deployment: Deployment, events: Iterable[tuple[Event, float]]) -> Deployment:
    """``deployment`` with its own logged ``events`` folded again, in order."""
    start = dataclasses.replace(deployment, last_src="", last_seq=-1)
    folded, _ = replay([start], [], events)
    return folded[deployment.id]


class _Fold:
    """One event folded into a ledger; ``take`` says what changed."""

    def __init__(self, ledger: Ledger, now: float) -> None:
        self._ledger = ledger
        self._now = now
        self._deployments: dict[str, Deployment] = {}
        self._commands: dict[str, OperatorCommand] = {}

    def take(self, event: Event) -> Change:
        command = self._ledger.commands.get(event.cmd) if event.cmd else None
        if command is not None and command.pending:
            self._answer(command, event)
        deployment = self._owner(event)
        if deployment is not None and not _old_news(deployment, event):
            self._move(deployment, event)
        return Change(list(self._deployments.values()), list(self._commands.values()))

    # --- reading and writing the working copy ----------------------------------------
    def _get(self, dep: str) -> Deployment | None:
        deployment = self._deployments.get(dep) or self._ledger.deployments.get(dep)
        return None if deployment is None or deployment.final else deployment

    def _open(self) -> list[Deployment]:
        ids = dict.fromkeys([*self._ledger.deployments, *self._deployments])
        return [d for d in map(self._get, ids) if d is not None]

    def _pending(self) -> list[OperatorCommand]:
        ids = dict.fromkeys([*self._ledger.commands, *self._commands])
        found = (self._commands.get(i) or self._ledger.commands[i] for i in ids)
        return [c for c in found if c.pending]

    def _owner(self, event: Event) -> Deployment | None:
        if event.dep:
            return self._get(event.dep)
        if event.cmd:
            return next((d for d in self._open() if d.cmd == event.cmd), None)
        return None

    def _put(
        self,
        deployment: Deployment,
        event: Event | None,
        state: DeploymentState,
        reason: str,
        **changes: object,
    ) -> None:
        if event is not None and event.src != CONTROLLER_SRC:
            changes.update(last_src=event.src, last_seq=max(event.seq, _seq_in(deployment, event)))
        self._deployments[deployment.id] = deployment.moved(state, reason, self._now, **changes)

    # --- a deployment's own events -------------------------------------------------------
    def _move(self, deployment: Deployment, event: Event) -> None:
        if deployment.awaiting_rollback and not isinstance(event, RolledBack):
            return
        not_started = deployment.state in _NOT_STARTED
        match event:
            case Accepted() if deployment.state in ("queued", "sent"):
                self._put(deployment, event, "accepted", "")
            case Preflight() if not_started:
                verdict = _preflight_verdict(deployment, event)
                state, reason = verdict or (deployment.state, deployment.reason)
                self._put(deployment, event, state, reason)
            case Started() | StepStarted() | StepFinished() | ServiceRestarted():
                self._put(deployment, event, "running", "", revivable=False, replaced_by="")
            case Running():
                self._put(
                    deployment, event, "running", "", revivable=False, replaced_by="", up=True
                )
                self._supersede(deployment)
            case Succeeded():
                self._put(deployment, event, "succeeded", "", revivable=False)
                self._supersede(deployment)
            case Failed():
                self._failed(deployment, event)
            case RolledBack():
                self._rolled_back(deployment, event)
            case CommandRejected(reason=reason) if not_started:
                self._put(deployment, event, "rejected", reason)
            case Stopped():
                self._stopped(deployment, event)
            case Expired(reason=reason) if not_started:
                self._put(deployment, event, "expired", reason or "expired before it could start")
            case Cancelled(reason=reason):
                why = reason or "cancelled"
                self._put(deployment, event, "cancelled", why, revivable=False, replaced_by="")

    def _stopped(self, deployment: Deployment, event: Stopped) -> None:
        if event.src == CONTROLLER_SRC:  # the controller ended it: nothing can bring it back
            self._put(deployment, event, "stopped", event.reason, revivable=False)
            return
        restarting = not event.by and any(c.restarts(deployment) for c in self._pending())
        state: DeploymentState = "restarting" if restarting else "stopped"
        self._put(deployment, event, state, event.reason, revivable=True, replaced_by=event.by)

    def _failed(self, deployment: Deployment, event: Failed) -> None:
        reason = _failure(event)
        replacement = self._get(deployment.replaced_by) if deployment.replaced_by else None
        if replacement is not None and replacement.awaiting_rollback:
            # the one replaced could not be started again: both end failed
            self._put(deployment, event, "failed", reason, revivable=False)
            both = f"{replacement.reason}; {deployment.id} not restored either: {event.reason}"
            self._put(replacement, event, "failed", both, revivable=False)
            return
        waiting = any(d.replaced_by == deployment.id and d.state == "stopped" for d in self._open())
        self._put(deployment, event, "failed", reason, revivable=waiting)

    def _rolled_back(self, deployment: Deployment, event: RolledBack) -> None:
        detail = f"; {event.reason}" if event.reason else ""
        reason = f"restored deployment {event.restored}{detail}"
        self._put(deployment, event, "rolled-back", reason, revivable=False)
        restored = self._get(event.restored)
        if restored is not None and restored.replaced_by == deployment.id:
            again = f"restored after {deployment.id} failed"
            self._put(restored, event, "running", again, revivable=False, replaced_by="")

    def _supersede(self, deployment: Deployment) -> None:
        """Another deployment of this workflow runs now: stopped ones cannot come back."""
        for other in self._open():
            if (
                other.id != deployment.id
                and other.workflow.name == deployment.workflow.name
                and other.state == "stopped"
            ):
                self._put(other, None, "stopped", other.reason, revivable=False)

    # --- operator commands ----------------------------------------------------------------
    def _answer(self, command: OperatorCommand, event: Event) -> None:
        answer: tuple[CommandState, str]
        match event:
            case Ack(ok=ok, detail=detail):
                answer = ("done" if ok else "failed", detail)
            case Cancelled(reason=reason):
                answer = ("done", f"{event.dep} {reason}".strip() if event.dep else reason)
            case CommandRejected(reason=reason):
                answer = ("rejected", reason)
            case Expired(reason=reason) if event.src == CONTROLLER_SRC:
                answer = ("unanswered", reason)
            case Expired(reason=reason):
                answer = ("expired", reason)
            case _:
                return
        state, detail = answer
        answered = command.answered_with(state, detail, self._now)
        self._commands[command.id] = answered
        if answered.op == "retire" and answered.state == "done":
            self._retired()
        if answered.op == "restart":
            self._restart_over(answered)

    def _restart_over(self, command: OperatorCommand) -> None:
        """Deployments a restart stopped that are not running again when it is over (no
        other restart of theirs under way) are stopped."""
        pending = self._pending()
        for deployment in self._open():
            if deployment.state != "restarting" or any(c.restarts(deployment) for c in pending):
                continue
            why = f"{deployment.reason}; not running again when restart {command.id} ended"
            self._put(deployment, None, "stopped", f"{why} ({command.state})")

    def _retired(self) -> None:
        """The agent retired: it stopped everything, for good."""
        for deployment in self._open():
            if deployment.state in OPEN_STATES:
                self._put(deployment, None, "stopped", "environment retired", revivable=False)
            else:
                self._put(deployment, None, deployment.state, deployment.reason, revivable=False)


def _old_news(deployment: Deployment, event: Event) -> bool:
    return (
        event.src != CONTROLLER_SRC
        and event.src == deployment.last_src
        and event.seq <= deployment.last_seq
    )


def _seq_in(deployment: Deployment, event: Event) -> int:
    return deployment.last_seq if event.src == deployment.last_src else -1


def unchecked(requires: Requires, checks: Sequence[Check]) -> list[str]:
    """The requirements of ``requires`` that no check of a preflight report covers, as
    "kind name" (e.g. ``secret CAMERA_TOKEN``), in the order the workflow lists them."""
    wanted: list[tuple[CheckKind, str]] = [("model", m.name) for m in requires.models]
    wanted += [("datasource", d.name) for d in requires.datasources]
    wanted += [("bucket", b.name) for b in requires.buckets]
    wanted += [("secret", name) for name in requires.secrets]
    wanted += [("endpoint", name) for name in requires.endpoints]
    covered = {(check.kind, check.name) for check in checks}
    return [f"{kind} {name}" for kind, name in wanted if (kind, name) not in covered]


def _preflight_verdict(
    deployment: Deployment, event: Preflight
) -> tuple[DeploymentState, str] | None:
    """A report that leaves out a requirement is a failure (an impersonator, or a broken
    agent, answering "nothing required"), as is one with a failed check, ``ok`` or not."""
    missing = unchecked(deployment.workflow.requires, event.checks)
    failed = [f"{c.kind} {c.name}: {c.detail or 'failed'}" for c in event.checks if not c.ok]
    problems = []
    if missing:
        problems.append("preflight did not check: " + ", ".join(missing))
    if failed:
        problems.append("preflight failed: " + "; ".join(failed))
    if not problems and not event.ok:
        problems.append("preflight failed")
    summary = "; ".join(problems)
    if deployment.dry_run or event.dry_run:
        return "checked", summary or PREFLIGHT_PASSED
    if missing:
        return "failed", summary
    return ("rejected", summary) if summary else None


def _failure(event: Failed) -> str:
    return f"step {event.step}: {event.reason}" if event.step else event.reason
