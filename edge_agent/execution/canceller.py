"""The ``cancel`` command: take a deployment (or, for an undeploy, a whole workflow) back
off this target, for good.

- a service that runs is stopped (its process group) and taken out of the executor's
  record, so the next start of the agent does not start it again: ``cancelled``;
- a service kept only to resume at the next start (stopped with the agent) is forgotten:
  ``cancelled``;
- the job's step is stopped, and a deployment queued for the worker or in its preflight is
  marked: the worker reports ``cancelled`` (:mod:`.deployer`);
- nothing of it here: ``rejected`` (the deployment is not on this agent, or has ended).

Every answer names the cancel command (``cmd``), and each ``cancelled`` the deployment
(``dep``), so the controller's fold ends that deployment and answers the command. The
cancel runs on a thread of its own (a process group may take the kill grace to end), once
the executor has carried on from its record (a cancel that comes while the agent starts
finds the services it resumes).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Final

from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.preflight import clip
from edgeplane.edge_agent.execution.workload import Cancellation, Workload
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Cancelled, CommandRejected

__all__ = ["Canceller"]

log = get_logger(__name__)

READY_WAIT: Final = 60.0  # most seconds a cancel waits for the executor's recovery


class Canceller:
    def __init__(self, workload: Workload, sink: EventSink, ready: threading.Event) -> None:
        """``ready``: set once the executor has carried on from its record."""
        self._workload = workload
        self._sink = sink
        self._ready = ready

    def cancel(self, dep: str, workflow: str, cmd_id: str) -> None:
        """Cancel on a thread of its own, once the executor is ready; quick."""
        threading.Thread(
            target=self._cancel_guarded,
            args=(dep, workflow, cmd_id),
            name="executor-cancel",
            daemon=True,
        ).start()

    def _cancel_guarded(self, dep: str, workflow: str, cmd_id: str) -> None:
        try:
            self._ready.wait(READY_WAIT)
            self._cancel(dep, workflow, cmd_id)
        except Exception as exc:
            log.exception("cancel failed unexpectedly", cmd=cmd_id)
            with contextlib.suppress(Exception):
                self._emit(CommandRejected, cmd=cmd_id, reason=clip(f"cancel failed: {exc}"))

    def _cancel(self, dep: str, workflow: str, cmd_id: str) -> None:
        """Answer when nothing matches, else stop what does."""
        what = "undeployed" if workflow else "cancelled"
        if self._workload.closing:
            reason = clip(f"not {what}: {self._workload.closing}")
            self._emit(CommandRejected, cmd=cmd_id, reason=reason)
            return
        found = self._workload.cancel(dep, workflow, cmd_id, reason=f"{what} by the operator")
        if not found:
            target = f"workflow {workflow!r}" if workflow else f"deployment {dep}"
            reason = f"not {what}: {target} is not running here (nothing of it runs or waits)"
            self._emit(CommandRejected, cmd=cmd_id, reason=clip(reason))
            return
        log.info("cancelling", cmd=cmd_id, dep=dep, workflow=workflow, marked=found.marked)
        self._stop(found, cmd_id, what)

    def _stop(self, found: Cancellation, cmd_id: str, what: str) -> None:
        if found.process is not None:
            found.process.stop()  # the worker reports the job
        for service in found.services:
            service.supervisor.stop()
        self._workload.save()  # not started again at the next start of the agent
        for service in found.services:
            reason = f"{what} by the operator: service stopped, not started again at boot"
            self._emit(Cancelled, cmd=cmd_id, dep=service.dep, reason=reason)
        for record in found.resumed:
            reason = f"{what} by the operator: it was stopped, and will not start again"
            self._emit(Cancelled, cmd=cmd_id, dep=record.dep, reason=reason)

    def _emit(self, kind: Any, **fields: Any) -> None:
        self._sink.emit(kind, **fields)
