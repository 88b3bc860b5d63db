"""The agent's executor: deployments run one after another in a worker thread of its own.

The agent's loop hands it commands (:meth:`Executor.submit`, :meth:`Executor.restart`,
:meth:`Executor.stop_all`), all thread-safe and quick; everything that follows is reported
through the :class:`~edge_agent.events.EventSink`, each event with the command's ``cmd``
and the deployment's ``dep``:

``accepted`` -> ``preflight`` (every check) -> when a check failed: ``rejected`` ("preflight
failed: ..."), and nothing runs; a dry run ends with its ``preflight``. Otherwise
``started``, ``step-started`` / ``step-finished`` per step, then ``succeeded`` (a job) or
``running`` (a service whose last step survived its start-up grace), or ``failed`` (reason
and step). A command past its ``expires`` when the worker takes it, or when its steps
would start, gets ``expired`` instead.

Services: the steps before the last run as jobs, the last is kept running by a
:class:`~edge_agent.execution.services.ServiceSupervisor` (``service-restarted`` on every restart).
Deploying workflow W while an earlier deployment of W runs as a service stops the old one
(``stopped``, "replaced by <dep>") before the new one's steps; when the new one fails to
start (a step fails, or the service dies within its first grace) the old one is started
again: ``failed`` then ``rolled-back``.

Each deployment works in ``{state_dir}/deployments/{dep}/`` (its steps' output files and a
``deployment.json``); the newest :data:`KEEP_PER_WORKFLOW` of each workflow are kept.

What runs is recorded in ``{state_dir}/executor.json`` (written atomically) so that a new
executor (after an agent restart or crash) carries on:

- the agent stopping (:meth:`stop_all` with ``resume=True``, the default) stops every
  service and reports ``stopped``, but keeps them in the record: the next start of the
  agent starts them again (their last step, in their working directory: ``running``).
  Retirement passes ``resume=False``;
- a job whose step was running when the agent died is reported ``failed`` ("interrupted:
  the agent stopped during step 'x'"), and what is left of its process group is killed;
- a service process left over from a crashed agent is killed before it is started again.

The worker never dies of an exception: it is logged and the deployment reported ``failed``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import msgspec

from edgeplane.edge_agent.errors import AgentError, ExecutionError, ModelsDirError, StateDirError
from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.preflight import (
    DEFAULT_CHECK_TIMEOUT,
    PreflightContext,
    clip,
    run_preflight,
    summarize_failures,
)
from edgeplane.edge_agent.execution.runner import (
    KILL_GRACE,
    StepProcess,
    StepResult,
    group_alive,
    group_members,
    kill_group,
    step_env,
)
from edgeplane.edge_agent.execution.services import DEFAULT_GRACE, ServiceSupervisor
from edgeplane.edge_agent.inventory import scan_models
from edgeplane.edge_agent.secrets import Secrets
from edgeplane.edge_agent.state import write_atomically
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    CommandRejected,
    Deploy,
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
from edgeplane.shared.workflow import Step, Workflow

__all__ = ["KEEP_PER_WORKFLOW", "STATE_FILE", "Executor"]

STATE_FILE: Final = "executor.json"
KEEP_PER_WORKFLOW: Final = 5
DEPLOYMENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

log = get_logger(__name__)


# --- the record on disk --------------------------------------------------------------------
class _ServiceRecord(msgspec.Struct, frozen=True):
    dep: str
    cmd: str
    workflow: Workflow
    pgid: int | None = None


class _JobRecord(msgspec.Struct, frozen=True):
    dep: str
    cmd: str
    workflow: str
    step: str
    pgid: int | None = None


class _Record(msgspec.Struct):
    services: dict[str, _ServiceRecord] = {}
    job: _JobRecord | None = None


class _DeploymentInfo(msgspec.Struct, frozen=True):
    """``deployment.json`` in a working directory: which workflow it belongs to."""

    workflow: str
    version: str
    created: float


# --- what runs now -------------------------------------------------------------------------
@dataclass
class _Service:
    dep: str
    cmd: str
    workflow: Workflow
    workdir: Path
    supervisor: ServiceSupervisor


@dataclass
class _Job:
    """The deployment the worker runs now (its steps before any service step)."""

    dep: str
    cmd: str
    workflow: str
    step: str = ""
    process: StepProcess | None = None
    stop_reason: str = ""  # set by stop_all: report ``stopped``, not ``failed``
    restart: bool = False  # set by restart: run the steps again from the first
    starting_service: bool = False  # its service step is in its first grace
    done: threading.Event = field(default_factory=threading.Event)

    def interrupted(self) -> bool:
        return bool(self.stop_reason) or self.restart


class _Interrupted(Exception):
    """A job's step was stopped on purpose (restart or stop_all)."""


_CLOSE: Final = object()


class Executor:
    """Runs deployments in order in one worker thread; see the module docstring.

    ``agent_env`` is where a step's base variables come from (default ``os.environ``);
    ``backoff`` makes the backoff of each service; ``check_timeout``, ``service_grace``
    and ``kill_grace`` are seconds.
    """

    def __init__(
        self,
        env: str,
        *,
        state_dir: Path,
        models_dir: Path | None,
        secrets: Secrets | None,
        endpoints: Mapping[str, str],
        sink: EventSink,
        clock: Clock | None = None,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
        service_grace: float = DEFAULT_GRACE,
        kill_grace: float = KILL_GRACE,
        backoff: Callable[[], Backoff] | None = None,
        keep: int = KEEP_PER_WORKFLOW,
        agent_env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = env
        self.state_dir = state_dir
        self.models_dir = models_dir
        self.secrets = secrets
        self.endpoints = endpoints
        self.sink = sink
        self.clock = clock or SystemClock()
        self.check_timeout = check_timeout
        self.service_grace = service_grace
        self.kill_grace = kill_grace
        self.keep = keep
        self._backoff = backoff or (lambda: Backoff(initial=1.0, cap=60.0))
        self._agent_env = dict(os.environ if agent_env is None else agent_env)
        self._deployments = state_dir / "deployments"
        self._state_path = state_dir / STATE_FILE
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.RLock()
        self._services: dict[str, _Service] = {}  # workflow name -> its running service
        self._resume: dict[str, _ServiceRecord] = {}  # stopped with the agent, to restart
        self._job: _Job | None = None
        self._closing = ""  # why new deployments are refused (set by stop_all)
        self._closed = False  # the worker is told to end: nothing queued would run
        self._resume_on_stop = True  # what stop_all said about services it stopped
        self._thread: threading.Thread | None = None

    # --- the agent loop's side --------------------------------------------------------------
    def start(self) -> None:
        """Start the worker; it first carries on from the record of a previous run."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="executor", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, cmd: Deploy) -> None:
        """Queue a deployment; everything about it is reported through the sink."""
        if self._closed:
            reason = clip(f"not run: {self._closing or 'the executor is closed'}")
            self._emit(CommandRejected, cmd=cmd.id, dep=cmd.dep, reason=reason)
            return
        self._queue.put(cmd)

    def running(self) -> list[str]:
        """The deployment ids running now: services, and the job the worker runs."""
        with self._lock:
            deps = [service.dep for service in self._services.values()]
            if self._job is not None:
                deps.append(self._job.dep)
            return deps

    def restart(self, workflow: str = "", cmd_id: str = "") -> None:
        """Restart the running services (only those of ``workflow`` if given) and run the
        current job of that workflow again; ``ack`` (op ``restart``) when done."""
        with self._lock:
            services = [s for name, s in self._services.items() if workflow in ("", name)]
            job = self._job
            if job is not None and (job.starting_service or workflow not in ("", job.workflow)):
                job = None
        if workflow and not services and job is None:
            self._emit(
                Ack,
                cmd=cmd_id,
                op="restart",
                ok=False,
                detail=f"no workflow {workflow!r} is running",
            )
            return
        if not services and job is None:
            self._emit(Ack, cmd=cmd_id, op="restart", ok=True, detail="nothing is running")
            return
        threading.Thread(
            target=self._restart_guarded,
            args=(services, job, cmd_id),
            name="executor-restart",
            daemon=True,
        ).start()

    def stop_all(self, reason: str, timeout: float = 10.0, *, resume: bool = True) -> None:
        """Stop every workflow (``stopped`` with ``reason`` for each) and refuse further
        deployments. ``resume``: services start again with the next executor (agent stop);
        False forgets them (retirement)."""
        with self._lock:
            self._closing = reason
            self._resume_on_stop = resume
            services = list(self._services.values())
            self._services.clear()
            job = self._job
            if job is not None:
                job.stop_reason = reason
                process = job.process
            if resume:
                self._resume.update(
                    (s.workflow.name, _ServiceRecord(dep=s.dep, cmd=s.cmd, workflow=s.workflow))
                    for s in services
                )
            else:
                self._resume.clear()
        stoppers = [
            threading.Thread(target=s.supervisor.stop, name="executor-stop", daemon=True)
            for s in services
        ]
        if job is not None and process is not None:
            stoppers.append(threading.Thread(target=process.stop, daemon=True))
        for thread in stoppers:
            thread.start()
        deadline = self.clock.monotonic() + timeout
        for thread in stoppers:
            thread.join(max(0.0, deadline - self.clock.monotonic()))
        for service in services:
            self._emit(Stopped, cmd=service.cmd, dep=service.dep, reason=clip(reason))
        self._save()
        if job is not None:
            job.done.wait(max(0.0, deadline - self.clock.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything (as on an agent stop, so services resume next time) and end the
        worker thread."""
        if not self._closing:
            self.stop_all("agent stopping", timeout)
        self._closed = True
        self._queue.put(_CLOSE)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        self._guarded(self._recover, cmd="", dep="")
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, Deploy):
                self._guarded(functools.partial(self._deploy, item), cmd=item.id, dep=item.dep)

    def _guarded(self, task: Callable[[], None], *, cmd: str, dep: str) -> None:
        try:
            task()
        except Exception as exc:
            log.exception("deployment failed unexpectedly", cmd=cmd, dep=dep)
            reason = str(exc) if isinstance(exc, AgentError) else f"internal error: {exc!r}"
            with contextlib.suppress(Exception):
                self._emit(Failed, cmd=cmd, dep=dep, reason=clip(reason))
        finally:
            with self._lock:
                job, self._job = self._job, None
            if job is not None:
                job.done.set()
                self._save()

    def _deploy(self, cmd: Deploy) -> None:
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        workflow = cmd.workflow
        refusal = self._refusal(cmd)
        if refusal:
            self._emit(CommandRejected, **ids, reason=clip(refusal))
            return
        if self._expired(cmd, "before it was taken"):
            return
        self._emit(
            Accepted, **ids, workflow=workflow.name, version=workflow.version, dry_run=cmd.dry_run
        )
        checks = run_preflight(workflow, self._preflight_context())
        ok = all(check.ok for check in checks)
        self._emit(Preflight, **ids, ok=ok, checks=checks, dry_run=cmd.dry_run)
        if cmd.dry_run:
            return
        if not ok:
            self._emit(CommandRejected, **ids, reason=summarize_failures(checks))
            return
        if self._expired(cmd, "before its steps could start"):
            return
        workdir = self._make_workdir(cmd)
        job = _Job(dep=cmd.dep, cmd=cmd.id, workflow=workflow.name)
        with self._lock:
            if self._closing:
                self._emit(CommandRejected, **ids, reason=clip(f"not run: {self._closing}"))
                return
            self._job = job
            old = self._services.pop(workflow.name, None)
            self._resume.pop(workflow.name, None)
        self._emit(Started, **ids, workflow=workflow.name, version=workflow.version)
        if old is not None:
            old.supervisor.stop()
            self._emit(
                Stopped, cmd=old.cmd, dep=old.dep, reason=f"replaced by {cmd.dep}", by=cmd.dep
            )
            self._save()
        failure = self._run_steps(cmd, job, workdir)
        if failure is None:
            return
        reason, step = failure
        self._emit(Failed, **ids, reason=clip(reason), step=step)
        if old is not None:
            self._roll_back(cmd, old, reason)

    def _refusal(self, cmd: Deploy) -> str:
        if not DEPLOYMENT_ID.match(cmd.dep):
            return f"bad deployment id {cmd.dep[:40]!r}: letters, digits, '.', '_', '-'"
        with self._lock:
            if self._closing:
                return f"not run: {self._closing}"
            if any(s.dep == cmd.dep for s in self._services.values()):
                return f"deployment {cmd.dep} is already running"
        return ""

    def _expired(self, cmd: Deploy, when: str) -> bool:
        if cmd.expires is None or self.clock.time() <= cmd.expires:
            return False
        late = self.clock.time() - cmd.expires
        self._emit(
            Expired,
            cmd=cmd.id,
            dep=cmd.dep,
            reason=f"expired {late:.1f} s {when} (expires {cmd.expires:.0f})",
        )
        return True

    def _preflight_context(self) -> PreflightContext:
        problem = ""
        try:
            models = scan_models(self.models_dir)
        except ModelsDirError as exc:
            models, problem = {}, str(exc)
        return PreflightContext(
            models=models,
            secrets=self.secrets.names() if self.secrets is not None else None,
            endpoints=self.endpoints,
            timeout=self.check_timeout,
            clock=self.clock,
            models_problem=problem,
        )

    def _run_steps(self, cmd: Deploy, job: _Job, workdir: Path) -> tuple[str, str] | None:
        """Run the steps; None when the job succeeded or the service is up, else
        ``(reason, step)`` of the failure. A restart request runs them again."""
        workflow = cmd.workflow
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        service = workflow.kind == "service"
        jobs = workflow.steps[:-1] if service else workflow.steps
        started = self.clock.monotonic()
        while True:
            try:
                for index, step in enumerate(jobs):
                    result = self._run_job_step(cmd, job, workdir, step, index)
                    if not result.ok:
                        return f"step {step.name!r} {result.describe()}", step.name
                break
            except _Interrupted:
                with self._lock:
                    stop_reason, job.restart = job.stop_reason, False
                    job.process = None
                self._emit(Stopped, **ids, reason=clip(stop_reason or "restart requested"))
                if stop_reason:
                    return None
        if not service:
            self._emit(Succeeded, **ids, duration=round(self.clock.monotonic() - started, 3))
            return None
        return self._start_service(cmd, job, workdir)

    def _run_job_step(
        self, cmd: Deploy, job: _Job, workdir: Path, step: Step, index: int
    ) -> StepResult:
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        process = self._process(cmd.workflow, cmd.dep, workdir, step, index)
        with self._lock:
            if job.interrupted():
                raise _Interrupted
            job.step, job.process = step.name, process
        self._emit(StepStarted, **ids, step=step.name, index=index)
        process.start()
        self._save()
        result = process.finish(step.timeout)
        with self._lock:
            interrupted = job.interrupted()
        if interrupted and result.stopped:
            raise _Interrupted
        self._emit(StepFinished, **ids, **_finished(step, index, result))
        return result

    def _start_service(self, cmd: Deploy, job: _Job, workdir: Path) -> tuple[str, str] | None:
        workflow = cmd.workflow
        index = len(workflow.steps) - 1
        step = workflow.steps[index]
        ids = {"cmd": cmd.id, "dep": cmd.dep}
        # Until it is up the service is part of the job: recorded with its process group
        # (a crash now leaves no stray service) and stopped by stop_all.
        with self._lock:
            job.step, job.process, job.starting_service = step.name, None, True
        supervisor = self._supervisor(cmd.id, cmd.dep, workflow, workdir, job)
        self._emit(StepStarted, **ids, step=step.name, index=index)
        result = supervisor.start()
        with self._lock:
            job.process, job.starting_service = None, False
        if result is not None and result.stopped and job.stop_reason:
            self._emit(Stopped, **ids, reason=clip(job.stop_reason))
            return None
        if result is not None:
            self._emit(StepFinished, **ids, **_finished(step, index, result))
            return f"failed to start: step {step.name!r} {result.describe()}", step.name
        if self._register(_Service(cmd.dep, cmd.id, workflow, workdir, supervisor)):
            self._emit(Running, **ids)
        return None

    def _roll_back(self, cmd: Deploy, old: _Service, reason: str) -> None:
        """Start the service ``old`` (stopped for ``cmd``) again."""
        problem = self._resume_service(old.dep, old.cmd, old.workflow)
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

    def _resume_service(self, dep: str, cmd: str, workflow: Workflow) -> str:
        """Start an earlier deployment's service step again in its working directory;
        an empty string when it is up, else what went wrong."""
        workdir = self._deployments / dep
        if not workdir.is_dir():
            return f"its working directory {str(workdir)!r} is gone"
        supervisor = self._supervisor(cmd, dep, workflow, workdir)
        try:
            result = supervisor.start()
        except AgentError as exc:
            return str(exc)
        if result is not None:
            return f"step {workflow.steps[-1].name!r} {result.describe()}"
        self._register(_Service(dep, cmd, workflow, workdir, supervisor))
        return ""

    def _register(self, service: _Service) -> bool:
        """Add a service that is up to those running; when stop_all came meanwhile, stop
        it (and keep it to resume, if stop_all said so) and say False."""
        name = service.workflow.name
        displaced = None
        with self._lock:
            closing = self._closing
            if not closing:
                # One service per workflow, even when a restart and a deployment cross.
                displaced = self._services.pop(name, None)
                self._services[name] = service
                self._resume.pop(name, None)
            elif self._resume_on_stop:
                self._resume[name] = _ServiceRecord(service.dep, service.cmd, service.workflow)
        if displaced is not None:
            displaced.supervisor.stop()
            reason = f"replaced by {service.dep}"
            self._emit(Stopped, cmd=displaced.cmd, dep=displaced.dep, reason=reason, by=service.dep)
        if closing:
            service.supervisor.stop()
            self._emit(Stopped, cmd=service.cmd, dep=service.dep, reason=clip(closing))
        self._save()
        return not closing

    def _supervisor(
        self, cmd: str, dep: str, workflow: Workflow, workdir: Path, job: _Job | None = None
    ) -> ServiceSupervisor:
        """A supervisor of ``workflow``'s service step; ``job``: the deployment starting it."""
        index = len(workflow.steps) - 1
        step = workflow.steps[index]

        def on_launch(process: StepProcess) -> None:
            if job is not None:
                with self._lock:
                    if job.starting_service:
                        job.process = process
            self._save()

        def on_restart(restarts: int, exit_code: int | None, delay: float) -> None:
            self._emit(
                ServiceRestarted,
                cmd=cmd,
                dep=dep,
                step=step.name,
                restarts=restarts,
                exit_code=exit_code,
                delay=round(delay, 3),
            )

        return ServiceSupervisor(
            lambda: self._process(workflow, dep, workdir, step, index),
            name=f"{workflow.name}/{dep}",
            on_restart=on_restart,
            on_launch=on_launch,
            grace=self.service_grace,
            backoff=self._backoff(),
            clock=self.clock,
        )

    def _process(
        self, workflow: Workflow, dep: str, workdir: Path, step: Step, index: int
    ) -> StepProcess:
        needs = workflow.requires
        secrets = self.secrets.env_for(needs.secrets) if self.secrets and needs.secrets else {}
        env = step_env(
            step.env,
            agent_env=self._agent_env,
            env_id=self.env,
            dep=dep,
            workdir=workdir,
            models_dir=self.models_dir,
            buckets=needs.buckets,
            endpoints={name: self.endpoints.get(name, "") for name in needs.endpoints},
            secrets=secrets,
        )
        return StepProcess(
            step.run,
            cwd=workdir,
            env=env,
            log_name=f"{index:02d}-{step.name}",
            mask=self.secrets.mask if self.secrets is not None else str,
            clock=self.clock,
            kill_grace=self.kill_grace,
        )

    # --- restart ----------------------------------------------------------------------------
    def _restart_guarded(self, services: list[_Service], job: _Job | None, cmd_id: str) -> None:
        try:
            self._restart(services, job, cmd_id)
        except Exception as exc:
            log.exception("restart failed unexpectedly", cmd=cmd_id)
            with contextlib.suppress(Exception):
                detail = clip(f"restart failed: {exc}")
                self._emit(Ack, cmd=cmd_id, op="restart", ok=False, detail=detail)

    def _restart(self, services: list[_Service], job: _Job | None, cmd_id: str) -> None:
        done, failed = [], []
        if job is not None:
            with self._lock:
                job.restart = True
                process = job.process
            if process is not None:
                process.stop()
            done.append(job.workflow)
        for service in services:
            with self._lock:
                if self._services.get(service.workflow.name) is not service:
                    continue  # replaced or stopped meanwhile
                del self._services[service.workflow.name]
            service.supervisor.stop()
            self._emit(Stopped, cmd=service.cmd, dep=service.dep, reason="restart requested")
            problem = self._resume_service(service.dep, service.cmd, service.workflow)
            if problem:
                self._emit(
                    Failed,
                    cmd=service.cmd,
                    dep=service.dep,
                    reason=clip(f"not restarted: {problem}"),
                )
                failed.append(f"{service.workflow.name} ({problem})")
            else:
                self._emit(Running, cmd=service.cmd, dep=service.dep)
                done.append(service.workflow.name)
        detail = "restarted: " + ", ".join(done) if done else ""
        if failed:
            detail = "; ".join(filter(None, [detail, "failed: " + ", ".join(failed)]))
        self._emit(Ack, cmd=cmd_id, op="restart", ok=not failed, detail=clip(detail))

    # --- carrying on after a restart of the agent -------------------------------------------
    def _recover(self) -> None:
        record = self._load()
        with self._lock:
            self._resume = dict(record.services)
        if record.job is not None:
            job = record.job
            if job.pgid is not None:
                _kill_leftovers(job.pgid, job.dep)
            self._emit(
                Failed,
                cmd=job.cmd,
                dep=job.dep,
                reason=clip(f"interrupted: the agent stopped during step {job.step!r}"),
                step=job.step,
            )
        self._save()
        for name, service in record.services.items():
            if service.pgid is not None:
                _kill_leftovers(service.pgid, service.dep)
            with self._lock:
                if self._closing or name not in self._resume:
                    continue
            problem = self._resume_service(service.dep, service.cmd, service.workflow)
            if problem:
                with self._lock:
                    self._resume.pop(name, None)
                self._save()
                self._emit(
                    Failed,
                    cmd=service.cmd,
                    dep=service.dep,
                    reason=clip(f"not restarted after the agent restarted: {problem}"),
                    step=service.workflow.steps[-1].name,
                )
            else:
                self._emit(Running, cmd=service.cmd, dep=service.dep)

    # --- files ------------------------------------------------------------------------------
    def _make_workdir(self, cmd: Deploy) -> Path:
        workdir = self._deployments / cmd.dep
        try:
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = _DeploymentInfo(cmd.workflow.name, cmd.workflow.version, self.clock.time())
            (workdir / "deployment.json").write_bytes(msgspec.json.encode(info))
        except OSError as exc:
            raise ExecutionError(f"cannot create {str(workdir)!r}: {exc.strerror}") from exc
        self._prune(cmd.workflow.name)
        return workdir

    def _prune(self, workflow: str) -> None:
        """Keep the newest ``keep`` working directories of ``workflow`` (and any in use)."""
        in_use = set(self.running()) | set(self._resume_deps())
        mine = []
        for directory in self._deployments.iterdir():
            try:
                info = msgspec.json.decode(
                    (directory / "deployment.json").read_bytes(), type=_DeploymentInfo
                )
            except (OSError, msgspec.DecodeError):
                continue
            if info.workflow == workflow:
                mine.append((info.created, directory.name, directory))
        mine.sort(reverse=True)
        for _, name, directory in mine[self.keep :]:
            if name not in in_use:
                shutil.rmtree(directory, ignore_errors=True)

    def _resume_deps(self) -> list[str]:
        with self._lock:
            return [record.dep for record in self._resume.values()]

    def _load(self) -> _Record:
        try:
            return msgspec.json.decode(self._state_path.read_bytes(), type=_Record)
        except FileNotFoundError:
            return _Record()
        except (OSError, msgspec.DecodeError) as exc:
            log.error(
                "executor record unreadable: starting afresh",
                path=str(self._state_path),
                error=str(exc),
            )
            return _Record()

    def _save(self) -> None:
        with self._lock:
            record = _Record(services=dict(self._resume))
            for name, service in self._services.items():
                record.services[name] = _ServiceRecord(
                    service.dep, service.cmd, service.workflow, service.supervisor.pgid
                )
            job = self._job
            if job is not None and job.step:
                pgid = job.process.pgid if job.process is not None else None
                record.job = _JobRecord(job.dep, job.cmd, job.workflow, job.step, pgid)
            _write_atomically(self._state_path, msgspec.json.encode(record))

    def _emit(self, kind: Any, **fields: Any) -> None:
        self.sink.emit(kind, **fields)


def _finished(step: Step, index: int, result: StepResult) -> dict[str, Any]:
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


def _kill_leftovers(pgid: int, dep: str) -> None:
    """Kill process group ``pgid`` if it is still there and is that deployment's (its
    processes carry ``EDGEPLANE_DEPLOYMENT=dep``): a pid may have been reused since."""
    if not group_alive(pgid) or not _group_is_deployment(pgid, dep):
        return
    log.warning("killing processes left by an earlier agent", pgid=pgid, dep=dep)
    kill_group(pgid)


def _group_is_deployment(pgid: int, dep: str) -> bool:
    if not os.path.isdir("/proc/self"):
        return True  # no way to look: trust the record
    marker = f"\0EDGEPLANE_DEPLOYMENT={dep}\0".encode()
    for pid in group_members(pgid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in b"\0" + environ:
            return True
    return False


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as exc:
        raise ExecutionError(f"cannot write {str(path)!r}: {exc.strerror}") from exc
    except StateDirError as exc:
        raise ExecutionError(str(exc)) from exc
