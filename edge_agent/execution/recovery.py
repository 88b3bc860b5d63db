"""Carrying on from the record of the executor before (an agent restart or crash):

- the services stopped with the agent start again (their last step, in their working
  directory: ``running``), unless retirement forgot them;
- a job whose step was running when the agent died is reported ``failed`` ("interrupted:
  the agent stopped during step 'x'"), and what is left of its process group is killed;
- a service process left over from a crashed agent is killed before it is started again.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.keeper import ServiceKeeper
from edgeplane.edge_agent.execution.preflight import clip
from edgeplane.edge_agent.execution.record import RecordFile
from edgeplane.edge_agent.execution.runner import group_alive, group_members, kill_group
from edgeplane.edge_agent.execution.workload import Workload
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Failed, Running

__all__ = ["recover"]

log = get_logger(__name__)


def recover(
    record_file: RecordFile, workload: Workload, keeper: ServiceKeeper, sink: EventSink
) -> None:
    record = record_file.load()
    workload.carry_on(record)
    if record.job is not None:
        job = record.job
        if job.pgid is not None:
            kill_leftovers(job.pgid, job.dep)
        sink.emit(
            Failed,
            cmd=job.cmd,
            dep=job.dep,
            reason=clip(f"interrupted: the agent stopped during step {job.step!r}"),
            step=job.step,
        )
    workload.save()
    for name, service in record.services.items():
        if service.pgid is not None:
            kill_leftovers(service.pgid, service.dep)
        if not workload.still_to_resume(name):
            continue
        problem = keeper.start_again(service.dep, service.cmd, service.workflow)
        if problem:
            workload.forget_resume(name)
            workload.save()
            sink.emit(
                Failed,
                cmd=service.cmd,
                dep=service.dep,
                reason=clip(f"not restarted after the agent restarted: {problem}"),
                step=service.workflow.steps[-1].name,
            )
        else:
            sink.emit(Running, cmd=service.cmd, dep=service.dep)


def kill_leftovers(pgid: int, dep: str) -> None:
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
