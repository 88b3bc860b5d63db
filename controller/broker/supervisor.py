"""The child processes of one ``edgeplane up`` or ``edgeplane demo``: a broker it started,
the controller and agents.

Children run in sessions of their own, so a Ctrl-C at the terminal reaches only the parent,
which stops them in order: the children in reverse order of starting (SIGTERM, then SIGKILL
after a grace period), then the broker. :meth:`Supervisor.keep_running` restarts what exits
on its own, with capped, jittered backoff; a child that exits with status 2 (a bad setting)
or 3 (a controller that found another one active on its broker and topic root):
restarting cannot help, so it ends the run with :class:`ChildFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from edgeplane.controller.broker.process import BrokerProcess
from edgeplane.controller.errors import AnotherController, BrokerStartError, ControllerError
from edgeplane.shared.backoff import Backoff

__all__ = ["STOP_GRACE", "ChildFailed", "ChildProcess", "Supervisor", "exit_text"]

STOP_GRACE: Final = 10.0  # seconds a child gets to stop cleanly before SIGKILL
BAD_SETTING: Final = 2  # the exit status of a bad setting, which no restart can fix
# Exit statuses no restart can fix, and what they mean.
HOPELESS: Final = {
    BAD_SETTING: "a bad setting",
    AnotherController.EXIT_STATUS: "another controller is active on this broker and topic root",
}
STEADY: Final = 60.0  # seconds after which an exit is a new failure, not a crash loop
BROKER_POLL: Final = 0.5  # seconds between looks at a started broker


@dataclass(eq=False)
class ChildProcess:
    """One child process: ``argv`` run with ``env``, its output going to ``log_path``
    (appended) or, without one, to ours."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None
    process: asyncio.subprocess.Process | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.started_at = time.monotonic()
        with contextlib.ExitStack() as files:
            log = files.enter_context(self.log_path.open("ab")) if self.log_path else None
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT if log else None,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches the parent only; it stops us in order
            )

    async def wait(self) -> int:
        """Its exit status once it exits (negative: the signal that killed it)."""
        assert self.process is not None, "start() first"
        return await self.process.wait()

    async def stop(self, grace: float = STOP_GRACE) -> bool:
        """SIGTERM, up to ``grace`` seconds for a clean stop, then SIGKILL. False when it
        had to be killed. Safe to call at any time and more than once."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return False
        return True

    async def kill(self) -> None:
        """SIGKILL, as a crash would: an agent says no goodbye, the broker sends its will."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log, for a failure report."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ChildFailed(ControllerError):
    """A child exited in a way restarting cannot fix."""


def exit_text(code: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _quiet(_: str) -> None:
    pass


class Supervisor:
    """A broker started for the run (if any) and the children, stopped on exit from
    ``async with``: the children in reverse order of starting, then the broker."""

    def __init__(self, say: Callable[[str], None] = _quiet, *, grace: float = STOP_GRACE) -> None:
        self.say = say
        self.grace = grace
        self.broker: BrokerProcess | None = None
        self.children: list[ChildProcess] = []

    async def start_broker(self, broker: BrokerProcess) -> None:
        """Start ``broker`` and wait until it listens (in a thread: it blocks)."""
        self.broker = broker  # first: a broker that fails half-started is stopped too
        await _to_thread_to_the_end(broker.start)

    def add(self, child: ChildProcess) -> ChildProcess:
        """Take ``child`` (unstarted) into the run: it is stopped with the others."""
        if child not in self.children:
            self.children.append(child)
        return child

    async def start(self, child: ChildProcess) -> None:
        """Start ``child``, taken into the run if it is not yet."""
        await self.add(child).start()

    async def keep_running(self, on_restart: Callable[[], None] = lambda: None) -> None:
        """Restart every child (and the broker) that exits on its own, calling
        ``on_restart`` after each restart, until cancelled; raise :class:`ChildFailed` for a
        child that restarting cannot help. The children must be started."""
        try:
            async with asyncio.TaskGroup() as group:
                for child in self.children:
                    group.create_task(self._keep(child, on_restart), name=f"keep-{child.name}")
                if self.broker is not None:
                    group.create_task(
                        self._keep_broker(self.broker, on_restart), name="keep-broker"
                    )
        except BaseExceptionGroup as failures:
            failed = failures.subgroup(ChildFailed)
            if failed is None:
                raise
            raise failed.exceptions[0] from None

    async def _keep(self, child: ChildProcess, on_restart: Callable[[], None]) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            code = await child.wait()
            if code in HOPELESS:
                raise ChildFailed(
                    f"{child.name} exited with status {code} ({HOPELESS[code]}; see its "
                    "message above): not restarting it"
                )
            if time.monotonic() - child.started_at > STEADY:
                backoff.reset()
            delay = backoff.next_delay()
            child.restarts += 1
            self.say(
                f"{child.name} (pid {child.pid}) {exit_text(code)} unexpectedly: "
                f"restarting it in {delay:.1f}s (restart #{child.restarts})"
            )
            await asyncio.sleep(delay)
            await child.start()
            on_restart()

    async def _keep_broker(self, broker: BrokerProcess, on_restart: Callable[[], None]) -> None:
        """Restart a broker that dies (mosquitto keeps its persisted state)."""
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            await asyncio.sleep(BROKER_POLL)  # a Popen has no exit to wait on here: look
            if broker.running:
                continue
            delay = backoff.next_delay()
            self.say(f"the broker exited unexpectedly (log: {broker.log_path}): restarting it")
            try:
                await _to_thread_to_the_end(broker.start)
            except BrokerStartError as exc:
                self.say(f"could not restart the broker: {exc}; next try in {delay:.1f}s")
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            on_restart()

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            if not await child.stop(self.grace):
                self.say(f"{child.name} did not stop within {self.grace:g}s: killed it")
        if self.broker is not None:
            await _to_thread_to_the_end(self.broker.stop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_all()


async def _to_thread_to_the_end(work: Callable[[], None]) -> None:
    """``work`` in a worker thread, waited for to its end even if we are cancelled meanwhile
    (a broker left half started by a Ctrl-C would outlive us)."""
    done = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait([done])
        raise
