"""Starting and stopping a private mosquitto: for ``edgeplane up``, the demo and the tests.

The committed config (``mosquitto/*.conf``, shipped in the wheel as
``broker/edgeplane.conf``) holds the policy; this module appends what only the running
process knows: the listener, the data directory and, when we run as root, ``user root``
(mosquitto would otherwise drop to its own user and lose the rights to a root-owned data
directory).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from edgeplane.controller.broker.process import ChildBroker, free_port, port_bindable, port_open
from edgeplane.controller.errors import BrokerStartError

__all__ = ["MosquittoProcess", "find_mosquitto", "packaged_mosquitto_config"]

_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def packaged_mosquitto_config() -> Path:
    """The development mosquitto config shipped in the wheel (a copy of
    ``mosquitto/edgeplane.conf``; a test keeps the two the same)."""
    resource = resources.files("edgeplane.controller.broker").joinpath("edgeplane.conf")
    return Path(str(resource))


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or in the usual sbin directories, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in _SEARCH_PATH:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _websockets_domain(host: str) -> tuple[str, ...]:
    """The line that keeps a websockets listener on ``host``'s address family: mosquitto
    2.0.11 binds a websockets listener to every interface whatever its address
    (eclipse-mosquitto/mosquitto#3045) unless ``socket_domain`` follows ``protocol``.
    Checked on 2.0.11: with ``socket_domain ipv4`` it listens on 127.0.0.1 only."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return ()  # a name: mosquitto resolves it, and may bind both families
    return (f"socket_domain ipv{version}",)


class MosquittoProcess(ChildBroker):
    """A mosquitto child process with its own config and data directory.

    ``start()`` and ``stop()`` may be called repeatedly: the port and the data directory
    stay the same, so a restart keeps persisted retained messages and sessions.

    The MQTT listener ``listener PORT HOST`` is appended to the config, unless
    ``append_listener`` is false: then the config declares it and ``port`` must name it.
    ``websockets_port`` adds a second listener speaking MQTT over WebSockets on ``host``.
    """

    def __init__(
        self,
        base_config: Path,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        extra_lines: tuple[str, ...] = (),
        append_listener: bool = True,
        websockets_port: int | None = None,
    ) -> None:
        if not append_listener and port is None:
            raise ValueError("a config that declares its own listener needs its port given")
        self.base_config = base_config
        self.data_dir = data_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.binary = binary or find_mosquitto()
        self.extra_lines = extra_lines
        self.append_listener = append_listener
        self.websockets_port = websockets_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [self.base_config.read_text(), "# --- appended by edgeplane for this process ---"]
        if self.append_listener:
            lines.append(f"listener {self.port} {self.host}")
        if self.websockets_port is not None:
            lines += [
                f"listener {self.websockets_port} {self.host}",
                "protocol websockets",
                *_websockets_domain(self.host),
            ]
        lines += [
            f"persistence_location {self.data_dir}/",
            f"log_dest file {self.log_path}",
            *self.extra_lines,
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        config = self.data_dir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and block until every listener accepts connections."""
        if self.running:
            return
        if self.binary is None:
            raise BrokerStartError("no mosquitto binary found on PATH or in /usr/sbin")
        for port in (self.port, self.websockets_port):
            if port is not None and not port_bindable(self.host, port):
                raise BrokerStartError(
                    f"cannot start mosquitto: {self.host}:{port} is already in use"
                )
        listeners = [p for p in (self.port, self.websockets_port) if p is not None]
        config = self.write_config()
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._process = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = ""
                if self._process.stderr:
                    err = self._process.stderr.read().decode(errors="replace")
                    self._process.stderr.close()
                self._process = None
                detail = (err.strip() + "\n" + self._log_since(log_start)).strip()
                raise BrokerStartError(
                    f"mosquitto exited during startup on port {self.port}: {detail}"
                )
            if all(port_open(self.host, port) for port in listeners):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def _log_since(self, offset: int, limit: int = 2000) -> str:
        """What mosquitto logged since ``offset``: it logs its startup errors to the file."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-limit:]
        except OSError:
            return ""
