"""The executor, loaded when there is something to execute.

Most of the time an agent only heartbeats. Importing the execution code (preflight probes,
step runner, service supervisor, PEP 440 specifiers) costs about 2 MB of memory that such an
agent never uses, so the agent holds this stand-in instead: it builds the real executor at
the first deployment or restart, or at once when the state directory holds an executor
record (services to resume, an interrupted job to report).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeplane.edge_agent.agent import AgentExecutor
    from edgeplane.shared.messages import Deploy, WorkflowProcess

__all__ = ["OnDemandExecutor"]


class OnDemandExecutor:
    def __init__(self, create: Callable[[], AgentExecutor], *, needed_now: bool) -> None:
        self._create = create
        self._needed_now = needed_now
        self._real: AgentExecutor | None = None
        self._started = False
        self._lock = threading.Lock()  # stop_all may come from the retirement's thread

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def _executor(self) -> AgentExecutor:
        with self._lock:
            if self._real is None:
                self._real = self._create()
                if self._started:
                    self._real.start()
            return self._real

    def start(self) -> None:
        self._started = True
        if self._needed_now:
            self._executor()

    def submit(self, command: Deploy) -> None:
        self._executor().submit(command)

    def restart(self, workflow: str = "", cmd_id: str = "") -> None:
        self._executor().restart(workflow, cmd_id)  # it answers with the ack itself

    def cancel(self, dep: str, workflow: str = "", cmd_id: str = "") -> None:
        self._executor().cancel(dep, workflow, cmd_id)  # it answers itself

    def running(self) -> list[str]:
        real = self._real
        return [] if real is None else real.running()

    def processes(self) -> list[WorkflowProcess]:
        """What runs now (none when the executor was never loaded: it is not loaded for it)."""
        real = self._real
        return [] if real is None else real.processes()

    def stop_all(self, reason: str, timeout: float = 10.0, *, resume: bool = True) -> None:
        with self._lock:
            real = self._real
        if real is not None:
            real.stop_all(reason, timeout, resume=resume)

    def close(self) -> None:
        with self._lock:
            real = self._real
        if real is not None:
            real.close()
