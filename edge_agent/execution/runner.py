"""Running one workflow step: a subprocess in a process group of its own.

A step is started with ``subprocess.Popen(argv, cwd=workdir, env=env,
start_new_session=True)``, stdin from ``/dev/null`` and stdout/stderr appended to
``{workdir}/{log_name}.stdout`` and ``.stderr``. The whole process group is the step: when
the step times out or is stopped, and also when its first process ends, whatever is left of
its group gets SIGTERM, a short grace, then SIGKILL. :class:`StepProcess` can be stopped
from any thread.

The environment a step sees (:func:`step_env`), later entries winning:

1. ``PATH``, ``HOME``, ``LANG``, ``TZ`` from the agent's own environment, if set
   (``PATH`` defaults to ``os.defpath``); nothing else of the agent's environment;
2. the step's ``env``;
3. ``EDGEPLANE_ENV`` (environment id), ``EDGEPLANE_DEPLOYMENT`` (deployment id),
   ``EDGEPLANE_WORKDIR``, ``EDGEPLANE_MODELS_DIR`` (when the agent has one),
   ``EDGEPLANE_BUCKET_<NAME>`` (each required bucket's path) and
   ``EDGEPLANE_ENDPOINT_<NAME>`` (each required endpoint's URL); ``<NAME>`` is the name
   upper-cased with every other character than A-Z and 0-9 replaced by ``_``;
4. the required secrets (only those named in ``requires.secrets``), as variables of the
   same names.

The result keeps the last lines of each output (:data:`TAIL_LINES` lines, at most
:data:`TAIL_CHARS` characters), with secret values masked.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.workflow import BucketNeed

__all__ = [
    "KILL_GRACE",
    "TAIL_CHARS",
    "TAIL_LINES",
    "StepProcess",
    "StepResult",
    "env_name",
    "group_alive",
    "group_members",
    "kill_group",
    "step_env",
    "tail",
]

TAIL_LINES: Final = 20
TAIL_CHARS: Final = 2048
KILL_GRACE: Final = 2.0  # seconds between SIGTERM and SIGKILL
BASE_VARIABLES: Final = ("PATH", "HOME", "LANG", "TZ")


@dataclass(frozen=True)
class StepResult:
    """How a step ended. ``exit_code`` None: it could not start, or a signal ended it
    (``problem`` says which)."""

    exit_code: int | None
    duration: float
    timed_out: bool = False
    timeout: float | None = None  # the timeout it ran over, when ``timed_out``
    stopped: bool = False
    problem: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.stopped

    def describe(self) -> str:
        """What happened, for a ``failed`` event: ``exited with code 3``, ``timed out``."""
        if self.timed_out:
            return f"ran over its {self.timeout:g} s timeout and was killed"
        if self.stopped:
            return "stopped"
        if self.problem:
            return self.problem
        return f"exited with code {self.exit_code}"


def env_name(name: str) -> str:
    """``results-2.v1`` -> ``RESULTS_2_V1``: a name as part of a variable name."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def step_env(
    step_env_vars: Mapping[str, str],
    *,
    agent_env: Mapping[str, str],
    env_id: str,
    dep: str,
    workdir: Path,
    models_dir: Path | None = None,
    buckets: Sequence[BucketNeed] = (),
    endpoints: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A step's environment; see the module docstring for the layers and their order.
    ``endpoints`` and ``secrets`` are only the required ones, name -> value."""
    env = {name: agent_env[name] for name in BASE_VARIABLES if name in agent_env}
    env.setdefault("PATH", os.defpath)
    env.update(step_env_vars)
    env["EDGEPLANE_ENV"] = env_id
    env["EDGEPLANE_DEPLOYMENT"] = dep
    env["EDGEPLANE_WORKDIR"] = str(workdir)
    if models_dir is not None:
        env["EDGEPLANE_MODELS_DIR"] = str(models_dir)
    for bucket in buckets:
        env[f"EDGEPLANE_BUCKET_{env_name(bucket.name)}"] = bucket.path
    for name, url in (endpoints or {}).items():
        env[f"EDGEPLANE_ENDPOINT_{env_name(name)}"] = url
    env.update(secrets or {})
    return env


class StepProcess:
    """One step's process group. ``start()``, then ``wait()`` in one thread; ``stop()``
    from any thread."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_name: str,
        mask: Callable[[str], str] = str,
        clock: Clock | None = None,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.stdout_path = cwd / f"{log_name}.stdout"
        self.stderr_path = cwd / f"{log_name}.stderr"
        self._mask = mask
        self._clock = clock or SystemClock()
        self._kill_grace = kill_grace
        self._process: subprocess.Popen[bytes] | None = None
        self._problem = ""
        self._started_at = 0.0
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._timed_out = False
        self._timeout: float | None = None
        self._result: StepResult | None = None

    @property
    def pgid(self) -> int | None:
        """The process group (the first process's pid), None before or without a start."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """Whether its first process runs now (started, not yet ended)."""
        process = self._process
        return process is not None and process.poll() is None

    def start(self) -> bool:
        """Start the step; False when it could not be started (``wait`` says why)."""
        self._started_at = self._clock.monotonic()
        with self._lock:  # a stop() from another thread sees the process, or no start
            if self._stopped.is_set():
                self._problem = "stopped before it started"
                return False
            try:
                with (
                    open(self.stdout_path, "ab") as stdout,
                    open(self.stderr_path, "ab") as stderr,
                ):
                    self._process = subprocess.Popen(
                        self.argv,
                        cwd=self.cwd,
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=stdout,
                        stderr=stderr,
                        start_new_session=True,
                    )
            except OSError as exc:
                self._problem = f"could not start: {_start_problem(exc, self.argv[0])}"
                return False
        return True

    def wait(self, timeout: float | None = None) -> StepResult | None:
        """The result once the step has ended (its group cleaned up), or None if its first
        process still runs after ``timeout`` seconds."""
        if self._result is not None:
            return self._result
        process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            self._clean_up_group(process.pid)
        self._result = self._make_result()
        return self._result

    def finish(self, timeout: float | None) -> StepResult:
        """Wait for the step to end; past ``timeout`` seconds, time it out."""
        return self.wait(timeout) or self.time_out(timeout)

    def time_out(self, timeout: float | None = None) -> StepResult:
        """End a step that ran over its ``timeout``: kill its whole group."""
        self._timed_out = True
        self._timeout = timeout
        self._terminate()
        result = self.wait()
        assert result is not None
        return result

    def stop(self) -> None:
        """Kill the step's whole group (SIGTERM, a grace, SIGKILL). Safe from any thread;
        the thread in ``wait`` then gets a result with ``stopped`` set."""
        with self._lock:
            self._stopped.set()
        self._terminate()

    def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return  # ended already: ``wait`` cleans up what is left of its group
        deadline = time.monotonic() + self._kill_grace
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self._kill_grace)
        kill_group(process.pid, grace=max(0.0, deadline - time.monotonic()))

    def _clean_up_group(self, pgid: int) -> None:
        if group_alive(pgid):
            kill_group(pgid, grace=self._kill_grace)

    def _make_result(self) -> StepResult:
        duration = max(0.0, self._clock.monotonic() - self._started_at)
        stopped = self._stopped.is_set()
        if self._process is None:
            return StepResult(
                exit_code=None, duration=duration, stopped=stopped, problem=self._problem
            )
        code = self._process.returncode
        problem = ""
        if code < 0:
            problem = f"killed by {_signal_name(-code)}"
        return StepResult(
            exit_code=code if code >= 0 else None,
            duration=duration,
            timed_out=self._timed_out,
            timeout=self._timeout if self._timed_out else None,
            stopped=stopped and not self._timed_out,
            problem=problem,
            stdout=tail(self.stdout_path, self._mask),
            stderr=tail(self.stderr_path, self._mask),
        )


def tail(path: Path, mask: Callable[[str], str] = str) -> str:
    """The last lines of a file, masked before being cut (so a secret at the edge of the
    kept part cannot leave half of itself behind)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4 * TAIL_CHARS))
            data = handle.read()
    except OSError:
        return ""
    text = mask(data.decode("utf-8", errors="replace"))
    lines = text.splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)  # the common case, an empty group, answered without /proc
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    return bool(group_members(pgid))  # zombies count for killpg; not for us


def kill_group(pgid: int, grace: float = KILL_GRACE) -> None:
    """SIGTERM to group ``pgid``, up to ``grace`` seconds for it to go, then SIGKILL."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    while True:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGKILL:
            return
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a process group: no event says it is empty
        if not group_alive(pgid):
            return
        sig = signal.SIGKILL


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid``, from ``/proc`` (Linux)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _start_problem(exc: OSError, program: str) -> str:
    if isinstance(exc, FileNotFoundError):
        missing = exc.filename if exc.filename not in (None, program) else program
        return f"no such file: {missing}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or program}"
    return f"{exc.strerror or exc}: {program}"
