"""The book of deployments and operator commands not yet final (pure): what
:func:`~.deployments.fold` said of each, by environment, with their deadlines; and the ids
of every deployment and command ever issued, per environment (:meth:`stranger`).

The book decides nothing itself: each event goes to the fold with the ledger of its
environment, and the book keeps the answer (a final deployment, or an answered command,
leaves it; the last answered command of each environment stays, for ``env show``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from edgeplane.controller.core.deployments import (
    SENT_GRACE,
    Change,
    Deployment,
    Ledger,
    OperatorCommand,
    fold,
    sent,
)
from edgeplane.controller.core.timers import TimerHeap
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import Event
from edgeplane.shared.rpc import DeploymentState

__all__ = ["DeploymentBook"]


class _EnvEntry:
    """One environment's deployments not final and commands pending, by id."""

    __slots__ = ("commands", "deployments")

    def __init__(self) -> None:
        self.deployments: dict[str, Deployment] = {}
        self.commands: dict[str, OperatorCommand] = {}


class DeploymentBook:
    def __init__(
        self,
        clock: Clock,
        deployments: Iterable[Deployment] = (),
        issued: Iterable[tuple[str, str, str]] = (),
        commands: Iterable[OperatorCommand] = (),
    ) -> None:
        """``deployments``: those not final; ``issued``: (env, dep, cmd) of every deployment
        ever made; ``commands``: the pending ones and the last answered of each env."""
        self._clock = clock
        self._envs: dict[str, _EnvEntry] = {}
        self._active: dict[str, Deployment] = {}
        self._pending: dict[str, OperatorCommand] = {}  # every pending command, by id
        self._last_command: dict[str, OperatorCommand] = {}  # env -> the last one answered
        self._deployment_deadlines = TimerHeap()
        self._command_deadlines = TimerHeap()
        self._issued_deps: set[tuple[str, str]] = set()  # (env, dep)
        self._issued_cmds: set[tuple[str, str]] = set()  # (env, cmd)
        for env, dep, cmd in issued:
            self._note_issued(env, dep, cmd)
        for deployment in deployments:
            self.put(deployment)
        for command in commands:
            self.note_command(command.env, command.id)
            self._keep_command(command)

    # --- whose events ---------------------------------------------------------------------
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

    # --- deployments ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[Deployment]:
        return iter(list(self._active.values()))

    def get(self, dep: str) -> Deployment | None:
        return self._active.get(dep)

    def put(self, deployment: Deployment) -> Deployment:
        """Keep ``deployment`` as it is now (or let it go, once it is final)."""
        self._note_issued(deployment.env, deployment.id, deployment.cmd)
        entry = self._entry(deployment.env)
        if deployment.final:
            self._active.pop(deployment.id, None)
            entry.deployments.pop(deployment.id, None)
            self._deployment_deadlines.cancel(deployment.id)
            return deployment
        self._active[deployment.id] = deployment
        entry.deployments[deployment.id] = deployment
        self._deployment_deadlines.set(deployment.id, _deadline(deployment))
        return deployment

    def mark_sent(self, dep: str, cmd: str, expires: float) -> Deployment:
        return self.put(sent(self._active[dep], cmd, expires, self._clock.time()))

    def in_state(self, env: str, *states: DeploymentState) -> list[Deployment]:
        entry = self._envs.get(env)
        found = entry.deployments.values() if entry is not None else ()
        return [d for d in found if d.state in states]

    def queued_for(self, env: str) -> list[Deployment]:
        """``env``'s deployments queued for its coming online, oldest first (not those
        waiting for their validation: :meth:`waiting_for`)."""
        queued = (d for d in self.in_state(env, "queued") if not d.waiting)
        return sorted(queued, key=lambda d: (d.created, d.id))

    def waiting_for(self, dep: str) -> list[Deployment]:
        """The deployments waiting for dry run ``dep`` (their validation), oldest first."""
        waiting = (d for d in self._active.values() if d.waiting and d.after == dep)
        return sorted(waiting, key=lambda d: (d.created, d.id))

    def waiting(self) -> list[Deployment]:
        """Every deployment waiting for its validation, oldest first."""
        waiting = (d for d in self._active.values() if d.waiting)
        return sorted(waiting, key=lambda d: (d.created, d.id))

    # --- operator commands ----------------------------------------------------------------
    def issue(self, command: OperatorCommand) -> OperatorCommand:
        """Operator command ``command`` goes to its environment now."""
        self.note_command(command.env, command.id)
        self._keep_command(command)
        return command

    def commands_of(self, env: str) -> list[OperatorCommand]:
        """``env``'s commands still pending, oldest first, then the last one answered."""
        entry = self._envs.get(env)
        pending = sorted(entry.commands.values(), key=lambda c: c.sent) if entry else []
        last = self._last_command.get(env)
        return [*pending, last] if last is not None else pending

    def _keep_command(self, command: OperatorCommand) -> None:
        entry = self._entry(command.env)
        if command.pending:
            entry.commands[command.id] = self._pending[command.id] = command
            self._command_deadlines.set(command.id, command.expires + SENT_GRACE)
            return
        entry.commands.pop(command.id, None)
        self._pending.pop(command.id, None)
        self._command_deadlines.cancel(command.id)
        last = self._last_command.get(command.env)
        if last is None or (last.answered or 0.0) <= (command.answered or 0.0):
            self._last_command[command.env] = command

    # --- what events do -------------------------------------------------------------------
    def on_event(self, event: Event) -> Change:
        """What the fold says ``event`` changes, kept."""
        entry = self._envs.get(event.env)
        if entry is None:
            return Change()
        change = fold(Ledger(entry.deployments, entry.commands), event, self._clock.time())
        for deployment in change.deployments:
            self.put(deployment)
        for command in change.commands:
            self._keep_command(command)
        return change

    # --- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self._deployment_deadlines.next_deadline(),
                self._command_deadlines.next_deadline(),
            )
            if d is not None
        ]
        return min(deadlines, default=None)

    def due(self) -> tuple[list[Deployment], list[OperatorCommand]]:
        """What ran out of time: deployments queued past their TTL or sent and never taken
        before the command's expiry (plus a grace), and commands with no answer by their
        expiry (plus a grace). The caller tells each with an ``expired`` event of its own,
        which the fold takes like any other."""
        now = self._clock.time()
        deployments = [
            d
            for d in map(self._active.get, self._deployment_deadlines.pop_due(now))
            if d is not None and d.state in ("queued", "sent")
        ]
        due_commands = map(self._pending.get, self._command_deadlines.pop_due(now))
        return deployments, [c for c in due_commands if c is not None]

    def _entry(self, env: str) -> _EnvEntry:
        entry = self._envs.get(env)
        if entry is None:
            entry = self._envs[env] = _EnvEntry()
        return entry


def _deadline(deployment: Deployment) -> float | None:
    if deployment.expires is None or deployment.waiting:
        return None  # a waiting one's TTL starts to count once its validation passed
    if deployment.state == "queued":
        return deployment.expires
    if deployment.state == "sent":
        return deployment.expires + SENT_GRACE
    return None
