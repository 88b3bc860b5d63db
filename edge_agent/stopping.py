"""A clean stop (SIGTERM, SIGINT, SIGHUP): the workflows stop (services start again with the next
run), their ``stopped`` events go out if the connection allows, offline/shutdown is
published and its PUBACK awaited (:data:`SHUTDOWN_WAIT` at most), then a normal
DISCONNECT, so the broker discards the will.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.event_pump import EventPump
from edgeplane.edge_agent.link import BrokerLink, Phase
from edgeplane.shared.clock import Clock
from edgeplane.shared.logs import get_logger

__all__ = ["SHUTDOWN_WAIT", "STOP_WORKFLOWS_WAIT", "CleanStop"]

SHUTDOWN_WAIT: Final = 5.0  # seconds a stop waits for the broker to take offline/shutdown
STOP_WORKFLOWS_WAIT: Final = 10.0  # seconds a stop (or a retirement) gives the workflows

log = get_logger(__name__)


class RunningWorkflows(Protocol):
    def running(self) -> list[str]: ...

    def stop_all(self, reason: str, timeout: float = ..., *, resume: bool = ...) -> None: ...


class CleanStop:
    """The stop of one run: requested (from a signal handler), begun, finished."""

    def __init__(
        self, link: BrokerLink, pump: EventPump, workflows: RunningWorkflows | None, clock: Clock
    ) -> None:
        self.requested = False
        self.finished = False
        self.deadline = math.inf  # set when the stop begins
        self._link = link
        self._pump = pump
        self._workflows = workflows
        self._clock = clock
        self._shutdown_mid: int | None = None

    def request(self) -> None:
        """Safe to call from a signal handler."""
        self.requested = True

    def step(self, now: float) -> None:
        """Begin the stop (once), then give up waiting at the deadline."""
        if self.deadline == math.inf:
            self._begin()
        if now >= self.deadline:
            log.warning("stop: no acknowledgement of offline/shutdown in time")
            self.finished = True

    def _begin(self) -> None:
        log.info("stopping", phase=self._link.phase.value)
        self._stop_workflows()
        self.deadline = self._clock.monotonic() + SHUTDOWN_WAIT
        if self._link.phase in (Phase.SUBSCRIBING, Phase.ONLINE):
            self.publish_shutdown()
        elif self._link.phase is Phase.IDLE:
            self.finished = True
        # CONNECTING: offline/shutdown goes out once the CONNACK arrives.

    def _stop_workflows(self) -> None:
        """Stop the services (they start again with the agent) and the job running, and
        send the ``stopped`` events before offline/shutdown if the connection allows."""
        if self._workflows is None or not self._workflows.running():
            return
        try:
            self._workflows.stop_all("agent stopping", STOP_WORKFLOWS_WAIT)
        except AgentError as exc:
            log.error("workflows not stopped cleanly", error=str(exc))
        self._pump.send()

    def publish_shutdown(self) -> None:
        self._shutdown_mid = self._link.publish_offline("shutdown")

    def on_published(self, mid: int) -> bool:
        """True for the PUBACK of offline/shutdown: the stop is done."""
        if mid != self._shutdown_mid:
            return False
        log.info("offline/shutdown acknowledged")
        self.finished = True
        return True
