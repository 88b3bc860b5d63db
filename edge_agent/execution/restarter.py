"""The ``restart`` command: the running services (of one workflow, or all) start again in
their working directories (``stopped`` "restart requested", then ``running``, or
``failed``), and the job of that workflow runs again from its first step; then ``ack`` (op
``restart``) says what was restarted. The restarting runs on a thread of its own."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.keeper import ServiceKeeper
from edgeplane.edge_agent.execution.preflight import clip
from edgeplane.edge_agent.execution.workload import Job, Service, Workload
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Ack, Failed, Running, Stopped

__all__ = ["Restarter"]

log = get_logger(__name__)


class Restarter:
    def __init__(self, workload: Workload, keeper: ServiceKeeper, sink: EventSink) -> None:
        self._workload = workload
        self._keeper = keeper
        self._sink = sink

    def restart(self, workflow: str, cmd_id: str) -> None:
        """Answer at once when nothing is to restart, else start restarting."""
        services, job = self._workload.restart_targets(workflow)
        if workflow and not services and job is None:
            detail = f"no workflow {workflow!r} is running"
            self._emit(Ack, cmd=cmd_id, op="restart", ok=False, detail=detail)
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

    def _restart_guarded(self, services: list[Service], job: Job | None, cmd_id: str) -> None:
        try:
            self._restart(services, job, cmd_id)
        except Exception as exc:
            log.exception("restart failed unexpectedly", cmd=cmd_id)
            with contextlib.suppress(Exception):
                detail = clip(f"restart failed: {exc}")
                self._emit(Ack, cmd=cmd_id, op="restart", ok=False, detail=detail)

    def _restart(self, services: list[Service], job: Job | None, cmd_id: str) -> None:
        done, failed = [], []
        if job is not None:
            process = job.request_restart()
            if process is not None:
                process.stop()
            done.append(job.workflow)
        for service in services:
            problem = self._restart_service(service)
            if problem is None:
                continue  # replaced or stopped meanwhile
            if problem:
                failed.append(f"{service.workflow.name} ({problem})")
            else:
                done.append(service.workflow.name)
        detail = "restarted: " + ", ".join(done) if done else ""
        if failed:
            detail = "; ".join(filter(None, [detail, "failed: " + ", ".join(failed)]))
        self._emit(Ack, cmd=cmd_id, op="restart", ok=not failed, detail=clip(detail))

    def _restart_service(self, service: Service) -> str | None:
        """ "" when restarted, what went wrong, or None when it no longer runs."""
        if not self._workload.withdraw(service):
            return None
        service.supervisor.stop()
        self._emit(Stopped, cmd=service.cmd, dep=service.dep, reason="restart requested")
        problem = self._keeper.start_again(service.dep, service.cmd, service.workflow)
        if problem:
            reason = clip(f"not restarted: {problem}")
            self._emit(Failed, cmd=service.cmd, dep=service.dep, reason=reason)
        else:
            self._emit(Running, cmd=service.cmd, dep=service.dep)
        return problem

    def _emit(self, kind: Any, **fields: Any) -> None:
        self._sink.emit(kind, **fields)
