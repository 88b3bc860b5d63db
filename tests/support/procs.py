"""Real processes for integration tests: agents and controllers started as the user would,
with their output kept in a file that a failing test prints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

__all__ = ["PipedProc", "Proc", "start_piped_proc", "start_proc"]


class Proc:
    def __init__(self, process: asyncio.subprocess.Process, log: Path, argv: list[str]) -> None:
        self.process = process
        self.log = log
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signum)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    async def wait(self, timeout: float = 15.0) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.argv[2:4]} did not exit within {timeout}s; output:\n{self.output()[-3000:]}"
            ) from None

    async def terminate(self, timeout: float = 15.0) -> int:
        self.thaw()
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        self.thaw()
        self.signal(signal.SIGKILL)
        await self.process.wait()

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            await self.process.wait()


class PipedProc(Proc):
    """A process whose stdout and stderr go into one pipe that the test reads, as with
    ``2>&1 | tee``; what was read is kept in the log too. :meth:`close_reader` is the tee
    that a Ctrl-C ended."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log: Path,
        argv: list[str],
        reader: asyncio.StreamReader,
        transport: asyncio.ReadTransport,
    ) -> None:
        super().__init__(process, log, argv)
        self._reader = reader
        self._transport = transport

    async def read_until(self, text: str, timeout: float = 30.0) -> None:
        """Read the pipe line by line until a line holds ``text``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self._reader.readline()
                    with self.log.open("ab") as kept:
                        kept.write(line)
                    if not line:
                        raise AssertionError(f"no {text!r}: output ended\n{self.output()}")
                    if text.encode() in line:
                        return
        except TimeoutError:
            raise AssertionError(f"no {text!r} in {timeout}s:\n{self.output()[-3000:]}") from None

    def close_reader(self) -> None:
        """Nobody reads the pipe any more: the process's next write to it fails (EPIPE)."""
        self._transport.close()

    async def close(self) -> None:
        self.close_reader()
        await super().close()


async def start_piped_proc(
    module: str, args: list[str], log: Path, *, new_session: bool = False
) -> PipedProc:
    """Start ``python -m module args...`` with stdout and stderr into one pipe of ours;
    ``new_session``: in a session (and process group) of its own, for ``os.killpg``."""
    argv = [sys.executable, "-m", module, *args]
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            # Buffered, as at a user's shell: a line left in a buffer by a failed write
            # is written again at exit, which must not fail either.
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            start_new_session=new_session,
        )
    finally:
        os.close(write_end)
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
    )
    return PipedProc(process, log, argv, reader, transport)


async def start_proc(
    module: str, args: list[str], log: Path, env: dict[str, str] | None = None
) -> Proc:
    """Start ``python -m module args...`` with stdout and stderr into ``log``."""
    argv = [sys.executable, "-m", module, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=full_env
        )
    return Proc(process, log, argv)


def kill_strays(under: Path) -> list[int]:
    """Kill workflow steps left behind by agents a test killed.

    Steps run in process groups of their own and survive a SIGKILL of their agent on
    purpose (the agent cleans up at its next start); a test that ends first must not leave
    them running. They are recognised by ``EDGEPLANE_WORKDIR`` under ``under``.
    """
    marker = f"EDGEPLANE_WORKDIR={under}".encode()
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ.split(b"\0")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
