"""Real processes for integration tests: agents and controllers started as the user would,
with their output kept in a file that a failing test prints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

__all__ = ["Proc", "start_proc"]


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
