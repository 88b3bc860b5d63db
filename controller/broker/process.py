"""A broker as a child process: what mosquitto and the embedded broker share (the child,
its pid, two ways to stop it) and the loopback port helpers both need."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Protocol, Self

__all__ = [
    "BrokerProcess",
    "ChildBroker",
    "close_pipes",
    "free_port",
    "port_bindable",
    "port_open",
]


class BrokerProcess(Protocol):
    """What ``edgeplane up`` needs of a broker it starts: mosquitto or the embedded one."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    @property
    def log_path(self) -> Path: ...

    def start(self, timeout: float = 10.0) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now. Unlike :func:`port_open` this also
    sees a port held by a socket that does not listen (an outgoing connection's own port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ChildBroker:
    """What both broker launchers share: one child process, its pid and state, and the
    two ways to stop it. Subclasses set ``_process`` in ``start()``."""

    _process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after ``timeout``.
        Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        close_pipes(process)

    def kill(self) -> None:
        """SIGKILL: nothing is saved."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        close_pipes(process)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
