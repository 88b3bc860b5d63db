"""The operations log's incidents: one per episode of a problem of one environment (pure).

An incident is keyed by (env, kind): while one is open (or acknowledged) a repeat of the
same problem adds to its ``count`` and timeline, never a new incident. It ends when the
condition ends (``resolved`` by the controller: the environment came back, the alert was
cleared, a later deployment succeeded), or when an operator resolves it with a note; an
acknowledged one still resolves by itself when the condition ends.

Sources, each a method returning the :class:`IncidentEdge` it made (or none):

- presence transitions (:meth:`IncidentBook.on_transition`): offline because the
  connection was lost or the heartbeats stopped opens ``offline``; online resolves it. A
  clean shutdown or a retirement is no incident;
- alert edges of any kind (:meth:`~IncidentBook.on_alert`): raised opens an incident of the
  alert's kind, cleared resolves it; a new alert kind needs no change here;
- agent events (:meth:`~IncidentBook.on_event`): a failed preflight (not a dry run's: that
  is an operator's check), a failed deployment,
  a rollback; a command refused by the agent (unauthenticated, bad signature, unknown key;
  expired). A later success resolves the deployment ones, an accepted command the refusal;
- missed heartbeats (:meth:`~IncidentBook.on_missed`), from the heartbeat log;
- credential problems (:meth:`~IncidentBook.credential_problem`).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.presence import Transition
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Pong,
    Preflight,
    RolledBack,
    Running,
    Succeeded,
)

__all__ = [
    "CONTROLLER",
    "MISSED_THRESHOLD",
    "SEVERITY",
    "EdgeName",
    "Incident",
    "IncidentBook",
    "IncidentEdge",
    "IncidentState",
    "IncidentStepRecord",
    "Severity",
    "severity_of",
]

Severity = Literal["critical", "warning", "info"]
IncidentState = Literal["open", "acknowledged", "resolved"]
EdgeName = Literal["opened", "repeated", "acknowledged", "resolved"]

CONTROLLER: Final = "controller"  # ``by`` of what the controller did itself
MISSED_THRESHOLD: Final = 2  # heartbeats missed in the window that open an incident
MAX_STEPS: Final = 32  # timeline steps kept per incident (repeats past it only count)
# Kinds by severity; any other kind (a new alert kind) is a warning.
SEVERITY: Final[dict[str, Severity]] = {
    "offline": "critical",
    "identity-conflict": "critical",
    "rollout-aborted": "critical",
    "credential-problem": "critical",
    "login-refused": "warning",
    "deployment-failed": "warning",
    "preflight-failed": "warning",
    "rolled-back": "warning",
    "flapping": "warning",
    "heartbeats-missed": "warning",
    "command-refused": "warning",
}
_LOST: Final = frozenset({"connection-lost", "heartbeat-timeout"})
# The agent's reasons (``reason: detail``) for a command it could not authenticate.
_REFUSALS: Final = ("unsigned", "bad-signature", "unknown-key", "no-command-key", "unauthenticated")
# Deployment incidents a later success of the environment ends.
_DEPLOYMENT_KINDS: Final = ("deployment-failed", "preflight-failed", "rolled-back")


def severity_of(kind: str) -> Severity:
    return SEVERITY.get(kind, "warning")


@dataclass(frozen=True, slots=True)
class IncidentStepRecord:
    """One transition of an incident: ``state`` is the edge (opened, repeated,
    acknowledged, resolved); ``by`` the operator, or ``controller``."""

    state: EdgeName
    at: float
    note: str = ""
    by: str = CONTROLLER


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    env: str
    kind: str
    severity: Severity
    state: IncidentState
    opened: float
    updated: float
    detail: str
    count: int = 1
    timeline: tuple[IncidentStepRecord, ...] = ()

    @property
    def open(self) -> bool:
        return self.state != "resolved"


@dataclass(frozen=True, slots=True)
class IncidentEdge:
    """One change of an incident, with the incident as it is after it."""

    edge: EdgeName
    incident: Incident


def _new_id() -> str:
    return f"i-{secrets.token_hex(5)}"


class IncidentBook:
    """The open incidents (restored from the store at the start) and the rules that open,
    repeat and resolve them."""

    def __init__(
        self,
        clock: Clock,
        open_incidents: Iterable[Incident] = (),
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._clock = clock
        self._new_id = new_id
        self._open: dict[tuple[str, str], Incident] = {}
        self._counts: Counter[str] = Counter()  # env -> incidents open
        for incident in open_incidents:
            if incident.open:
                self._keep("opened", incident)

    # --- what is open -----------------------------------------------------------------------
    def get(self, incident_id: str) -> Incident | None:
        """An open (or acknowledged) incident by id."""
        return next((i for i in self._open.values() if i.id == incident_id), None)

    def open_in(self, env: str) -> list[Incident]:
        return sorted((i for i in self._open.values() if i.env == env), key=lambda i: i.opened)

    def open_count(self, env: str) -> int:
        return self._counts.get(env, 0)

    def is_open(self, env: str, kind: str) -> bool:
        return (env, kind) in self._open

    def __len__(self) -> int:
        return len(self._open)

    # --- the generic edges ------------------------------------------------------------------
    def raise_(self, env: str, kind: str, detail: str, at: float | None = None) -> IncidentEdge:
        """Open an incident of ``kind`` for ``env``, or count a repeat of the open one."""
        now = self._clock.time() if at is None else at
        current = self._open.get((env, kind))
        if current is None:
            incident = Incident(
                self._new_id(), env, kind, severity_of(kind), "open", now, now, detail[:256],
                timeline=(IncidentStepRecord("opened", now, detail[:256]),),
            )  # fmt: skip
            return self._keep("opened", incident)
        timeline = current.timeline
        if len(timeline) < MAX_STEPS:
            timeline = (*timeline, IncidentStepRecord("repeated", now, detail[:256]))
        repeated = dataclasses.replace(
            current, updated=now, detail=detail[:256], count=current.count + 1, timeline=timeline
        )
        return self._keep("repeated", repeated)

    def end(self, env: str, kind: str, note: str, at: float | None = None) -> IncidentEdge | None:
        """The condition ended: the open incident of ``kind`` (if any) is resolved."""
        current = self._open.get((env, kind))
        if current is None:
            return None
        return self._resolved(current, note, CONTROLLER, at)

    def acknowledge(self, incident_id: str, note: str, by: str) -> IncidentEdge | None:
        """None when no open incident has this id."""
        current = self.get(incident_id)
        if current is None:
            return None
        now = self._clock.time()
        step = IncidentStepRecord("acknowledged", now, note[:256], by)
        acked = dataclasses.replace(
            current, state="acknowledged", updated=now, timeline=(*current.timeline, step)
        )
        return self._keep("acknowledged", acked)

    def resolve(self, incident_id: str, note: str, by: str) -> IncidentEdge | None:
        """None when no open incident has this id."""
        current = self.get(incident_id)
        return None if current is None else self._resolved(current, note, by, None)

    def forget(self, env: str, note: str) -> list[IncidentEdge]:
        """``env`` is retired or forgotten: its open incidents are resolved."""
        return [self._resolved(i, note, CONTROLLER, None) for i in self.open_in(env)]

    # --- sources ----------------------------------------------------------------------------
    def on_transition(self, transition: Transition) -> list[IncidentEdge]:
        env = transition.env
        if transition.to_status != "online":  # no heartbeats are due any more
            edges = self._ended(env, ("heartbeats-missed",), "went offline", transition.at)
            if transition.to_status == "offline" and transition.reason in _LOST:
                why = f"went offline unexpectedly ({transition.reason})"
                edges.append(self.raise_(env, "offline", why, transition.at))
            return edges
        came_back = self.end(env, "offline", "came back", transition.at)
        return [] if came_back is None else [came_back]

    def on_alert(self, edge: AlertEdge) -> list[IncidentEdge]:
        kind = str(edge.kind)
        if edge.state == "raised":
            return [self.raise_(edge.env, kind, edge.detail or f"{kind} raised", edge.at)]
        cleared = self.end(edge.env, kind, edge.detail or f"{kind} cleared", edge.at)
        return [] if cleared is None else [cleared]

    def on_event(self, event: Event, at: float) -> list[IncidentEdge]:
        """An agent's event, received at ``at``."""
        env, about = event.env, _about(event)
        match event:
            case Preflight(ok=False, checks=checks, dry_run=False):
                failing = ", ".join(c.name for c in checks if not c.ok)
                return [
                    self.raise_(env, "preflight-failed", f"{about}preflight failed: {failing}", at)
                ]
            case Failed(reason=reason):
                return [self.raise_(env, "deployment-failed", f"{about}failed: {reason}", at)]
            case RolledBack(reason=reason, restored=restored):
                why = f"{about}rolled back to {restored}" + (f": {reason}" if reason else "")
                return [self.raise_(env, "rolled-back", why, at)]
            case CommandRejected(reason=reason) if _is_refusal(reason):
                return [self.raise_(env, "command-refused", f"{about}refused: {reason}", at)]
            case Expired(reason=reason) if event.src != CONTROLLER:
                why = f"{about}expired on the agent" + (f": {reason}" if reason else "")
                return [self.raise_(env, "command-refused", why, at)]
            case Succeeded() | Running():
                return self._ended(env, _DEPLOYMENT_KINDS, f"{about}succeeded", at)
            case Accepted() | Ack() | Pong():  # a signed command taken, a ping's included
                return self._ended(env, ("command-refused",), f"{about}command taken", at)
        return []

    def on_missed(self, env: str, missed: int | None, at: float) -> list[IncidentEdge]:
        """The heartbeats ``env`` missed in its window now (None: none received)."""
        if missed is None:
            return []
        if missed >= MISSED_THRESHOLD:
            if self.is_open(env, "heartbeats-missed"):
                return []  # the same episode, still going
            why = f"{missed} heartbeats missed in the last 5 intervals"
            return [self.raise_(env, "heartbeats-missed", why, at)]
        if missed == 0:
            return self._ended(env, ("heartbeats-missed",), "heartbeats steady again", at)
        return []

    def on_login(self, env: str, refused: int, reason: str, at: float) -> list[IncidentEdge]:
        """A connection's first heartbeat: the logins the broker refused before it opens (or
        repeats) ``login-refused``; a connection that logged in at once ends it."""
        if refused > 0:
            why = f"the broker refused {refused} login(s) before this connection: {reason}"
            return [self.raise_(env, "login-refused", why.strip().rstrip(":"), at)]
        return self._ended(env, ("login-refused",), "a connection logged in at once", at)

    def credential_problem(self, env: str, detail: str, at: float | None = None) -> IncidentEdge:
        return self.raise_(env, "credential-problem", detail, at)

    # --- inside -----------------------------------------------------------------------------
    def _ended(self, env: str, kinds: Iterable[str], note: str, at: float) -> list[IncidentEdge]:
        ended = (self.end(env, kind, note, at) for kind in kinds)
        return [edge for edge in ended if edge is not None]

    def _resolved(self, current: Incident, note: str, by: str, at: float | None) -> IncidentEdge:
        now = self._clock.time() if at is None else at
        step = IncidentStepRecord("resolved", now, note[:256], by)
        resolved = dataclasses.replace(
            current, state="resolved", updated=now, timeline=(*current.timeline, step)
        )
        return self._keep("resolved", resolved)

    def _keep(self, edge: EdgeName, incident: Incident) -> IncidentEdge:
        key = (incident.env, incident.kind)
        was_open = key in self._open
        if incident.open:
            self._open[key] = incident
            self._counts[incident.env] += 0 if was_open else 1
        elif was_open:
            del self._open[key]
            self._counts[incident.env] -= 1
            if not self._counts[incident.env]:
                del self._counts[incident.env]
        return IncidentEdge(edge, incident)


def _about(event: Event) -> str:
    subject = event.dep or event.cmd
    return f"{subject}: " if subject else ""


def _is_refusal(reason: str) -> bool:
    return reason.split(":", 1)[0].strip() in _REFUSALS
