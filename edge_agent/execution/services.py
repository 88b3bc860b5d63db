"""Keeping a service's last step running.

A :class:`ServiceSupervisor` starts the step and waits out its start-up grace (default
3 s) in the caller's thread: a process that exits within the grace of its first start
*failed to start* and is not restarted. Once up, a thread of its own waits for the process
and starts it again whenever it exits, after a capped, jittered backoff
(:class:`shared.backoff.Backoff`), reporting every restart through ``on_restart``. A run
that lasted ``healthy_after`` seconds resets the backoff, so a service that crashes once a
day restarts fast every time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from edgeplane.edge_agent.execution.runner import StepProcess, StepResult
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.logs import get_logger

__all__ = ["DEFAULT_GRACE", "ServiceSupervisor"]

DEFAULT_GRACE: Final = 3.0
HEALTHY_AFTER: Final = 60.0

log = get_logger(__name__)

# restarts so far, the exit code of the run that ended (None: signal or no start), delay
RestartHook = Callable[[int, int | None, float], None]


class ServiceSupervisor:
    """One service process, kept running. ``launch`` makes a new (unstarted)
    :class:`StepProcess` for each start."""

    def __init__(
        self,
        launch: Callable[[], StepProcess],
        *,
        name: str,
        on_restart: RestartHook,
        on_launch: Callable[[StepProcess], None] | None = None,
        grace: float = DEFAULT_GRACE,
        backoff: Backoff | None = None,
        healthy_after: float = HEALTHY_AFTER,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.restarts = 0
        self._launch = launch
        self._on_restart = on_restart
        self._on_launch = on_launch
        self._grace = grace
        self._backoff = backoff or Backoff(initial=1.0, cap=60.0)
        self._healthy_after = healthy_after
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: StepProcess | None = None
        self._thread: threading.Thread | None = None

    @property
    def pgid(self) -> int | None:
        process = self._process  # one read: no lock, so hooks may ask from any thread
        return process.pgid if process is not None else None

    @property
    def running(self) -> bool:
        """Whether its process runs now (not between an exit and the next start)."""
        process = self._process
        return process is not None and process.alive

    def start(self) -> StepResult | None:
        """Start the service and wait out its grace. None: it is up, and kept running from
        now on; a result: it ended within the grace (failed to start, or was stopped)."""
        with self._lock:
            if self._stopping.is_set():
                return StepResult(exit_code=None, duration=0.0, stopped=True)
            process = self._spawn()
        self._launched(process)
        result = process.wait(self._grace)
        if result is not None:
            return result
        self._thread = threading.Thread(
            target=self._supervise, args=(process,), name=f"service-{self.name}", daemon=True
        )
        self._thread.start()
        return None

    def stop(self, join_timeout: float | None = None) -> None:
        """Stop the process (its whole group) and the supervision; safe from any thread."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            process.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)

    def _spawn(self) -> StepProcess:
        """A new process, started; the caller holds the lock."""
        process = self._launch()
        process.start()
        self._process = process
        return process

    def _launched(self, process: StepProcess) -> None:
        """Tell the hook, outside the lock (the hook may take locks of its own)."""
        if self._on_launch is None:
            return
        try:
            self._on_launch(process)
        except Exception:
            log.exception("service launch hook failed", service=self.name)

    def _supervise(self, process: StepProcess) -> None:
        started = self._clock.monotonic()
        while True:
            result = process.finish(None)
            if self._stopping.is_set():
                return
            if self._clock.monotonic() - started >= self._healthy_after:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.warning(
                "service exited", service=self.name, outcome=result.describe(), restart_in=delay
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    process = self._spawn()
                except Exception:
                    log.exception("service cannot be started again", service=self.name)
                    return
                self.restarts += 1
            self._launched(process)
            started = self._clock.monotonic()
            try:
                self._on_restart(self.restarts, result.exit_code, delay)
            except Exception:
                log.exception("service restart report failed", service=self.name)
