"""One deployment, on the executor's worker thread, reported event by event:

``accepted`` -> ``preflight`` (every check) -> when a check failed: ``rejected`` ("preflight
failed: ..."), and nothing runs; a dry run ends with its ``preflight``. Otherwise
``started``, ``step-started`` / ``step-finished`` per step, then ``succeeded`` (a job) or
``running`` (a service whose last step survived its start-up grace), or ``failed`` (reason
and step). A command past its ``expires`` when the worker takes it, or when its steps
would start, gets ``expired`` instead.

Deploying workflow W while an earlier deployment of W runs as a service stops the old one
(``stopped``, "replaced by <dep>") before the new one's steps; when the new one fails to
start (a step fails, or the service dies within its first grace) the old one is started
again: ``failed`` then ``rolled-back``.

A ``cancel`` command (:mod:`.canceller`) marks a deployment the worker has not started
yet, or stops the job's step: the worker then reports ``cancelled`` (naming the cancel
command) instead of going on, and a service it replaced is started again (``running``),
unless the cancel was an undeploy of the whole workflow. A cancel that came too late (the
deployment ended first) is answered ``rejected``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.keeper import ServiceKeeper
from edgeplane.edge_agent.execution.launcher import StepLauncher
from edgeplane.edge_agent.execution.preflight import (
    PreflightContext,
    clip,
    run_preflight,
    summarize_failures,
)
from edgeplane.edge_agent.execution.runner import StepResult
from edgeplane.edge_agent.execution.workdirs import Workdirs
from edgeplane.edge_agent.execution.workload import (
    CancelMark,
    Interrupted,
    Job,
    Service,
    Workload,
)
from edgeplane.shared.clock import Clock
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import (
    Accepted,
    Cancelled,
    CommandRejected,
    Deploy,
    Expired,
    Failed,
    Preflight,
    RolledBack,
    Running,
    Started,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)
from edgeplane.shared.workflow import Step

__all__ = ["DEPLOYMENT_ID", "Deployer"]

DEPLOYMENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

log = get_logger(__name__)

Failure = tuple[str, str]  # (reason, step) of a deployment that failed


@dataclass(frozen=True)
class _Cancelled:
    """The steps ended because of a cancel (reported already)."""

    mark: CancelMark


class Deployer:
    def __init__(
        self,
        *,
        workload: Workload,
        workdirs: Workdirs,
        launcher: StepLauncher,
        keeper: ServiceKeeper,
        sink: EventSink,
        preflight_context: Callable[[], PreflightContext],
        clock: Clock,
    ) -> None:
        self._workload = workload
        self._workdirs = workdirs
        self._launcher = launcher
        self._keeper = keeper
        self._sink = sink
        self._preflight_context = preflight_context
        self._clock = clock

    def deploy(self, cmd: Deploy) -> None:
        try:
            self._deploy(cmd)
        finally:
            late = self._workload.settle(cmd.dep)
            if late is not None:
                reason = f"deployment {cmd.dep} ended before it could be cancelled"
                self._emit(CommandRejected, cmd=late.cmd, reason=reason)

    def _deploy(self, cmd: Deploy) -> None:
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        workflow = cmd.workflow
        if not self._checked_before_start(cmd):
            return
        workdir = self._workdirs.make(cmd, self._workload.in_use)
        job = self._workload.new_job(cmd.dep, cmd.id, workflow.name)
        refusal, old = self._workload.start_job(job)
        if refusal:
            if not self._cancelled(cmd, "before it started"):
                self._emit(CommandRejected, **ids, reason=clip(refusal))
            return
        self._emit(Started, **ids, workflow=workflow.name, version=workflow.version)
        if old is not None:
            old.supervisor.stop()
            self._emit(
                Stopped, cmd=old.cmd, dep=old.dep, reason=f"replaced by {cmd.dep}", by=cmd.dep
            )
            self._workload.save()
        failure = self._run_steps(cmd, job, workdir)
        if isinstance(failure, _Cancelled):
            if old is not None and not failure.mark.undeploy:
                self._restore(old)
            return
        if failure is None:
            return
        reason, step = failure
        self._emit(Failed, **ids, reason=clip(reason), step=step)
        if old is not None:
            self._roll_back(cmd, old, reason)

    def _cancelled(self, cmd: Deploy, when: str) -> CancelMark | None:
        """Report ``cancelled`` when a cancel came for ``cmd``'s deployment (its mark)."""
        mark = self._workload.take_cancel(cmd.dep)
        if mark is not None:
            what = "undeployed" if mark.undeploy else "cancelled"
            reason = f"{what} by the operator {when}"
            self._emit(Cancelled, cmd=mark.cmd, dep=cmd.dep, reason=reason)
        return mark

    def _restore(self, old: Service) -> None:
        """The service ``old``, stopped for a deployment that was cancelled, runs again."""
        problem = self._keeper.start_again(old.dep, old.cmd, old.workflow)
        if problem:
            self._emit(Failed, cmd=old.cmd, dep=old.dep, reason=clip(f"not restored: {problem}"))
        else:
            self._emit(Running, cmd=old.cmd, dep=old.dep)

    def _checked_before_start(self, cmd: Deploy) -> bool:
        """Refusal, expiry, acceptance and preflight: True when the steps may start."""
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        workflow = cmd.workflow
        refusal = self._refusal(cmd)
        if refusal:
            self._emit(CommandRejected, **ids, reason=clip(refusal))
            return False
        if self._cancelled(cmd, "before it started") or self._expired(cmd, "before it was taken"):
            return False
        self._emit(
            Accepted, **ids, workflow=workflow.name, version=workflow.version, dry_run=cmd.dry_run
        )
        checks = run_preflight(workflow, self._preflight_context())
        ok = all(check.ok for check in checks)
        self._emit(Preflight, **ids, ok=ok, checks=checks, dry_run=cmd.dry_run)
        if cmd.dry_run:
            return False
        if not ok:
            self._emit(CommandRejected, **ids, reason=summarize_failures(checks))
            return False
        if self._cancelled(cmd, "after its preflight, before its steps"):
            return False
        return not self._expired(cmd, "before its steps could start")

    def _refusal(self, cmd: Deploy) -> str:
        if not DEPLOYMENT_ID.match(cmd.dep):
            return f"bad deployment id {cmd.dep[:40]!r}: letters, digits, '.', '_', '-'"
        return self._workload.refusal(cmd.dep)

    def _expired(self, cmd: Deploy, when: str) -> bool:
        if cmd.expires is None or self._clock.time() <= cmd.expires:
            return False
        late = self._clock.time() - cmd.expires
        self._emit(
            Expired,
            cmd=cmd.id,
            dep=cmd.dep,
            reason=f"expired {late:.1f} s {when} (expires {cmd.expires:.0f})",
        )
        return True

    # the steps --------------------------------------------------------------------------------
    def _run_steps(self, cmd: Deploy, job: Job, workdir: Path) -> Failure | _Cancelled | None:
        """Run the steps; None when the job succeeded or the service is up (or it was
        stopped), the cancel when one stopped it, else ``(reason, step)`` of the failure. A
        restart request runs them again."""
        workflow = cmd.workflow
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        service = workflow.kind == "service"
        jobs = workflow.steps[:-1] if service else workflow.steps
        started = self._clock.monotonic()
        while True:
            try:
                for index, step in enumerate(jobs):
                    result = self._run_job_step(cmd, job, workdir, step, index)
                    if not result.ok:
                        return f"step {step.name!r} {result.describe()}", step.name
                break
            except Interrupted:
                stop_reason = job.end_interruption()
                mark = self._cancelled(cmd, f"during step {job.step!r}") if stop_reason else None
                if mark is not None:
                    return _Cancelled(mark)
                self._emit(Stopped, **ids, reason=clip(stop_reason or "restart requested"))
                if stop_reason:
                    return None
        if not service:
            self._emit(Succeeded, **ids, duration=round(self._clock.monotonic() - started, 3))
            return None
        return self._start_service(cmd, job, workdir)

    def _run_job_step(
        self, cmd: Deploy, job: Job, workdir: Path, step: Step, index: int
    ) -> StepResult:
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        process = self._launcher.process(cmd.workflow, cmd.dep, workdir, step, index)
        job.begin_step(step.name, process)
        self._emit(StepStarted, **ids, step=step.name, index=index)
        process.start()
        self._workload.save()
        result = process.finish(step.timeout)
        if job.interrupted() and result.stopped:
            raise Interrupted
        self._emit(StepFinished, **ids, **finished_fields(step, index, result))
        return result

    def _start_service(self, cmd: Deploy, job: Job, workdir: Path) -> Failure | _Cancelled | None:
        workflow = cmd.workflow
        index = len(workflow.steps) - 1
        step = workflow.steps[index]
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        job.begin_service(step.name)
        supervisor = self._keeper.supervisor(cmd.id, cmd.dep, workflow, job)
        self._emit(StepStarted, **ids, step=step.name, index=index)
        result = supervisor.start()
        job.end_service()
        if result is not None and result.stopped and job.stop_reason:
            mark = self._cancelled(cmd, "while its service was starting")
            if mark is not None:
                return _Cancelled(mark)
            self._emit(Stopped, **ids, reason=clip(job.stop_reason))
            return None
        if result is not None:
            self._emit(StepFinished, **ids, **finished_fields(step, index, result))
            return f"failed to start: step {step.name!r} {result.describe()}", step.name
        if self._keeper.register(Service(cmd.dep, cmd.id, workflow, workdir, supervisor)):
            self._emit(Running, **ids)
            return None
        mark = self._cancelled(cmd, "as its service started")
        return None if mark is None else _Cancelled(mark)

    def _roll_back(self, cmd: Deploy, old: Service, reason: str) -> None:
        """Start the service ``old`` (stopped for ``cmd``) again."""
        problem = self._keeper.start_again(old.dep, old.cmd, old.workflow)
        if problem:
            log.warning("rollback failed", dep=cmd.dep, restore=old.dep, problem=problem)
            self._emit(Failed, cmd=old.cmd, dep=old.dep, reason=clip(f"not restored: {problem}"))
            return
        self._emit(
            RolledBack,
            cmd=cmd.id,
            dep=cmd.dep,
            restored=old.dep,
            version=old.workflow.version,
            reason=clip(reason),
        )

    def _emit(self, kind: Any, **fields: Any) -> None:
        self._sink.emit(kind, **fields)


def finished_fields(step: Step, index: int, result: StepResult) -> dict[str, Any]:
    """The fields of a ``step-finished`` event (the stderr tail says why a step could not
    start, if it could not)."""
    stderr = result.stderr
    if result.exit_code is None and result.problem and not result.timed_out:
        stderr = (stderr + "\n" if stderr else "") + f"edgeplane: {result.problem}"
    return {
        "step": step.name,
        "index": index,
        "exit_code": result.exit_code,
        "duration": round(result.duration, 3),
        "ok": result.ok,
        "timed_out": result.timed_out,
        "stdout": result.stdout,
        "stderr": stderr[-4096:],
    }
