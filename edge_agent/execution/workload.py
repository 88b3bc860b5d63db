"""What the executor runs now: one service per workflow, the job the worker runs, the
services stopped with the agent (to start again with the next executor), and whether new
deployments are refused. Several threads change it (the worker, restarts, the agent's
stop): everything here, the fields of the job too, is guarded by one lock, and
:meth:`Workload.save` writes it as the record on disk (:mod:`.record`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edgeplane.edge_agent.execution.record import JobRecord, Record, RecordFile, ServiceRecord
from edgeplane.edge_agent.execution.runner import StepProcess
from edgeplane.edge_agent.execution.services import ServiceSupervisor
from edgeplane.shared.messages import WorkflowProcess
from edgeplane.shared.workflow import Workflow

__all__ = ["CANCELLED", "CancelMark", "Cancellation", "Interrupted", "Job", "Service", "Workload"]

CANCELLED: Final = "cancelled"  # why register did not keep a service a cancel marked


@dataclass
class Service:
    """A deployment whose last step is kept running."""

    dep: str
    cmd: str
    workflow: Workflow
    workdir: Path
    supervisor: ServiceSupervisor

    def record(self, pgid: int | None = None) -> ServiceRecord:
        return ServiceRecord(self.dep, self.cmd, self.workflow, pgid)


@dataclass(frozen=True)
class Cancellation:
    """What a ``cancel`` command found (:meth:`Workload.cancel`): the services taken out
    (to stop and report), the services that were only kept to resume at the next start
    (forgotten now: to report), the job's step process to stop (the deployer reports the
    job), and the deployments marked for the worker to cancel (queued, in preflight, the
    job)."""

    services: list[Service]
    resumed: list[ServiceRecord]
    process: StepProcess | None
    marked: list[str]

    def __bool__(self) -> bool:
        return bool(self.services or self.resumed or self.marked)


@dataclass(frozen=True)
class CancelMark:
    """A deployment to cancel when the worker next looks: by the ``cancel`` command
    ``cmd``; ``undeploy``: the whole workflow goes (an earlier service it replaced is not
    started again)."""

    cmd: str
    undeploy: bool = False


class Interrupted(Exception):
    """A job's step was stopped on purpose (restart or stop_all)."""


@dataclass(eq=False)
class Job:
    """The deployment the worker runs now (its steps before any service step). Its fields
    change under ``lock``, the workload's."""

    dep: str
    cmd: str
    workflow: str
    lock: threading.RLock = field(repr=False)
    step: str = ""
    process: StepProcess | None = None
    stop_reason: str = ""  # set by stop_all: report ``stopped``, not ``failed``
    restart: bool = False  # set by restart: run the steps again from the first
    starting_service: bool = False  # its service step is in its first grace
    done: threading.Event = field(default_factory=threading.Event)

    def interrupted(self) -> bool:
        with self.lock:
            return bool(self.stop_reason) or self.restart

    def begin_step(self, step: str, process: StepProcess) -> None:
        """``step`` runs in ``process`` from now; :class:`Interrupted` if stopped already."""
        with self.lock:
            if self.interrupted():
                raise Interrupted
            self.step, self.process = step, process

    def end_interruption(self) -> str:
        """After an interrupted step: why it was stopped ("" for a restart, which clears)."""
        with self.lock:
            stop_reason, self.restart = self.stop_reason, False
            self.process = None
        return stop_reason

    def begin_service(self, step: str) -> None:
        # Until it is up the service is part of the job: recorded with its process group
        # (a crash now leaves no stray service) and stopped by stop_all.
        with self.lock:
            self.step, self.process, self.starting_service = step, None, True

    def service_launched(self, process: StepProcess) -> None:
        with self.lock:
            if self.starting_service:
                self.process = process

    def end_service(self) -> None:
        with self.lock:
            self.process, self.starting_service = None, False

    def stop(self, reason: str) -> StepProcess | None:
        """Mark it stopped for ``reason``; the process to stop, if a step runs."""
        with self.lock:
            self.stop_reason = reason
            return self.process

    def request_restart(self) -> StepProcess | None:
        """Mark it to run again from the first step; the process to stop, if any."""
        with self.lock:
            self.restart = True
            return self.process

    def record(self) -> JobRecord | None:
        with self.lock:
            if not self.step:
                return None
            pgid = self.process.pgid if self.process is not None else None
            return JobRecord(self.dep, self.cmd, self.workflow, self.step, pgid)


class Workload:
    def __init__(self, record_file: RecordFile) -> None:
        self.lock = threading.RLock()
        self._file = record_file
        self._services: dict[str, Service] = {}  # workflow name -> its running service
        self._resume: dict[str, ServiceRecord] = {}  # stopped with the agent, to restart
        self._job: Job | None = None
        self._closing = ""  # why new deployments are refused (set by close)
        self._resume_on_stop = True  # what close said about the services it stopped
        # Deployments submitted, not yet a job (queued for the worker, or in preflight):
        # dep -> (workflow, dry run); and the cancel marks the worker reads, by dep.
        self._pending: dict[str, tuple[str, bool]] = {}
        self._cancels: dict[str, CancelMark] = {}

    @property
    def closing(self) -> str:
        """Why new deployments are refused ("": they are not)."""
        return self._closing

    def new_job(self, dep: str, cmd: str, workflow: str) -> Job:
        return Job(dep=dep, cmd=cmd, workflow=workflow, lock=self.lock)

    def running(self) -> list[str]:
        """The deployment ids running now: services, and the job the worker runs."""
        with self.lock:
            deps = [service.dep for service in self._services.values()]
            if self._job is not None:
                deps.append(self._job.dep)
            return deps

    def processes(self) -> list[WorkflowProcess]:
        """What runs now, as a ``pong`` reports it: each service, then the job."""
        with self.lock:
            found = [
                WorkflowProcess(
                    workflow=name,
                    dep=service.dep,
                    kind="service",
                    running=service.supervisor.running,
                    restarts=service.supervisor.restarts,
                )
                for name, service in self._services.items()
            ]
            job = self._job
            if job is not None:
                found.append(WorkflowProcess(workflow=job.workflow, dep=job.dep, kind="job"))
            return found

    def in_use(self) -> set[str]:
        """Deployments whose working directories must stay: running or to resume."""
        with self.lock:
            return set(self.running()) | {record.dep for record in self._resume.values()}

    def refusal(self, dep: str) -> str:
        """Why a deployment ``dep`` cannot start now ("" when it can)."""
        with self.lock:
            if self._closing:
                return f"not run: {self._closing}"
            if any(service.dep == dep for service in self._services.values()):
                return f"deployment {dep} is already running"
        return ""

    def start_job(self, job: Job) -> tuple[str, Service | None]:
        """Make ``job`` the one running; ("not run: why", None) when closing or cancelled,
        else ("", the service of the same workflow it replaces, taken out)."""
        with self.lock:
            self._pending.pop(job.dep, None)
            if self._closing:
                return f"not run: {self._closing}", None
            if job.dep in self._cancels:
                return "not run: cancelled", None
            self._job = job
            self._resume.pop(job.workflow, None)
            return "", self._services.pop(job.workflow, None)

    def end_job(self) -> Job | None:
        with self.lock:
            job, self._job = self._job, None
            return job

    # cancelling ---------------------------------------------------------------------------
    def submitted(self, dep: str, workflow: str, dry_run: bool) -> None:
        """Deployment ``dep`` is queued for the worker (a cancel may find it there)."""
        with self.lock:
            self._pending[dep] = (workflow, dry_run)

    def settle(self, dep: str) -> CancelMark | None:
        """The worker is done with ``dep``: no longer pending; its cancel mark, if one came
        that nobody acted on (the deployment ended first)."""
        with self.lock:
            self._pending.pop(dep, None)
            return self._cancels.pop(dep, None)

    def take_cancel(self, dep: str) -> CancelMark | None:
        """The cancel mark of ``dep`` (taken: the caller reports it), None when none came."""
        with self.lock:
            return self._cancels.pop(dep, None)

    def cancel(self, dep: str, workflow: str, cmd: str, reason: str) -> Cancellation:
        """Everything of deployment ``dep``, or (``workflow`` given) of that workflow:
        services are taken out and no longer resumed at the next start, the job is marked
        stopped for ``reason``, deployments not yet started are marked cancelled."""
        mark = CancelMark(cmd, undeploy=bool(workflow))

        def matches(of_dep: str, of_workflow: str) -> bool:
            return (bool(dep) and of_dep == dep) or (bool(workflow) and of_workflow == workflow)

        with self.lock:
            services = [s for name, s in self._services.items() if matches(s.dep, name)]
            for service in services:
                del self._services[service.workflow.name]
            resumed = [r for name, r in self._resume.items() if matches(r.dep, name)]
            for record in resumed:
                del self._resume[record.workflow.name]
            marked: list[str] = []
            process = None
            job = self._job
            taken = {service.dep for service in services}
            if job is not None and matches(job.dep, job.workflow) and job.dep not in taken:
                self._cancels[job.dep] = mark
                marked.append(job.dep)
                process = job.stop(reason)
            for pending, (of_workflow, dry_run) in self._pending.items():
                if (dep and pending == dep) or (
                    workflow and of_workflow == workflow and not dry_run
                ):
                    self._cancels[pending] = mark
                    marked.append(pending)
            return Cancellation(services, resumed, process, marked)

    def restart_targets(self, workflow: str) -> tuple[list[Service], Job | None]:
        """The services (of ``workflow``, or all) and the job that a restart runs again."""
        with self.lock:
            services = [s for name, s in self._services.items() if workflow in ("", name)]
            job = self._job
            if job is not None and (job.starting_service or workflow not in ("", job.workflow)):
                job = None
        return services, job

    def close(
        self, reason: str, *, resume: bool
    ) -> tuple[list[Service], Job | None, StepProcess | None]:
        """Refuse deployments from now on; take out every service (kept to resume with the
        next executor if ``resume``) and mark the job stopped: the services, the job and
        its step's process to stop."""
        with self.lock:
            self._closing = reason
            self._resume_on_stop = resume
            services = list(self._services.values())
            self._services.clear()
            job = self._job
            process = None if job is None else job.stop(reason)
            if resume:
                self._resume.update((s.workflow.name, s.record()) for s in services)
            else:
                self._resume.clear()
            return services, job, process

    def register(self, service: Service) -> tuple[Service | None, str]:
        """Add a service that is up; (the service of its workflow it displaced, "") — or,
        once closing, (None, why): then it is only kept to resume, if close said so; or,
        when a cancel marked it meanwhile, (None, :data:`CANCELLED`): not kept at all."""
        name = service.workflow.name
        with self.lock:
            if service.dep in self._cancels:
                return None, CANCELLED
            closing = self._closing
            if closing:
                if self._resume_on_stop:
                    self._resume[name] = service.record()
                return None, closing
            # One service per workflow, even when a restart and a deployment cross.
            displaced = self._services.pop(name, None)
            self._services[name] = service
            self._resume.pop(name, None)
            return displaced, ""

    def withdraw(self, service: Service) -> bool:
        """Take ``service`` out to restart it; False if it was replaced or stopped meanwhile."""
        name = service.workflow.name
        with self.lock:
            if self._services.get(name) is not service:
                return False
            del self._services[name]
            return True

    # carrying on from the record ------------------------------------------------------------
    def carry_on(self, record: Record) -> None:
        """The services of a previous executor's record are to be started again."""
        with self.lock:
            self._resume = dict(record.services)

    def still_to_resume(self, workflow: str) -> bool:
        with self.lock:
            return not self._closing and workflow in self._resume

    def forget_resume(self, workflow: str) -> None:
        with self.lock:
            self._resume.pop(workflow, None)

    def save(self) -> None:
        """Write the record: the services running (with their process groups) and to
        resume, and the job if a step of it runs."""
        with self.lock:
            record = Record(services=dict(self._resume))
            for name, service in self._services.items():
                record.services[name] = service.record(service.supervisor.pgid)
            if self._job is not None:
                record.job = self._job.record()
            self._file.write(record)
