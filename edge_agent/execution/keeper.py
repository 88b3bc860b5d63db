"""Services at the executor's level: a :class:`~.services.ServiceSupervisor` for a
workflow's last step (``service-restarted`` on every restart), starting a deployment's
service again in its working directory, and registering a service that is up (one per
workflow: the one it displaces is stopped, ``stopped`` "replaced by <dep>")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.launcher import StepLauncher
from edgeplane.edge_agent.execution.preflight import clip
from edgeplane.edge_agent.execution.runner import StepProcess
from edgeplane.edge_agent.execution.services import ServiceSupervisor
from edgeplane.edge_agent.execution.workdirs import Workdirs
from edgeplane.edge_agent.execution.workload import CANCELLED, Job, Service, Workload
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import ServiceRestarted, Stopped
from edgeplane.shared.workflow import Workflow

__all__ = ["ServiceKeeper"]


class ServiceKeeper:
    def __init__(
        self,
        workload: Workload,
        launcher: StepLauncher,
        workdirs: Workdirs,
        sink: EventSink,
        *,
        grace: float,
        backoff: Callable[[], Backoff],
        clock: Clock,
    ) -> None:
        self.grace = grace
        self._workload = workload
        self._launcher = launcher
        self._workdirs = workdirs
        self._sink = sink
        self._backoff = backoff
        self._clock = clock

    def supervisor(
        self, cmd: str, dep: str, workflow: Workflow, job: Job | None = None
    ) -> ServiceSupervisor:
        """A supervisor of ``workflow``'s service step; ``job``: the deployment starting it."""
        index = len(workflow.steps) - 1
        step = workflow.steps[index]
        workdir = self._workdirs.of(dep)

        def on_launch(process: StepProcess) -> None:
            if job is not None:
                job.service_launched(process)
            self._workload.save()

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
            lambda: self._launcher.process(workflow, dep, workdir, step, index),
            name=f"{workflow.name}/{dep}",
            on_restart=on_restart,
            on_launch=on_launch,
            grace=self.grace,
            backoff=self._backoff(),
            clock=self._clock,
        )

    def start_again(self, dep: str, cmd: str, workflow: Workflow) -> str:
        """Start an earlier deployment's service step again in its working directory;
        an empty string when it is up, else what went wrong."""
        workdir = self._workdirs.of(dep)
        if not workdir.is_dir():
            return f"its working directory {str(workdir)!r} is gone"
        supervisor = self.supervisor(cmd, dep, workflow)
        try:
            result = supervisor.start()
        except AgentError as exc:
            return str(exc)
        if result is not None:
            return f"step {workflow.steps[-1].name!r} {result.describe()}"
        self.register(Service(dep, cmd, workflow, workdir, supervisor))
        return ""

    def register(self, service: Service) -> bool:
        """Add a service that is up to those running; when stop_all came meanwhile, stop
        it (and keep it to resume, if stop_all said so) and say False; likewise when a
        cancel marked it (the canceller's mark says so, and is reported by the caller)."""
        displaced, closing = self._workload.register(service)
        if displaced is not None:
            displaced.supervisor.stop()
            reason = f"replaced by {service.dep}"
            self._emit(Stopped, cmd=displaced.cmd, dep=displaced.dep, reason=reason, by=service.dep)
        if closing:
            service.supervisor.stop()
            if closing != CANCELLED:  # a cancelled one is reported by whoever cancels it
                self._emit(Stopped, cmd=service.cmd, dep=service.dep, reason=clip(closing))
        self._workload.save()
        return not closing

    def _emit(self, kind: Any, **fields: Any) -> None:
        self._sink.emit(kind, **fields)
