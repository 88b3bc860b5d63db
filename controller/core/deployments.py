"""Deployments: their state machine, and the book of those still in progress (pure).

A deployment is created ``sent`` (published to an online environment) or ``queued``
(``--when-online``: waiting for the environment's next online transition, at most its TTL).
The agent's events move it on::

    queued -> sent -> accepted -> running -> succeeded | failed | rolled-back | stopped
                         |  \\-> rejected (bad command, failed preflight)
                         \\-> checked (a dry run's preflight report)
    queued -> expired (the TTL passed), sent -> expired (the agent dropped it, or never
    took it before the command's expiry)

States only move forward: a duplicate or late event (the agent's outbox re-sends after a
reconnect) never takes a deployment back, and a terminal state (``TERMINAL_STATES``) is
final. Deadlines (a queue's TTL, a command's expiry) are wall-clock times, because they
are stored and survive a controller restart; the book reads them from an injected clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import (
    Accepted,
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
from edgeplane.shared.rpc import TERMINAL_STATES, DeploymentInfo, DeploymentState, LoggedEvent
from edgeplane.shared.workflow import Requires, Workflow

__all__ = [
    "SENT_GRACE",
    "Deployment",
    "DeploymentBook",
    "next_state",
    "short",
    "unchecked",
]

SENT_GRACE: Final = 30.0  # seconds past a command's expiry before "sent" becomes "expired"
REASON_LIMIT: Final = 256
_RANK: Final[dict[str, int]] = {"queued": 0, "sent": 1, "accepted": 2, "running": 3}
_FINAL_RANK: Final = 4


def short(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (reasons travel in length-limited fields)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Deployment:
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

    @property
    def final(self) -> bool:
        return self.state in TERMINAL_STATES

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
        )

    def moved(self, state: DeploymentState, reason: str, now: float) -> Deployment:
        return dataclasses.replace(self, state=state, reason=short(reason), updated=now)


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
        return "checked", summary or "preflight passed"
    if missing:
        return "failed", summary
    return ("rejected", summary) if summary else None


def next_state(deployment: Deployment, event: Event) -> tuple[DeploymentState, str] | None:
    """The state (and reason) ``event`` moves ``deployment`` to; None when it changes
    nothing (not a deployment event, a duplicate, a late one, or the end was reached)."""
    if deployment.final:
        return None
    target = _target(deployment, event)
    if target is None:
        return None
    state, _ = target
    rank = _FINAL_RANK if state in TERMINAL_STATES else _RANK[state]
    if rank <= _RANK[deployment.state]:
        return None
    return target


def _target(deployment: Deployment, event: Event) -> tuple[DeploymentState, str] | None:
    match event:
        case Accepted():
            return "accepted", ""
        case Preflight():
            return _preflight_verdict(deployment, event)
        case Started() | StepStarted() | StepFinished() | ServiceRestarted() | Running():
            return "running", ""
        case Succeeded():
            return "succeeded", ""
        case Failed():
            return "failed", _failure(event)
        case RolledBack(restored=restored, reason=reason):
            detail = f"; {reason}" if reason else ""
            return "rolled-back", f"restored deployment {restored}{detail}"
        case CommandRejected(reason=reason):
            return "rejected", reason
        case Stopped(reason=reason):
            return "stopped", reason
        case Expired(reason=reason):
            return "expired", reason or "expired before it could start"
    return None


class DeploymentBook:
    """The deployments not yet in a terminal state, their command ids and deadlines; and
    the ids of every deployment ever issued and of every command issued (deploy commands
    from the store, others since the start: :meth:`note_command`), per environment
    (:meth:`stranger`)."""

    def __init__(
        self,
        clock: Clock,
        deployments: Iterable[Deployment] = (),
        issued: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        self._clock = clock
        self._active: dict[str, Deployment] = {}
        self._by_cmd: dict[str, str] = {}
        self._deadlines = TimerHeap()
        # replacement id -> the deployment it stopped, while a rollback may still come
        self._replaced: dict[str, Deployment] = {}
        self._issued_deps: set[tuple[str, str]] = set()  # (env, dep)
        self._issued_cmds: set[tuple[str, str]] = set()  # (env, cmd)
        for env, dep, cmd in issued:
            self._note_issued(env, dep, cmd)
        for deployment in deployments:
            self.put(deployment)

    def stranger(self, event: Event) -> str:
        """Why ``event`` is of nothing this controller sent to its environment ("" when it
        is, or when it names neither a deployment nor a command): its (env, dep) or (env,
        cmd) was never issued. This holds for every event, refusals, expiries and acks too:
        an agent's refusal of a command it could not authenticate names no command, so an
        event naming one that was never sent to its environment is someone else's word."""
        if event.dep and (event.env, event.dep) not in self._issued_deps:
            return f"no deployment {event.dep!r} was sent to {event.env}"
        if event.cmd and (event.env, event.cmd) not in self._issued_cmds:
            return f"no command {event.cmd!r} was sent to {event.env}"
        return ""

    def note_command(self, env: str, cmd: str) -> None:
        """Command ``cmd`` was issued to ``env`` (any command, not only a deployment's): its
        ``ack``, ``rejected`` or ``expired`` is the agent's own."""
        self._issued_cmds.add((env, cmd))

    def _note_issued(self, env: str, dep: str, cmd: str) -> None:
        self._issued_deps.add((env, dep))
        if cmd:
            self.note_command(env, cmd)

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[Deployment]:
        return iter(list(self._active.values()))

    def get(self, dep: str) -> Deployment | None:
        return self._active.get(dep)

    def put(self, deployment: Deployment) -> Deployment:
        """Track ``deployment`` (or stop tracking it, once it is final)."""
        self._note_issued(deployment.env, deployment.id, deployment.cmd)
        if deployment.final:
            self._forget(deployment)
            return deployment
        self._active[deployment.id] = deployment
        if deployment.cmd:
            self._by_cmd[deployment.cmd] = deployment.id
        self._deadlines.set(deployment.id, _deadline(deployment))
        return deployment

    # --- what events do -----------------------------------------------------------------
    def on_event(self, event: Event) -> list[Deployment]:
        """The deployments ``event`` moved (each now in its new state); empty for none.

        A replacement that fails is not over yet: the agent restores the deployment it
        replaced, and then says ``rolled-back`` (the replaced one runs again) or that the
        old one could not be restored either (the replacement ``failed``).
        """
        now = self._clock.time()
        match event:
            case Failed(dep=dep) if (new := self._restoring(dep)) is not None:
                del self._replaced[new.id]
                reason = f"{new.reason}; {dep} not restored either: {event.reason}"
                return [self.put(new.moved("failed", reason, now))]
            case Failed(dep=dep) if dep in self._replaced and dep in self._active:
                new = self._active[dep]  # held: the rollback's outcome ends it
                return [self.put(new.moved(new.state, _failure(event), now))]
            case RolledBack(dep=dep, restored=restored):
                replaced = self._replaced.pop(dep, None)
                moved = self._move(event, now)
                if replaced is not None and replaced.id == restored:
                    restored_again = replaced.moved("running", f"restored after {dep} failed", now)
                    moved.append(self.put(restored_again))
                return moved
            case Stopped(by=by) if by:
                moved = self._move(event, now)
                self._replaced.update((by, d) for d in moved if d.state == "stopped")
                return moved
            case Running(dep=dep) | Succeeded(dep=dep):
                self._replaced.pop(dep, None)  # the replacement is up: no rollback to come
        return self._move(event, now)

    def _move(self, event: Event, now: float) -> list[Deployment]:
        deployment = self._owner(event)
        if deployment is None:
            return []
        target = next_state(deployment, event)
        if target is None:
            return []
        state, reason = target
        return [self.put(deployment.moved(state, reason, now))]

    def _restoring(self, dep: str) -> Deployment | None:
        """The replacement whose rollback was to restore ``dep``, if one is waiting."""
        for new_id, replaced in self._replaced.items():
            if replaced.id == dep and new_id in self._active:
                return self._active[new_id]
        return None

    def _owner(self, event: Event) -> Deployment | None:
        dep = event.dep or self._by_cmd.get(event.cmd, "")
        deployment = self._active.get(dep)
        if deployment is None or deployment.env != event.env:
            return None
        return deployment

    # --- the queue ----------------------------------------------------------------------
    def queued_for(self, env: str) -> list[Deployment]:
        """``env``'s queued deployments, oldest first."""
        queued = [d for d in self._active.values() if d.env == env and d.state == "queued"]
        return sorted(queued, key=lambda d: (d.created, d.id))

    def mark_sent(self, dep: str, cmd: str, expires: float) -> Deployment:
        deployment = self._active[dep]
        sent = dataclasses.replace(
            deployment, state="sent", cmd=cmd, expires=expires, updated=self._clock.time()
        )
        return self.put(sent)

    def in_state(self, env: str, *states: DeploymentState) -> list[Deployment]:
        return [d for d in self._active.values() if d.env == env and d.state in states]

    def stop_queued(self, env: str, reason: str) -> list[Deployment]:
        """End ``env``'s queued deployments (its environment was retired)."""
        now = self._clock.time()
        return [self.put(d.moved("stopped", reason, now)) for d in self.queued_for(env)]

    # --- time ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self._deadlines.next_deadline()

    def expire_due(self) -> list[Deployment]:
        """Deployments whose time is up, now ``expired``: queued past their TTL, or sent
        and never taken by the agent before the command's expiry (plus a grace)."""
        now = self._clock.time()
        expired: list[Deployment] = []
        for dep in self._deadlines.pop_due(now):
            deployment = self._active.get(dep)
            if deployment is None or deployment.state not in ("queued", "sent"):
                continue
            expired.append(self.put(deployment.moved("expired", _expiry_reason(deployment), now)))
        return expired

    def _forget(self, deployment: Deployment) -> None:
        self._active.pop(deployment.id, None)
        self._replaced.pop(deployment.id, None)
        self._by_cmd.pop(deployment.cmd, None)
        self._deadlines.cancel(deployment.id)


def _failure(event: Failed) -> str:
    return f"step {event.step}: {event.reason}" if event.step else event.reason


def _deadline(deployment: Deployment) -> float | None:
    if deployment.expires is None:
        return None
    if deployment.state == "queued":
        return deployment.expires
    if deployment.state == "sent":
        return deployment.expires + SENT_GRACE
    return None


def _expiry_reason(deployment: Deployment) -> str:
    if deployment.state == "queued":
        return (
            f"environment {deployment.env} did not come online before the deployment's TTL ran out"
        )
    return f"the agent of {deployment.env} did not take the command before it expired"
