"""A site's broker as ``edgeplane broker init`` prepares it, for tests: the directory written
in a temporary place on free ports, mosquitto started with ``mosquitto -c DIR/mosquitto.conf``
exactly as an operator runs it, a raw paho MQTT 5 client for attacks and checks, and
:class:`DynsecAdmin`, which creates broker clients and roles through
``$CONTROL/dynamic-security/v1`` as the controller's user.

Typical use (the ``site`` fixture of tests/test_broker_init.py)::

    site = SiteBroker.create(tmp_path / "site", TopicRoot("test/x/edgeplane/v1"))
    site.start()
    with DynsecAdmin(site) as admin:
        agent = admin.add_environment("line-a")          # an Identity with a fresh password
    with site.client(agent) as client:
        assert client.subscribe(site.root.cmd("line-a")) == [1]
"""

from __future__ import annotations

import json
import queue
import secrets
import ssl
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeplane.controller.broker.dynsec import role_json
from edgeplane.controller.broker.mosquitto import find_mosquitto
from edgeplane.controller.broker.process import ChildBroker, close_pipes, free_port, port_open
from edgeplane.controller.broker.site import SiteOptions, SiteResult, init_site
from edgeplane.controller.core.acl import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    OperatorRole,
    Role,
    env_role,
    env_username,
    operator_role,
)
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "BAD_CREDENTIALS",
    "NOT_AUTHORIZED",
    "DynsecAdmin",
    "DynsecError",
    "Identity",
    "NoSession",
    "Received",
    "SiteBroker",
    "SiteClient",
]

NOT_AUTHORIZED = 135  # MQTT 5 reason code: CONNACK, SUBACK and PUBACK
BAD_CREDENTIALS = 134  # MQTT 5 CONNACK: bad user name or password
LOCALHOST = "localhost"


@dataclass(frozen=True, slots=True)
class Identity:
    """A broker identity: user name, password and, when the broker binds one, client id."""

    username: str
    password: str
    client_id: str | None = None

    @classmethod
    def from_settings(cls, path: Path) -> Identity:
        """The identity in a settings file that ``broker init`` wrote."""
        with path.open("rb") as fh:
            values = tomllib.load(fh)
        return cls(values["username"], values["password"])

    def with_password(self, password: str) -> Identity:
        return Identity(self.username, password, self.client_id)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class NoSession(Exception):
    """No MQTT answer at all: TCP or the TLS handshake failed, or the broker closed the
    connection before its CONNACK (plain text on a TLS port)."""


class SiteBroker(ChildBroker):
    """The site directory of one ``broker init`` and the mosquitto that runs it."""

    def __init__(self, result: SiteResult) -> None:
        self.result = result
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(
        cls,
        directory: Path,
        root: TopicRoot,
        *,
        websockets: bool = True,
        hosts: Sequence[str] = (LOCALHOST, "127.0.0.1"),
    ) -> Self:
        """``broker init`` in ``directory`` on free ports (never 1883 or 8883)."""
        options = SiteOptions(
            directory,
            port=free_port(),
            ws_port=free_port() if websockets else None,
            hosts=tuple(hosts),
            topic_root=root,
        )
        return cls(init_site(options))

    @property
    def directory(self) -> Path:
        return self.result.layout.root

    @property
    def root(self) -> TopicRoot:
        return self.result.options.topic_root

    @property
    def port(self) -> int:
        return self.result.options.port

    @property
    def ws_port(self) -> int | None:
        return self.result.options.ws_port

    @property
    def ca_file(self) -> Path:
        return self.result.layout.ca_cert

    @property
    def url(self) -> str:
        return self.result.broker_url

    @property
    def log_path(self) -> Path:
        return self.result.layout.log

    @property
    def controller(self) -> Identity:
        return Identity.from_settings(self.result.layout.controller_toml)

    @property
    def admin(self) -> Identity:
        return Identity.from_settings(self.result.layout.admin_toml)

    def start(self, timeout: float = 10.0) -> None:
        """``mosquitto -c DIR/mosquitto.conf``, until its TLS port accepts connections."""
        if self.running:
            return
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("no mosquitto binary: the site tests need one")
        self._process = subprocess.Popen(
            [binary, "-c", str(self.result.layout.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                close_pipes(self._process)
                self._process = None
                raise RuntimeError(f"mosquitto exited during startup: {err}")
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.02)  # polling a port to come up, not synchronising on an event
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def client(
        self,
        identity: Identity | None,
        *,
        ca_file: Path | Literal["site"] | None = "site",
        port: int | None = None,
        transport: Literal["tcp", "websockets"] = "tcp",
        client_id: str | None = None,
    ) -> SiteClient:
        """A raw paho MQTT 5 client of this broker (TLS with the site's CA unless
        ``ca_file`` says otherwise: None is plain text). Not yet connected."""
        return SiteClient(
            LOCALHOST,
            port if port is not None else self.port,
            identity,
            ca_file=self.ca_file if ca_file == "site" else ca_file,
            transport=transport,
            client_id=client_id,
        )


class _ClosingSslSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho leaves such a socket open (a
    ResourceWarning, an error under the test settings)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class SiteClient:
    """A hand-written paho MQTT 5 client: connect, subscribe and publish each wait for the
    broker's answer and return its reason codes; messages are queued for :meth:`next`."""

    def __init__(
        self,
        host: str,
        port: int,
        identity: Identity | None,
        *,
        ca_file: Path | None,
        transport: Literal["tcp", "websockets"] = "tcp",
        client_id: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        if client_id is None and identity is not None:
            client_id = identity.client_id
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or _random_id(),
            protocol=mqtt.MQTTv5,
            transport=transport,
        )
        if identity is not None:
            self.paho.username_pw_set(identity.username, identity.password)
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            context.sslsocket_class = _ClosingSslSocket
            self.paho.tls_set_context(context)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._answers: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect

    # paho's callbacks run on its network thread; each answer goes to the waiting caller.
    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        self._answers.put(("connack", code.value))

    def _on_subscribe(self, _c: Any, _u: Any, _m: int, codes: list[ReasonCode], _p: Any) -> None:
        self._answers.put(("suback", [code.value for code in codes]))

    def _on_publish(self, _c: Any, _u: Any, _m: int, code: ReasonCode, _p: Any) -> None:
        self._answers.put(("puback", code.value))

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, bytes(message.payload), bool(message.retain)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        self._answers.put(("disconnect", code.value))

    def _answer(self, kind: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, value = self._answers.get(timeout=left)
            except queue.Empty:
                break
            if got == kind:
                return value
            if got == "disconnect":
                raise ConnectionError(f"disconnected by the broker (reason {value})")
        raise TimeoutError(f"no {kind} within {timeout}s")

    def connect(self, timeout: float = 10.0) -> int:
        """The CONNACK reason code (0: accepted; after a refusal the client is stopped, so
        that paho does not try again), or :class:`NoSession`."""
        try:
            self.paho.connect(self.host, self.port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            raise NoSession(f"{type(exc).__name__}: {exc}") from exc
        self.paho.loop_start()
        try:
            code: int = self._answer("connack", timeout)
        except (ConnectionError, TimeoutError) as exc:
            self._halt()
            raise NoSession(f"no CONNACK: {exc}") from exc
        if code != 0:
            self._halt()
        return code

    def _halt(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def subscribe(self, *filters: str, timeout: float = 10.0) -> list[int]:
        """SUBACK reason codes, one per filter, in one SUBSCRIBE (1: granted at QoS 1)."""
        result, _ = self.paho.subscribe([(f, 1) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe failed: {mqtt.error_string(result)}")
        codes: list[int] = self._answer("suback", timeout)
        return codes

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"{}",
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> int:
        """The PUBACK reason code of a QoS 1 publish (0: accepted, 135: not authorized)."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        code: int = self._answer("puback", timeout)
        return code

    def next(self, timeout: float = 10.0) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout}s") from None

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0
    ) -> list[Received]:
        """Every message up to and including the first one ``predicate`` accepts."""
        seen: list[Received] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.001))
            seen.append(message)
            if predicate(message):
                return seen

    def close(self) -> None:
        self._halt()

    def __enter__(self) -> Self:
        code = self.connect()
        if code != 0:
            raise ConnectionError(f"connection refused with reason {code}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _random_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class DynsecError(Exception):
    """The plugin answered a command with an error."""


class DynsecAdmin:
    """Broker clients and roles made through ``$CONTROL/dynamic-security/v1`` as the
    controller's user (what the controller itself will do): a context manager."""

    def __init__(self, site: SiteBroker) -> None:
        self.site = site
        self.client = site.client(site.controller)

    def __enter__(self) -> Self:
        self.client.__enter__()
        if self.client.subscribe(CONTROL_RESPONSE_TOPIC) != [1]:
            raise DynsecError(f"the controller may not subscribe {CONTROL_RESPONSE_TOPIC}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return its response (:class:`DynsecError` on an error)."""
        correlation = uuid.uuid4().hex
        body = {"commands": [{"command": command, "correlationData": correlation, **fields}]}
        code = self.client.publish(CONTROL_TOPIC, json.dumps(body))
        if code != 0:
            raise DynsecError(f"{CONTROL_TOPIC} refused the controller's publish ({code})")
        for message in self.client.wait_for(lambda m: m.topic == CONTROL_RESPONSE_TOPIC):
            for response in json.loads(message.payload).get("responses", []):
                if response.get("correlationData") == correlation:
                    if "error" in response:
                        raise DynsecError(f"{command}: {response['error']}")
                    return dict(response)
        raise DynsecError(f"{command}: no response")  # pragma: no cover (wait_for raises)

    def add_role(self, role: Role) -> None:
        self.command("createRole", **role_json(role))

    def add_client(self, username: str, rolename: str, *, client_id: str | None = None) -> Identity:
        """A new client with a fresh random password and the role ``rolename``."""
        password = secrets.token_urlsafe(24)
        fields: dict[str, Any] = {
            "username": username,
            "password": password,
            "roles": [{"rolename": rolename}],
        }
        if client_id is not None:
            fields["clientid"] = client_id
        self.command("createClient", **fields)
        return Identity(username, password, client_id)

    def add_environment(self, env: str, generation: int = 0) -> Identity:
        """Environment ``env``'s role (core/acl.env_role) and client (client id = env)."""
        role = env_role(self.site.root, env)
        self.add_role(role)
        return self.add_client(env_username(env, generation), role.rolename, client_id=env)

    def add_operator(self, name: str, kind: OperatorRole) -> Identity:
        role = operator_role(self.site.root, name, kind)
        self.add_role(role)
        return self.add_client(name, role.rolename)
