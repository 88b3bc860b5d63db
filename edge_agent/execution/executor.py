"""The agent's executor: deployments run one after another in a worker thread of its own.

The agent's loop hands it commands (:meth:`Executor.submit`, :meth:`Executor.restart`,
:meth:`Executor.stop_all`), all thread-safe and quick; everything that follows is reported
through the :class:`~edge_agent.events.EventSink`, each event with the command's ``cmd``
and the deployment's ``dep``. The parts, one job each:

- :mod:`.deployer`: one deployment, from ``accepted`` to ``succeeded``, ``running`` (a
  service), ``failed`` or ``rolled-back``;
- :mod:`.restarter`: the ``restart`` command;
- :mod:`.canceller`: the ``cancel`` command (a deployment, or a workflow, taken back);
- :mod:`.keeper`: services kept running (one per workflow), started again in their working
  directory (:mod:`.workdirs`);
- :mod:`.launcher`: the process of a step, with the environment it sees;
- :mod:`.workload` and :mod:`.record`: what runs now, and its record on disk, from which
  :mod:`.recovery` carries on after an agent restart.

Stopping the agent (:meth:`stop_all` with ``resume=True``, the default) stops every
service and reports ``stopped``, but keeps them in the record: the next start of the agent
starts them again. Retirement passes ``resume=False``.

The worker never dies of an exception: it is logged and the deployment reported ``failed``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from edgeplane.edge_agent.errors import AgentError, ModelsDirError
from edgeplane.edge_agent.events import EventSink
from edgeplane.edge_agent.execution.canceller import Canceller
from edgeplane.edge_agent.execution.deployer import Deployer
from edgeplane.edge_agent.execution.keeper import ServiceKeeper
from edgeplane.edge_agent.execution.launcher import StepLauncher
from edgeplane.edge_agent.execution.preflight import DEFAULT_CHECK_TIMEOUT, PreflightContext, clip
from edgeplane.edge_agent.execution.record import STATE_FILE, RecordFile
from edgeplane.edge_agent.execution.recovery import recover
from edgeplane.edge_agent.execution.restarter import Restarter
from edgeplane.edge_agent.execution.runner import KILL_GRACE
from edgeplane.edge_agent.execution.services import DEFAULT_GRACE
from edgeplane.edge_agent.execution.workdirs import KEEP_PER_WORKFLOW, Workdirs
from edgeplane.edge_agent.execution.workload import Workload
from edgeplane.edge_agent.inventory import scan_models
from edgeplane.edge_agent.secrets import Secrets
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import CommandRejected, Deploy, Failed, Stopped, WorkflowProcess

__all__ = ["KEEP_PER_WORKFLOW", "STATE_FILE", "Executor", "ExecutorOptions"]

log = get_logger(__name__)

_CLOSE: Final = object()


def _service_backoff() -> Backoff:
    return Backoff(initial=1.0, cap=60.0)


@dataclass(frozen=True)
class ExecutorOptions:
    """The executor's knobs, in seconds where they are times; the defaults are a real
    agent's (tests shorten the waits). ``agent_env`` is where a step's base variables come
    from (None: ``os.environ``); ``backoff`` makes the restart backoff of each service;
    ``keep`` working directories are kept per workflow."""

    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    service_grace: float = DEFAULT_GRACE
    kill_grace: float = KILL_GRACE
    backoff: Callable[[], Backoff] = field(default=_service_backoff)
    keep: int = KEEP_PER_WORKFLOW
    agent_env: Mapping[str, str] | None = None


class Executor:
    """Runs deployments in order in one worker thread; see the module docstring."""

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
        options: ExecutorOptions | None = None,
    ) -> None:
        options = options or ExecutorOptions()
        self.env = env
        self.sink = sink
        self.clock = clock = clock or SystemClock()
        self._record = RecordFile(state_dir)
        self._workload = Workload(self._record)
        workdirs = Workdirs(state_dir, clock, options.keep)
        launcher = StepLauncher(
            env,
            models_dir=models_dir,
            secrets=secrets,
            endpoints=endpoints,
            agent_env=os.environ if options.agent_env is None else options.agent_env,
            kill_grace=options.kill_grace,
            clock=clock,
        )
        self._keeper = ServiceKeeper(
            self._workload,
            launcher,
            workdirs,
            sink,
            grace=options.service_grace,
            backoff=options.backoff,
            clock=clock,
        )
        self._deployer = Deployer(
            workload=self._workload,
            workdirs=workdirs,
            launcher=launcher,
            keeper=self._keeper,
            sink=sink,
            preflight_context=functools.partial(
                _preflight_context, models_dir, secrets, endpoints, options.check_timeout, clock
            ),
            clock=clock,
        )
        self._restarter = Restarter(self._workload, self._keeper, sink)
        self._recovered = threading.Event()  # set once the worker carried on from the record
        self._canceller = Canceller(self._workload, sink, self._recovered)
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = False  # the worker is told to end: nothing queued would run
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
            reason = clip(f"not run: {self._workload.closing or 'the executor is closed'}")
            self.sink.emit(CommandRejected, cmd=cmd.id, dep=cmd.dep, reason=reason)
            return
        self._workload.submitted(cmd.dep, cmd.workflow.name, cmd.dry_run)
        self._queue.put(cmd)

    def running(self) -> list[str]:
        """The deployment ids running now: services, and the job the worker runs."""
        return self._workload.running()

    @property
    def loaded(self) -> bool:
        return True  # this is the real one

    def processes(self) -> list[WorkflowProcess]:
        """The workflows running now, as a ``pong`` reports them."""
        return self._workload.processes()

    def restart(self, workflow: str = "", cmd_id: str = "") -> None:
        """Restart the running services (only those of ``workflow`` if given) and run the
        current job of that workflow again; ``ack`` (op ``restart``) when done."""
        self._restarter.restart(workflow, cmd_id)

    def cancel(self, dep: str, workflow: str = "", cmd_id: str = "") -> None:
        """Take deployment ``dep`` (or, with ``workflow``, everything of that workflow) back
        for good: stopped, never started again here; ``cancelled`` for each deployment
        stopped, ``rejected`` when nothing matched (both naming ``cmd_id``)."""
        self._canceller.cancel(dep, workflow, cmd_id)

    def stop_all(self, reason: str, timeout: float = 10.0, *, resume: bool = True) -> None:
        """Stop every workflow (``stopped`` with ``reason`` for each) and refuse further
        deployments. ``resume``: services start again with the next executor (agent stop);
        False forgets them (retirement)."""
        services, job, process = self._workload.close(reason, resume=resume)
        stoppers = [
            threading.Thread(target=s.supervisor.stop, name="executor-stop", daemon=True)
            for s in services
        ]
        if process is not None:
            stoppers.append(threading.Thread(target=process.stop, daemon=True))
        for thread in stoppers:
            thread.start()
        deadline = self.clock.monotonic() + timeout
        for thread in stoppers:
            thread.join(max(0.0, deadline - self.clock.monotonic()))
        for service in services:
            self.sink.emit(Stopped, cmd=service.cmd, dep=service.dep, reason=clip(reason))
        self._workload.save()
        if job is not None:
            job.done.wait(max(0.0, deadline - self.clock.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything (as on an agent stop, so services resume next time) and end the
        worker thread."""
        if not self._workload.closing:
            self.stop_all("agent stopping", timeout)
        self._closed = True
        self._queue.put(_CLOSE)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        carry_on = functools.partial(recover, self._record, self._workload, self._keeper, self.sink)
        try:
            self._guarded(carry_on, cmd="", dep="")
        finally:
            self._recovered.set()
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, Deploy):
                deploy = functools.partial(self._deployer.deploy, item)
                self._guarded(deploy, cmd=item.id, dep=item.dep)

    def _guarded(self, task: Callable[[], None], *, cmd: str, dep: str) -> None:
        try:
            task()
        except Exception as exc:
            log.exception("deployment failed unexpectedly", cmd=cmd, dep=dep)
            reason = str(exc) if isinstance(exc, AgentError) else f"internal error: {exc!r}"
            with contextlib.suppress(Exception):
                self.sink.emit(Failed, cmd=cmd, dep=dep, reason=clip(reason))
        finally:
            job = self._workload.end_job()
            if job is not None:
                job.done.set()
                self._workload.save()


def _preflight_context(
    models_dir: Path | None,
    secrets: Secrets | None,
    endpoints: Mapping[str, str],
    timeout: float,
    clock: Clock,
) -> PreflightContext:
    """What preflight judges against, looked at afresh for each deployment."""
    problem = ""
    try:
        models = scan_models(models_dir)
    except ModelsDirError as exc:
        models, problem = {}, str(exc)
    return PreflightContext(
        models=models,
        secrets=secrets.names() if secrets is not None else None,
        endpoints=endpoints,
        timeout=timeout,
        clock=clock,
        models_problem=problem,
    )
