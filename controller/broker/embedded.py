"""The embedded broker: rumqttd from the ``iotcore`` wheel, for machines without mosquitto.

rumqttd has no shutdown API, so it runs in a child process of its own (``python -c`` calling
:func:`serve`), stopped with SIGTERM. The child also exits when its stdin pipe closes, so it
never outlives an ``edgeplane up`` that was killed outright.

Everything is configured explicitly through a TOML file written next to its log: listeners on
loopback only, MQTT 5 on the main port (what the agent and controller speak), optionally
MQTT 3.1.1 on a second port for tools that default to it, and a 1 MiB payload limit.

Known limits of rumqttd 0.20 (measured): at most 100 retained messages are delivered per new
QoS 1 subscription (200 at QoS 0; hard-coded), no ACLs, no session expiry, no persistence
(retained messages are lost when it stops). Prefer mosquitto when it is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from edgeplane.controller.broker.process import (
    ChildBroker,
    close_pipes,
    free_port,
    port_bindable,
    port_open,
)
from edgeplane.controller.errors import BrokerStartError

__all__ = ["DEFAULT_MAX_PAYLOAD", "EmbeddedBroker", "embedded_available", "render_config", "serve"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024

# `python -c` puts the working directory first on sys.path; drop it so that a directory named
# like one of our packages in the user's working directory cannot shadow the installed one.
_CHILD_BOOTSTRAP = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "from edgeplane.controller.broker.embedded import serve; serve(sys.argv[1])"
)


def embedded_available() -> bool:
    """Whether the ``iotcore`` package (and its native broker) can be imported."""
    try:
        return importlib.util.find_spec("iotcore.iotcore") is not None
    except ImportError:
        return False


def _listener(section: str, name: str, host: str, port: int, max_payload_size: int) -> str:
    return f"""
[{section}]
name = "{name}"
listen = "{host}:{port}"
# Accept new connections back to back (milliseconds between accepts).
next_connection_delay_ms = 1
[{section}.connections]
# A client must send CONNECT within 10 s of opening its TCP connection.
connection_timeout_ms = 10000
# Largest PUBLISH payload accepted (rumqttd's default is only 20 KiB).
max_payload_size = {max_payload_size}
# Unacknowledged QoS 1 messages per connection.
max_inflight_count = 100
# Subscriptions may name any filter, wildcards included.
dynamic_filters = true
"""


def render_config(
    *,
    host: str,
    port: int,
    v311_port: int | None = None,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD,
) -> str:
    """The rumqttd TOML config: MQTT 5 on ``port``, MQTT 3.1.1 on ``v311_port`` if given."""
    text = f"""# rumqttd config written by edgeplane (controller/embedded.py) for this run only.
id = 0

[router]
id = 0
# Connections the broker accepts in all.
max_connections = 10010
# Packets written to one connection per router iteration.
max_outgoing_packet_count = 200
# Per-filter commit log: segments of up to 100 MiB, ten of them at most.
max_segment_size = 104857600
max_segment_count = 10

# MQTT 5 listener: the protocol of the edgeplane agent and controller.
{_listener("v5.1", "v5-1", host, port, max_payload_size)}"""
    if v311_port is not None:
        text += f"""
# MQTT 3.1.1 listener for tools that default to it (mosquitto_sub without -V mqttv5).
{_listener("v4.1", "v4-1", host, v311_port, max_payload_size)}"""
    return text


class EmbeddedBroker(ChildBroker):
    """The rumqttd broker of ``iotcore`` in a child process, with the interface of
    :class:`edgeplane.controller.broker.mosquitto.MosquittoProcess` (see ``BrokerProcess``)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        v311_port: int | None = None,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.v311_port = v311_port
        self.max_payload_size = max_payload_size
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def v311_url(self) -> str | None:
        return f"mqtt://{self.host}:{self.v311_port}" if self.v311_port is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "rumqttd.toml"

    def _ports(self) -> list[int]:
        return [p for p in (self.port, self.v311_port) if p is not None]

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_config(
                host=self.host,
                port=self.port,
                v311_port=self.v311_port,
                max_payload_size=self.max_payload_size,
            )
        )
        return self.config_path

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and block until every listener accepts connections."""
        if self.running:
            return
        if not embedded_available():
            raise BrokerStartError(
                "the embedded broker needs the iotcore package: pip install iotcore"
            )
        for port in self._ports():
            if not port_bindable(self.host, port):
                raise BrokerStartError(
                    f"cannot start the embedded broker: {self.host}:{port} is already in use"
                )
        config = self.write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_BOOTSTRAP, str(config)],
                stdin=subprocess.PIPE,  # the child exits when this pipe closes
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C goes to `up`, which stops us in order
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                close_pipes(self._process)
                self._process = None
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerStartError(
                    f"the embedded broker exited with status {code} during startup: {tail.strip()}"
                )
            if all(port_open(self.host, port) for port in self._ports()):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerStartError(
            f"the embedded broker did not listen on {self._ports()} within {timeout}s"
        )


def _exit_with_parent(stdin: IO[bytes]) -> None:
    try:
        stdin.read()  # returns when the parent's end of the pipe closes
    finally:
        os._exit(0)


def serve(config_path: str) -> None:
    """Run rumqttd in this process until killed or until stdin closes (the child's entry)."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # rumqttd reports every packet through tracing spans logged at ERROR level: keep them out.
    logging.getLogger("rumqttd").setLevel(logging.CRITICAL)
    logging.getLogger("tracing").setLevel(logging.CRITICAL)
    threading.Thread(
        target=_exit_with_parent, args=(sys.stdin.buffer,), name="parent-watch", daemon=True
    ).start()
    from iotcore.iotcore import IotCoreBroker

    try:
        IotCoreBroker(config_path=config_path).run_forever()
    except OSError as exc:  # a port taken between the parent's check and our bind
        print(f"embedded broker: {exc}", file=sys.stderr, flush=True)
        os._exit(1)  # not sys.exit: the parent-watch thread is blocked reading stdin
