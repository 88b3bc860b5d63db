"""Retiring: the end of an environment, as the ``retire`` command asks.

The workflows are stopped (on a thread of their own: that may take seconds), then the
``ack`` event goes out; once the broker has it, offline/retired is published and then an
empty retained status (both acknowledged). Then the agent disconnects normally and
:func:`wipe_retired` removes the secrets file and the state (leaving a ``retired`` marker);
the run ends. All of it within :data:`RETIRE_WAIT`: past that, the agent retires anyway.
A connection lost half-way is made again, and offline/retired published again on it.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from edgeplane.edge_agent.credentials import CREDENTIAL_FILES
from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.link import BrokerLink, Phase
from edgeplane.edge_agent.outbox import Outbox, outbox_files
from edgeplane.edge_agent.state import retire_state_dir
from edgeplane.edge_agent.stopping import STOP_WORKFLOWS_WAIT
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Ack

__all__ = ["EXECUTOR_STATE", "RETIRE_WAIT", "Retirement", "wipe_retired"]

RETIRE_WAIT: Final = 30.0  # seconds a whole retirement may take
# What the executor keeps in the state directory: wiped with the rest on retirement (step
# output files may hold what a step printed).
EXECUTOR_STATE: Final = ("executor.json", "deployments")

log = get_logger(__name__)


class WorkflowsStopper(Protocol):
    def stop_all(self, reason: str, timeout: float = ..., *, resume: bool = ...) -> None: ...


class Wipeable(Protocol):
    def wipe(self) -> None: ...


class RetireStep(enum.Enum):
    STOPPING = "stopping"  # the workflows are being stopped (on another thread)
    ACKING = "acking"  # the retire ack is in the outbox, waiting for its PUBACK
    OFFLINE = "offline"  # offline/retired published, waiting for its PUBACK
    CLEARING = "clearing"  # the empty retained status published, waiting for its PUBACK
    DONE = "done"


class Retirement:
    """One retirement, from the command to the last PUBACK; see the module docstring."""

    def __init__(self, cmd: str, *, now: float, outbox: Outbox, link: BrokerLink) -> None:
        self.cmd = cmd
        self.deadline = now + RETIRE_WAIT
        self.step = RetireStep.STOPPING
        self._outbox = outbox
        self._link = link
        self._workflows_stopped = False  # set by the stopping thread
        self._ack_seq = 0
        self._mid: int | None = None  # of the publish the current step waits for

    @property
    def finished(self) -> bool:
        return self.step is RetireStep.DONE

    def stop_workflows(self, executor: WorkflowsStopper | None, wake: Callable[[], None]) -> None:
        log.warning("retiring: stopping workflows", cmd=self.cmd)
        if executor is None:
            self._workflows_stopped = True
            return

        def stop() -> None:
            try:
                executor.stop_all("retired", STOP_WORKFLOWS_WAIT, resume=False)
            except AgentError as exc:
                log.error("retiring: workflows not stopped cleanly", error=str(exc))
            finally:
                self._workflows_stopped = True
                wake()

        threading.Thread(target=stop, name="retire-stop", daemon=True).start()

    def advance(self, now: float, *, acknowledged: bool = False) -> None:
        """The next step, if its condition is met (``acknowledged``: the PUBACK it waits
        for came)."""
        if now >= self.deadline and self.step is not RetireStep.DONE:
            log.warning(
                "retiring: the broker did not acknowledge everything in time; retiring anyway",
                step=self.step.value,
            )
            self.step = RetireStep.DONE
            return
        match self.step:
            case RetireStep.STOPPING if self._workflows_stopped:
                ack = self._outbox.emit(Ack, cmd=self.cmd, op="retire", ok=True)
                self._ack_seq = ack.seq
                self.step = RetireStep.ACKING
            case RetireStep.ACKING if acknowledged and self._link.phase is Phase.ONLINE:
                self.publish_retired()
            case RetireStep.OFFLINE if acknowledged:
                self.step = RetireStep.CLEARING
                self._mid = self._link.clear_status()
            case RetireStep.CLEARING if acknowledged:
                log.info("retiring: retained status cleared")
                self.step = RetireStep.DONE

    def on_published(self, now: float, mid: int, event_seq: int | None) -> None:
        if event_seq == self._ack_seq or mid == self._mid:
            self.advance(now, acknowledged=True)

    @property
    def past_its_ack(self) -> bool:
        """Offline/retired was published: a new connection publishes it again at once."""
        return self.step in (RetireStep.OFFLINE, RetireStep.CLEARING)

    def publish_retired(self) -> None:
        self.step = RetireStep.OFFLINE
        self._mid = self._link.publish_offline("retired")


def wipe_retired(state_dir: Path, env: str, secrets: Wipeable | None, now: float) -> None:
    """After the DISCONNECT: the credentials and the state go; the marker stays."""
    if secrets is not None:
        try:
            secrets.wipe()
        except AgentError as exc:
            log.error("retiring: the secrets file could not be wiped", error=str(exc))
    wiped = [*outbox_files(state_dir), *(state_dir / name for name in EXECUTOR_STATE)]
    wiped += [state_dir / name for name in CREDENTIAL_FILES]
    marker = retire_state_dir(state_dir, env, wiped, now)
    log.warning("retired: this state directory will not run again", marker=str(marker))
