"""Rollouts in the controller: the shell around :mod:`edgeplane.controller.core.rollout`.

The desk keeps every rollout in memory (restored from the store at the start) and drives
the active ones from a task of the presence link (``rollouts``): it wakes on every change
of a deployment of theirs (the publisher hands it every batch of effects, so a failure is
judged the moment it is folded, not on a poll), when an environment record is written (one
that matches joins the last wave) and when a deadline falls due (a bake, a target
timeout). Each turn asks the core what to do and does it: a target's deployment is made
through :meth:`Operations.deploy <edgeplane.controller.core.operations.Operations.deploy>`
(an undeploy rollout's through :meth:`Operations.undeploy`, tried again while the agent
is offline)
(the same gate and preflight as a single deployment, ``when_online`` with the target
timeout as its TTL, so an offline target waits), and stored in the same writes as the
target that names it: a controller killed at any point finds either both or neither, so
it never deploys a target twice. An abort raises an alert (kind ``rollout-aborted``) on
the environment whose failure crossed the threshold, through the store like every alert.

Operator requests (``rollout-start``, ``-list``, ``-show``, ``-action``) are answered by
:meth:`RolloutDesk.start`, :meth:`list`, :meth:`show` and :meth:`act`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Final

import msgspec
import structlog

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.operations import Effects, Operations, new_id
from edgeplane.controller.core.presence import Judgement
from edgeplane.controller.core.records import Writes
from edgeplane.controller.core.rollout import (
    RolloutAlert,
    RolloutRun,
    RolloutSettings,
    RolloutStep,
    new_run,
)
from edgeplane.controller.core.rollout_plan import (
    check_selector,
    matches,
    parse_threshold,
    parse_waves,
    plan_waves,
    selector_text,
)
from edgeplane.controller.daemon.publisher import Publisher
from edgeplane.controller.daemon.store import Store
from edgeplane.shared.clock import Clock
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import AlertState
from edgeplane.shared.rpc import DeployRequest, RolloutInfo, RolloutStart
from edgeplane.shared.workflow import Workflow, is_name

__all__ = ["ALERT_KIND", "RolloutDesk"]

ALERT_KIND: Final = "rollout-aborted"
IDLE_WAIT: Final = 1.0  # seconds between turns when nothing wakes the desk

log: Final = structlog.get_logger("controller")


class RolloutDesk:
    def __init__(
        self,
        operations: Operations,
        store: Store,
        publisher: Publisher,
        clock: Clock,
        synced: asyncio.Event,
    ) -> None:
        self._ops = operations
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self._synced = synced
        self._runs: dict[str, RolloutRun] = {}
        self._wake = asyncio.Event()
        self._joined = True  # records changed: look for environments that join

    # --- start ----------------------------------------------------------------------------
    async def restore(self) -> None:
        """Every stored rollout; the active ones with their deployments as they are now."""
        for record in await self._store.rollouts():
            targets = await self._store.rollout_targets(record.id)
            run = RolloutRun(record, targets)
            self._runs[record.id] = run
            if run.settled:
                continue
            for dep in run.deployments():
                deployment = self._ops.book.get(dep) or await self._store.deployment(dep)
                if deployment is not None:
                    run.observe(deployment, self._clock.time())
            # what observe moved is stored on the first turn
        log.info("rollouts restored", active=sum(1 for r in self._runs.values() if r.active))

    # --- fed by the publisher -------------------------------------------------------------
    def note(self, effects: Effects) -> None:
        """Every batch the controller carries out: deployments of an active rollout that
        moved, and records written (an environment may join), wake the desk."""
        writes = effects.writes
        if writes.records:
            self._joined = True
            self._wake.set()
        if not writes.deployments:
            return
        now = self._clock.time()
        for run in self._runs.values():
            if run.settled:
                continue
            for deployment in writes.deployments:
                if run.watches(deployment.id) and run.observe(deployment, now):
                    self._wake.set()

    # --- the task -------------------------------------------------------------------------
    async def serve(self) -> None:
        """Drive the active rollouts until cancelled, once the retained state is in."""
        await self._synced.wait()
        while True:
            await self._turn()
            wait = self._next_wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    def _next_wait(self) -> float:
        now = self._clock.time()
        deadlines = [d for r in self._runs.values() if (d := r.next_deadline()) is not None]
        if not deadlines:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, min(deadlines) - now))

    async def _turn(self) -> None:
        joined, self._joined = self._joined, False
        for run in [r for r in self._runs.values() if not r.settled]:
            if joined and run.active:
                self._join(run)
            try:
                await self._advance(run)
            except Exception:  # one rollout's bug must not stop the others, or the desk
                log.exception("rollout turn failed", rollout=run.id)

    def _join(self, run: RolloutRun) -> None:
        now = self._clock.time()
        for record in self._ops.registry:
            joins = record.id not in run.targets and matches(run.record.selector, record)
            if joins and run.add(record.id, now):
                log.info("environment joins rollout", rollout=run.id, env=record.id)

    async def _advance(self, run: RolloutRun) -> None:
        for _ in range(100):  # a refusal may move it on again (at most every target once)
            now = self._clock.time()
            step = run.step(now)
            previous = {
                env: await self._store.previous_deployment(env, run.record.workflow_name, now)
                for env in step.send
                if run.record.action == "deploy"
            }
            rollbacks = {
                env: await self._store.deployment(dep) for env, dep in step.rollback.items()
            }
            effects = Effects(writes=Writes(urgent=True))
            moved = self._drop(run, step.drop, effects)
            moved = self._send(run, step, previous, effects) or moved
            moved = self._roll_back(run, rollbacks, effects) or moved
            record, targets = run.changes()
            if record is not None:
                effects.writes.rollouts.append(record)
            effects.writes.rollout_targets.extend(targets)
            judgement = self._alerts(step.alerts) if step.alerts else None
            if any(alert.state == "raised" for alert in step.alerts):
                log.warning("rollout aborted", rollout=run.id, reason=run.record.reason)
            if effects.writes or effects.outgoing or judgement is not None:
                await self._publisher.carry_out(judgement, effects)
            if not moved:
                return

    def _send(
        self, run: RolloutRun, step: RolloutStep, previous: dict[str, str], effects: Effects
    ) -> bool:
        moved = False
        timeout = run.record.settings.target_timeout
        for env in step.send:
            if not run.may_send(env):  # a failure or a pause came while we looked up
                continue
            now = self._clock.time()
            workflow = run.record.workflow
            if workflow is None:
                moved = self._undeploy(run, env, effects) or moved
                continue
            request = DeployRequest(
                env=env,
                workflow=workflow,
                when_online=True,
                ttl=timeout,
                validate_first=run.record.settings.validate_first,
            )
            try:
                info, made = self._ops.deploy(request)
            except RequestRefused as exc:  # the gate's, or a critical workflow's checks
                run.refused(env, exc.message, now)
                moved = True
                continue
            run.sent(env, info.id, previous.get(env, ""), now)
            effects.extend(made)
            for deployment in made.writes.deployments:
                moved = run.observe(deployment, now) or moved
        return moved

    def _drop(self, run: RolloutRun, deps: list[str], effects: Effects) -> bool:
        """An aborted rollout's deployments still queued for offline targets: taken back
        (``cancelled``, never sent), so that nothing of it reaches them later."""
        moved = False
        now = self._clock.time()
        for dep in deps:
            try:
                why = f"dropped before it was sent: rollout {run.id} is {run.record.state}"
                _, made = self._ops.cancel(dep, why=why)
            except RequestRefused as exc:  # sent or ended meanwhile: it goes its own way
                log.info("rollout: queued deployment not dropped", dep=dep, why=exc.message)
                continue
            effects.extend(made)
            for deployment in made.writes.deployments:
                moved = run.observe(deployment, now) or moved
        return moved

    def _undeploy(self, run: RolloutRun, env: str, effects: Effects) -> bool:
        """Take the rollout's workflow off ``env`` as ``edgeplane undeploy`` does; what it
        stops is what a rollback deploys again."""
        now = self._clock.time()
        try:
            result, made = self._ops.undeploy(env, run.record.undeploy)
        except RequestRefused as exc:
            if exc.code == "not-running":
                run.nothing_to_do(env, "nothing of it ran here", now)
            elif exc.code == "offline":
                run.waiting(env, "waiting for its agent to come online", now)
                return False
            else:
                run.refused(env, exc.message, now)
            return True
        stopped = result.deployment.id if result.cmd else ""
        run.sent(env, result.deployment.id, stopped, now)
        effects.extend(made)
        moved = True
        for deployment in made.writes.deployments:
            moved = run.observe(deployment, now) or moved
        return moved

    def _roll_back(
        self, run: RolloutRun, rollbacks: dict[str, Deployment | None], effects: Effects
    ) -> bool:
        moved = False
        timeout = run.record.settings.target_timeout
        for env, previous in rollbacks.items():
            if not run.may_roll_back(env):
                continue
            now = self._clock.time()
            if previous is None:
                run.rollback_refused(env, "the previous deployment is not in the store", now)
                moved = True
                continue
            request = DeployRequest(
                env=env, workflow=previous.workflow, when_online=True, ttl=timeout
            )
            try:
                info, made = self._ops.deploy(request)
            except RequestRefused as exc:
                run.rollback_refused(env, exc.message, now)
                moved = True
                continue
            run.rollback_sent(env, info.id, now)
            effects.extend(made)
            for deployment in made.writes.deployments:
                moved = run.observe(deployment, now) or moved
        return moved

    def _alerts(self, alerts: list[RolloutAlert]) -> Judgement:
        edges = []
        for alert in alerts:
            state: AlertState = "raised" if alert.state == "raised" else "cleared"
            at = self._clock.time()
            edges.append(AlertEdge(alert.env, ALERT_KIND, state, at, alert.detail[:256]))
        return Judgement(alerts=edges)

    # --- requests -------------------------------------------------------------------------
    def start(self, request: RolloutStart) -> tuple[RolloutInfo, Effects]:
        subject = _subject(request)
        selector = check_selector(request.selector)
        waves = parse_waves(request.waves)
        parse_threshold(request.max_failures)
        envs = [r.id for r in self._ops.registry if matches(selector, r)]
        if not envs:
            raise RequestRefused(
                "no-match",
                f"no environment matches --selector {selector_text(selector)} (it matches "
                "stage, location, purpose, project and labels of active records)",
            )
        settings = RolloutSettings(
            waves=waves,
            max_failures=request.max_failures.strip(),
            min_executed=request.min_executed,
            bake=request.bake,
            target_timeout=request.target_timeout,
            concurrency=request.concurrency,
            rollback_on_abort=request.rollback_on_abort,
            approve_each_wave=request.approve_each_wave,
            skip_offline=request.skip_offline,
            validate_first=request.validate_first and not request.dry_run,
        )
        self._refuse_overlap(subject, envs)
        now = self._clock.time()
        planned = plan_waves(envs, waves)
        if request.dry_run:
            return self._dry_run(subject, selector, settings, planned)
        run = new_run(new_id("r"), subject, selector, settings, planned, now)
        self._runs[run.id] = run
        log.info("rollout started", rollout=run.id, targets=len(envs), waves=len(planned))
        self._wake.set()
        return run.info(), self._stored(run)

    def _refuse_overlap(self, subject: Workflow | str, envs: list[str]) -> None:
        """Two rollouts of one workflow on the same environments would undo each other
        (an undeploy behind a deploy waiting for approval): refused while one is active."""
        name = subject if isinstance(subject, str) else subject.name
        for run in self._runs.values():
            if not run.active or run.record.workflow_name != name:
                continue
            shared = [env for env in envs if env in run.targets]
            if shared:
                raise RequestRefused(
                    "conflict",
                    f"rollout {run.id} of {name} is {run.record.state} on {len(shared)} of "
                    f"these environments ({', '.join(shared[:3])}"
                    f"{', ...' if len(shared) > 3 else ''}): let it end, or abort it first",
                )

    def _dry_run(
        self,
        subject: Workflow | str,
        selector: dict[str, str],
        settings: RolloutSettings,
        planned: list[list[str]],
    ) -> tuple[RolloutInfo, Effects]:
        """The plan, and a dry-run deployment (the preflight) for each target of the first
        wave (an undeploy has no preflight: the plan only); nothing of it is stored."""
        now = self._clock.time()
        run = new_run("dry-run", subject, selector, settings, planned, now)
        effects = Effects()
        if isinstance(subject, str):
            return _as_dry_run(run.info()), effects
        for env in planned[0]:
            try:
                deployed, made = self._ops.deploy(
                    DeployRequest(env=env, workflow=subject, dry_run=True)
                )
            except RequestRefused as exc:
                why = exc.message
                if exc.code == "offline":  # the rollout would queue it, as the gate says not
                    why = (
                        f"{env} is offline: the rollout would wait for it up to "
                        f"--target-timeout ({settings.target_timeout:g}s); no preflight now"
                    )
                run.refused(env, why, now)
                continue
            run.sent(env, deployed.id, "", now)
            effects.extend(made)
        return _as_dry_run(run.info()), effects

    def list(self, limit: int) -> list[RolloutInfo]:
        runs = sorted(self._runs.values(), key=lambda r: (r.record.created, r.id), reverse=True)
        return [run.info(with_targets=False) for run in runs[:limit]]

    def show(self, rollout: str) -> RolloutInfo:
        return self._get(rollout).info()

    def act(self, rollout: str, action: str) -> tuple[RolloutInfo, Effects]:
        run = self._get(rollout)
        run.act(action, self._clock.time())
        log.info("rollout action", rollout=rollout, action=action, state=run.record.state)
        self._wake.set()
        return run.info(), self._stored(run)

    def _get(self, rollout: str) -> RolloutRun:
        run = self._runs.get(rollout)
        if run is None:
            known = ", ".join(list(self._runs)[-5:]) or "none yet"
            raise RequestRefused("not-found", f"no rollout {rollout!r} (latest: {known})")
        return run

    @staticmethod
    def _stored(run: RolloutRun) -> Effects:
        record, targets = run.changes()
        writes = Writes(rollouts=[] if record is None else [record], urgent=True)
        writes.rollout_targets.extend(targets)
        return Effects(writes=writes)

    @property
    def runs(self) -> Iterable[RolloutRun]:
        return self._runs.values()


def _subject(request: RolloutStart) -> Workflow | str:
    """The workflow to deploy, or the name of the one to take off."""
    if request.workflow is not None and request.undeploy:
        raise RequestRefused("invalid", "a rollout deploys a workflow or undeploys one, not both")
    if request.workflow is not None:
        return request.workflow
    name = request.undeploy.strip()
    if not name:
        raise RequestRefused("invalid", "a rollout needs a workflow (FILE) or --undeploy NAME")
    if not is_name(name):
        raise RequestRefused("invalid", f"--undeploy {name!r} is not a workflow name")
    return name


def _as_dry_run(info: RolloutInfo) -> RolloutInfo:
    return msgspec.structs.replace(info, dry_run=True, reason="dry run: nothing was stored")
