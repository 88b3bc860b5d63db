"""A rollout's state machine (pure): which targets to send, when a wave is done, when the
next one starts, when the rollout aborts, and what a rollback deploys again.

The shell (``controller/daemon/rollout_desk.py``) feeds a :class:`RolloutRun` the
deployments of its targets as they change (:meth:`RolloutRun.observe`) and asks it, on
every change and when a deadline falls due, what to do now (:meth:`RolloutRun.step`,
with the time of an injected clock). The run answers with a :class:`RolloutStep`: the targets to
send (each one's action is "deploy the rollout's workflow", the same gate and preflight
as a single deployment, or for an undeploy rollout "take the workflow of that name off",
as ``edgeplane undeploy`` does), the rollbacks to deploy, alerts to raise or clear. What
changed is taken with :meth:`RolloutRun.changes`, to be stored before anything is sent.

States. A target: ``pending`` -> ``sent`` -> ``succeeded`` | ``failed`` | ``timed-out``
| ``not-deployed`` (offline until the target timeout: queued, never sent), and a
succeeded one may end ``rolled-back``. A wave: ``pending`` -> ``running`` -> ``baking``
(every target finished; ``bake`` seconds) -> ``done``, or ``awaiting-approval`` before it
runs (``approve_each_wave``). The rollout: ``running``, ``paused``,
``awaiting-approval``, then ``succeeded``, or ``aborted`` (the failures went over the
threshold: at once, on the change that crossed it; or the operator), through
``rolling-back`` with ``rollback_on_abort``; ``failed`` when the rollback could not
restore every target.

The failures counted toward ``max_failures`` are the targets failed, timed out and (unless
``skip_offline``) not deployed, judged once ``min_executed`` targets finished.

An undeploy rollout: a target succeeds once the deployment it took back has ended (its
agent's ``cancelled``), or at once where nothing of the workflow runs or waits; one whose
agent is offline stays ``pending``, tried again on every step, until the agent is back or
the target timeout ends it ``not-deployed``. Its rollback deploys again what it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.rollout_plan import Threshold, parse_threshold
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.rpc import (
    TERMINAL_STATES,
    RolloutInfo,
    RolloutState,
    TargetInfo,
    TargetState,
    WaveInfo,
    WaveState,
)
from edgeplane.shared.workflow import Workflow

__all__ = [
    "ACTIVE_STATES",
    "FINAL_TARGET_STATES",
    "MAX_TARGETS_SHOWN",
    "RolloutAlert",
    "RolloutRecord",
    "RolloutRun",
    "RolloutSettings",
    "RolloutStep",
    "Target",
    "Wave",
    "new_run",
]

MAX_TARGETS_SHOWN: Final = 2000  # targets in one RolloutInfo (the reply size limit)
FINAL_TARGET_STATES: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed-out", "not-deployed", "rolled-back"}
)
ACTIVE_STATES: Final[frozenset[str]] = frozenset(
    {"running", "paused", "awaiting-approval", "rolling-back"}
)
_SUCCESS: Final = frozenset({"running", "succeeded"})


def _succeeded(deployment: Deployment) -> bool:
    """A job that succeeded, or a service its agent says runs (one only started, or a job
    running, is still under way)."""
    if deployment.workflow.kind == "service":
        return deployment.state == "succeeded" or (deployment.state == "running" and deployment.up)
    return deployment.state == "succeeded"


_STILL_OPEN: Final = frozenset({"running", "paused", "awaiting-approval"})


# Every end a deployment may come to but success (a state added later, such as a
# cancellation, counts too): failed, rejected, rolled-back, stopped, checked, expired.
_FAILURE: Final = TERMINAL_STATES - {"succeeded"}


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    waves: tuple[str, ...]
    max_failures: str = "10%"
    min_executed: int = 1
    bake: float = 60.0
    target_timeout: float = 300.0
    concurrency: int = 50
    rollback_on_abort: bool = False
    approve_each_wave: bool = False
    skip_offline: bool = False
    validate_first: bool = False  # each target's deployment waits for a dry run of its own


@dataclass(slots=True)
class Wave:
    index: int
    state: WaveState = "pending"
    started: float | None = None
    finished: float | None = None
    bake_until: float | None = None


@dataclass(slots=True)
class Target:
    """One environment of a rollout; ``dep`` its one deployment, ``previous`` the
    deployment of the same workflow that ran there before it."""

    rollout: str
    env: str
    wave: int
    state: TargetState = "pending"
    dep: str = ""
    reason: str = ""
    started: float | None = None
    finished: float | None = None
    previous: str = ""
    rollback: str = ""
    rollback_state: str = ""  # "", sent, done, failed, none

    @property
    def final(self) -> bool:
        return self.state in FINAL_TARGET_STATES

    def info(self) -> TargetInfo:
        return TargetInfo(
            env=self.env,
            wave=self.wave,
            state=self.state,
            dep=self.dep,
            reason=self.reason[:256],
            started=self.started,
            finished=self.finished,
            previous=self.previous,
            rollback=self.rollback,
            rollback_state=self.rollback_state,
        )


@dataclass(slots=True)
class RolloutRecord:
    """What is stored of a rollout besides its targets."""

    id: str
    workflow: Workflow | None  # None: an undeploy rollout (``undeploy`` names the workflow)
    selector: dict[str, str]
    settings: RolloutSettings
    created: float
    updated: float
    waves: list[Wave]
    state: RolloutState = "running"
    reason: str = ""
    current: int = 0
    alert_env: str = ""  # the environment its alert was raised on ("" none)
    # What each target gets: "deploy" (the workflow), or "undeploy" (the workflow named
    # ``undeploy`` is stopped and taken off the target).
    action: str = "deploy"
    undeploy: str = ""

    @property
    def workflow_name(self) -> str:
        return self.workflow.name if self.workflow is not None else self.undeploy


@dataclass(frozen=True, slots=True)
class RolloutAlert:
    env: str
    state: str  # raised, cleared
    detail: str


@dataclass(slots=True)
class RolloutStep:
    """What to do now: targets to deploy (env ids), rollbacks to deploy (env -> the
    deployment to deploy again), alert edges (in order: an abort with nothing to roll
    back raises and clears in one step), and, once it is aborted, the deployments still
    queued for offline targets, to take back (nothing more is sent)."""

    send: list[str] = field(default_factory=list)
    rollback: dict[str, str] = field(default_factory=dict)
    alerts: list[RolloutAlert] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)  # queued deployments to take back


class RolloutRun:
    def __init__(self, record: RolloutRecord, targets: Iterable[Target]) -> None:
        self.record = record
        self.targets: dict[str, Target] = {t.env: t for t in targets}
        self._threshold: Threshold = parse_threshold(record.settings.max_failures)
        self._deps: dict[str, Deployment] = {}  # the targets' deployments as last seen
        self._by_dep: dict[str, str] = {}  # deployment id -> env (the target's or rollback)
        for target in self.targets.values():
            self._index(target)
        self._changed: dict[str, Target] = {}
        self._record_changed = False
        self._dropped: set[str] = set()  # queued deployments the shell was told to drop

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def active(self) -> bool:
        return self.record.state in ACTIVE_STATES

    @property
    def settled(self) -> bool:
        """Over, and nothing of it in flight any more (an aborted rollout's targets that
        were sent still end: succeeded, failed or timed out)."""
        return not self.active and not any(t.state == "sent" for t in self.targets.values())

    def _index(self, target: Target) -> None:
        for dep in (target.dep, target.rollback):
            if dep:
                self._by_dep[dep] = target.env

    def watches(self, dep: str) -> bool:
        return dep in self._by_dep

    def deployments(self) -> list[str]:
        """The deployments whose changes matter (targets in flight, rollbacks)."""
        found = [t.dep for t in self.targets.values() if t.dep]
        return found + [t.rollback for t in self.targets.values() if t.rollback]

    # --- what changed, for the store ------------------------------------------------------
    def changes(self) -> tuple[RolloutRecord | None, list[Target]]:
        record = dataclasses.replace(self.record) if self._record_changed else None
        targets = [dataclasses.replace(t) for t in self._changed.values()]
        self._changed.clear()
        self._record_changed = False
        return record, targets

    def mark_all_changed(self) -> None:
        """Everything is to be stored (a new rollout)."""
        self._record_changed = True
        self._changed.update(self.targets)

    def _touch(self, now: float, target: Target | None = None) -> None:
        if target is not None:
            self._changed[target.env] = target
        self.record.updated = now
        self._record_changed = True

    def _set_state(self, state: RolloutState, reason: str, now: float) -> None:
        self.record.state = state
        self.record.reason = reason
        self._touch(now)

    # --- inputs ---------------------------------------------------------------------------
    def observe(self, deployment: Deployment, now: float) -> bool:
        """A deployment of this rollout as it is now; whether a target moved."""
        env = self._by_dep.get(deployment.id)
        if env is None:
            return False
        self._deps[deployment.id] = deployment
        target = self.targets[env]
        if deployment.id == target.rollback:
            return self._observe_rollback(target, deployment, now)
        if deployment.id != target.dep:
            return False
        state = deployment.state
        if target.state == "succeeded" and not target.rollback_state:
            return self._observe_after_success(target, deployment, now)
        if target.state != "sent":
            return False
        if self.record.action == "undeploy":
            return self._observe_undeploy(target, deployment, now)
        if _succeeded(deployment):
            self._finish(target, "succeeded", "", now)
        elif state in ("expired", "cancelled") and not deployment.cmd:
            why = "offline until the target timeout"
            if state == "cancelled":
                why = "offline when the rollout ended: its queued deployment was dropped"
            self._finish(target, "not-deployed", why, now)
        elif state in _FAILURE:
            self._finish(target, "failed", f"{state}: {deployment.reason}".rstrip(": "), now)
        else:
            return False
        return True

    def _observe_after_success(self, target: Target, deployment: Deployment, now: float) -> bool:
        """A service that ran, and failed while the rollout goes on (in its bake, or
        while later waves run): a failure after all. Once the rollout is over, or when it
        is the rollout's own rollback that replaced it, it stays as it was."""
        if self.record.action != "deploy" or self.record.state not in _STILL_OPEN:
            return False
        if deployment.state not in ("failed", "rolled-back"):
            return False
        why = f"{deployment.state} after it ran: {deployment.reason}".rstrip(": ")
        self._finish(target, "failed", why, now)
        return True

    def _observe_undeploy(self, target: Target, deployment: Deployment, now: float) -> bool:
        """An undeploy succeeded once the deployment it took back has ended: cancelled by
        its agent, or ended by itself on the way (either way nothing of it runs)."""
        state = deployment.state
        if state not in TERMINAL_STATES:
            return False
        why = "" if state == "cancelled" else f"it ended {state} before it was stopped"
        self._finish(target, "succeeded", why, now)
        return True

    def _observe_rollback(self, target: Target, deployment: Deployment, now: float) -> bool:
        if target.rollback_state != "sent":
            return False
        if _succeeded(deployment):
            target.rollback_state = "done"
            target.state = "rolled-back"
            target.reason = f"returned to {deployment.workflow.version} ({target.previous})"
        elif deployment.state == "expired" and not deployment.cmd:
            target.rollback_state = "failed"
            target.reason = "rollback: offline until the target timeout"
        elif deployment.state in _FAILURE:
            target.rollback_state = "failed"
            target.reason = f"rollback {deployment.state}: {deployment.reason}"
        else:
            return False
        self._touch(now, target)
        return True

    def may_send(self, env: str) -> bool:
        """Whether ``env`` may be sent now (a step said so, and nothing changed since: no
        abort, no pause in between)."""
        target = self.targets.get(env)
        return self.record.state == "running" and target is not None and target.state == "pending"

    def may_roll_back(self, env: str) -> bool:
        target = self.targets.get(env)
        return (
            self.record.state == "rolling-back" and target is not None and not target.rollback_state
        )

    def sent(self, env: str, dep: str, previous: str, now: float) -> None:
        """``env``'s deployment ``dep`` is made (in the same writes as this change)."""
        target = self.targets[env]
        target.state, target.dep, target.previous, target.started = "sent", dep, previous, now
        self._index(target)
        self._touch(now, target)

    def refused(self, env: str, reason: str, now: float) -> None:
        """The gate refused ``env``'s deployment: a failure like any other."""
        target = self.targets[env]
        target.started = now
        self._finish(target, "failed", f"refused: {reason}", now)

    def nothing_to_do(self, env: str, reason: str, now: float) -> None:
        """An undeploy target where nothing of the workflow runs: done as it is, and
        nothing to roll back."""
        target = self.targets[env]
        target.started = target.started if target.started is not None else now
        target.previous = ""
        self._finish(target, "succeeded", reason, now)

    def waiting(self, env: str, reason: str, now: float) -> None:
        """An undeploy target whose agent is offline: it stays pending (tried again on
        every step) until it comes back or ``target_timeout`` after the first try."""
        target = self.targets[env]
        if target.started is None or target.reason != reason:
            target.started = target.started if target.started is not None else now
            target.reason = reason
            self._touch(now, target)

    def rollback_sent(self, env: str, dep: str, now: float) -> None:
        target = self.targets[env]
        target.rollback, target.rollback_state = dep, "sent"
        self._index(target)
        self._touch(now, target)

    def rollback_refused(self, env: str, reason: str, now: float) -> None:
        target = self.targets[env]
        target.rollback_state = "failed"
        target.reason = f"rollback refused: {reason}"
        self._touch(now, target)

    def add(self, env: str, now: float) -> bool:
        """An environment that matches the selector and joined while the rollout runs: it
        goes into the last wave (not once the rollout is over or aborting)."""
        if env in self.targets or self.record.state not in (
            "running",
            "paused",
            "awaiting-approval",
        ):
            return False
        target = Target(self.id, env, len(self.record.waves) - 1)
        self.targets[env] = target
        self._touch(now, target)
        return True

    def _finish(self, target: Target, state: TargetState, reason: str, now: float) -> None:
        target.state, target.reason, target.finished = state, reason, now
        self._touch(now, target)

    # --- the operator ---------------------------------------------------------------------
    def act(self, action: str, now: float) -> None:
        state = self.record.state
        if action == "pause":
            if state not in ("running", "awaiting-approval"):
                raise self._conflict(action)
            self._set_state("paused", "paused by the operator", now)
        elif action == "resume":
            if state != "paused":
                raise self._conflict(action)
            waiting = self._wave().state == "awaiting-approval"
            self._set_state("awaiting-approval" if waiting else "running", "", now)
        elif action == "approve":
            if state != "awaiting-approval":
                raise self._conflict(action)
            self._start_wave(self.record.current, now)
            self._set_state("running", "", now)
        elif action == "abort":
            if state not in ("running", "paused", "awaiting-approval"):
                raise self._conflict(action)
            self._abort("aborted by the operator", now)
            self.record.alert_env = ""  # the operator's own choice: no alert
        else:
            raise RequestRefused("invalid", f"unknown rollout action {action!r}")

    def _conflict(self, action: str) -> RequestRefused:
        return RequestRefused(
            "conflict", f"rollout {self.id} is {self.record.state}: cannot {action} it"
        )

    # --- counting -------------------------------------------------------------------------
    def _is_failure(self, target: Target) -> bool:
        if target.state in ("failed", "timed-out"):
            return True
        return target.state == "not-deployed" and not self.record.settings.skip_offline

    def tally(self) -> tuple[int, int]:
        """(failures, finished) over every target."""
        finished = [t for t in self.targets.values() if t.final]
        return sum(1 for t in finished if self._is_failure(t)), len(finished)

    def _wave(self) -> Wave:
        return self.record.waves[self.record.current]

    def _of_wave(self, index: int) -> list[Target]:
        return [t for t in self.targets.values() if t.wave == index]

    # --- deciding -------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When :meth:`step` has something to do without any other input."""
        if self.settled:
            return None
        deadlines = [
            t.started + self.record.settings.target_timeout
            for t in self.targets.values()
            if t.state in ("sent", "pending") and t.started is not None
        ]
        wave = self._wave()
        if self.active and wave.state == "baking" and wave.bake_until is not None:
            deadlines.append(wave.bake_until)
        return min(deadlines, default=None)

    def step(self, now: float) -> RolloutStep:
        step = RolloutStep()
        if self.settled:
            return step
        self._time_out(now)
        if self.active:
            self._judge(now, step)
        if self.record.state not in _STILL_OPEN:
            step.drop = self._queued_to_drop()
        return step

    def _judge(self, now: float, step: RolloutStep) -> None:
        if self.record.state != "rolling-back":
            failures, finished = self.tally()
            settings = self.record.settings
            if finished >= settings.min_executed and self._threshold.exceeded(failures, finished):
                why = (
                    f"{failures} of {finished} finished targets failed, over --max-failures "
                    f"{settings.max_failures}"
                )
                step.alerts.append(self._abort(why, now))
        if self.record.state == "running":
            self._advance(now, step)
        if self.record.state == "rolling-back":
            self._roll_back(now, step)

    def _queued_to_drop(self) -> list[str]:
        found = []
        for target in self.targets.values():
            deployment = self._deps.get(target.dep)
            if target.state != "sent" or deployment is None or deployment.state != "queued":
                continue
            if target.dep not in self._dropped:
                self._dropped.add(target.dep)
                found.append(target.dep)
        return sorted(found)

    def _time_out(self, now: float) -> None:
        timeout = self.record.settings.target_timeout
        for target in self.targets.values():
            if target.state not in ("sent", "pending") or target.started is None:
                continue
            if now < target.started + timeout:
                continue
            if target.state == "pending":  # an undeploy target whose agent stayed away
                self._finish(target, "not-deployed", "offline until the target timeout", now)
                continue
            deployment = self._deps.get(target.dep)
            if deployment is not None and deployment.state == "queued":
                self._finish(target, "not-deployed", "offline until the target timeout", now)
            else:
                why = f"not done within --target-timeout {timeout:g}s"
                state = "" if deployment is None else f" (deployment {deployment.state})"
                self._finish(target, "timed-out", why + state, now)

    def _abort(self, why: str, now: float) -> RolloutAlert:
        record = self.record
        for wave in record.waves:
            if wave.state == "baking":
                wave.state, wave.finished = "done", now
        rolling = record.settings.rollback_on_abort
        self._set_state("rolling-back" if rolling else "aborted", why, now)
        failed = [t for t in self.targets.values() if self._is_failure(t)]
        failed.sort(key=lambda t: (t.finished or 0.0, t.env))
        env = failed[-1].env if failed else min(self.targets, default="")
        record.alert_env = env
        return RolloutAlert(env, "raised", f"rollout {record.id} aborted: {why}")

    def _start_wave(self, index: int, now: float) -> None:
        wave = self.record.waves[index]
        wave.state, wave.started = "running", now
        self.record.current = index
        self._touch(now)

    def _advance(self, now: float, step: RolloutStep) -> None:
        record = self.record
        wave = self._wave()
        targets = self._of_wave(wave.index)
        if wave.state == "pending":
            self._start_wave(wave.index, now)
        if wave.state == "baking" and any(not t.final for t in targets):
            wave.state, wave.bake_until = "running", None  # one joined: bake it again after
            self._touch(now)
        if wave.state == "running":
            if all(t.final for t in targets):
                wave.state = "baking"
                wave.bake_until = now + record.settings.bake
                self._touch(now)
            else:
                # an undeploy target waiting for its agent is tried again on every step
                # and holds its place, as a queued deployment to an offline one does
                waiting = sorted(
                    t.env for t in targets if t.state == "pending" and t.started is not None
                )
                in_flight = sum(1 for t in targets if t.state == "sent") + len(waiting)
                room = max(0, record.settings.concurrency - in_flight)
                pending = sorted(
                    t.env for t in targets if t.state == "pending" and t.started is None
                )
                step.send.extend(waiting + pending[:room])
                return
        if wave.state == "baking" and wave.bake_until is not None and now >= wave.bake_until:
            wave.state, wave.finished = "done", now
            self._touch(now)
            if wave.index + 1 >= len(record.waves):
                self._set_state("succeeded", "", now)
                return
            record.current = wave.index + 1
            if record.settings.approve_each_wave:
                record.waves[record.current].state = "awaiting-approval"
                self._set_state("awaiting-approval", f"wave {record.current + 1} waits", now)
                return
            self._start_wave(record.current, now)
            self._advance(now, step)

    def _roll_back(self, now: float, step: RolloutStep) -> None:
        """Every target the rollout changed goes back to what ran there before; the rest
        of the rollout waits for those still in flight."""
        waiting = False
        for target in sorted(self.targets.values(), key=lambda t: t.env):
            if target.state == "sent":
                waiting = True  # it may yet change the target: wait for its end
                continue
            if not self._changed_it(target) or target.rollback_state:
                waiting = waiting or target.rollback_state == "sent"
                continue
            if not target.previous:
                target.rollback_state = "none"
                target.reason = "nothing to roll back to (nothing of this workflow ran here before)"
                self._touch(now, target)
                continue
            step.rollback[target.env] = target.previous
            waiting = True
        if waiting:
            return
        if self.record.alert_env:
            env, self.record.alert_env = self.record.alert_env, ""
            detail = f"rollout {self.id}: rollback over"
            step.alerts.append(RolloutAlert(env, "cleared", detail))
        bad = [t.env for t in self.targets.values() if t.rollback_state == "failed"]
        done = sum(1 for t in self.targets.values() if t.rollback_state == "done")
        if bad:
            why = f"{self.record.reason}; rollback failed on {len(bad)}: {', '.join(bad[:5])}"
            self._set_state("failed", why, now)
        elif done:
            self._set_state("aborted", f"{self.record.reason}; {done} rolled back", now)
        else:
            self._set_state("aborted", f"{self.record.reason}; nothing to roll back", now)

    def _changed_it(self, target: Target) -> bool:
        if target.state == "succeeded":
            return True
        deployment = self._deps.get(target.dep)
        if target.state != "timed-out" or deployment is None:
            return False
        if self.record.action == "undeploy":
            return deployment.state in TERMINAL_STATES
        return deployment.state in _SUCCESS

    # --- reading --------------------------------------------------------------------------
    def info(self, *, with_targets: bool = True, limit: int = MAX_TARGETS_SHOWN) -> RolloutInfo:
        """The rollout for the operator: its targets by wave and id, at most ``limit`` of
        them (a reply has a size limit; ``total`` says how many there are)."""
        record, settings = self.record, self.record.settings
        counts: dict[str, int] = {}
        for target in self.targets.values():
            counts[target.state] = counts.get(target.state, 0) + 1
        failures, finished = self.tally()
        sizes = {w.index: 0 for w in record.waves}
        for target in self.targets.values():
            sizes[target.wave] = sizes.get(target.wave, 0) + 1
        targets = sorted(self.targets.values(), key=lambda t: (t.wave, t.env))
        return RolloutInfo(
            id=record.id,
            workflow=record.workflow_name,
            version="" if record.workflow is None else record.workflow.version,
            action="undeploy" if record.action == "undeploy" else "deploy",
            selector=dict(record.selector),
            state=record.state,
            reason=record.reason[:256],
            created=record.created,
            updated=record.updated,
            waves_spec=list(settings.waves),
            max_failures=settings.max_failures,
            min_executed=settings.min_executed,
            bake=settings.bake,
            target_timeout=settings.target_timeout,
            concurrency=settings.concurrency,
            rollback_on_abort=settings.rollback_on_abort,
            approve_each_wave=settings.approve_each_wave,
            skip_offline=settings.skip_offline,
            wave=record.current,
            waves=[
                WaveInfo(
                    index=w.index,
                    state=w.state,
                    size=sizes.get(w.index, 0),
                    started=w.started,
                    finished=w.finished,
                    bake_until=w.bake_until,
                )
                for w in record.waves
            ],
            counts=counts,
            failures=failures,
            finished=finished,
            total=len(self.targets),
            targets=[t.info() for t in targets[:limit]] if with_targets else [],
        )


def new_run(
    rollout: str,
    workflow: Workflow | str,
    selector: Mapping[str, str],
    settings: RolloutSettings,
    waves: list[list[str]],
    now: float,
) -> RolloutRun:
    """A new rollout over ``waves`` (each wave's environment ids), nothing sent yet: of
    ``workflow``, or (a name) taking the workflow of that name off every target."""
    undeploy = workflow if isinstance(workflow, str) else ""
    record = RolloutRecord(
        id=rollout,
        workflow=None if isinstance(workflow, str) else workflow,
        selector=dict(selector),
        settings=settings,
        created=now,
        updated=now,
        waves=[Wave(index) for index in range(len(waves))],
        action="undeploy" if undeploy else "deploy",
        undeploy=undeploy,
    )
    targets = [Target(rollout, env, index) for index, envs in enumerate(waves) for env in envs]
    run = RolloutRun(record, targets)
    run.mark_all_changed()
    return run
