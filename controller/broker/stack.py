"""What ``edgeplane up`` runs on this machine: a broker (given, found or started, see
:mod:`.choice`), the controller and the default cloud environment's agent, in the
foreground until Ctrl-C or SIGTERM.

The controller and the agent are children of ``up`` (see :mod:`.supervisor`), restarted
when they exit on their own; one that exits with status 2 makes ``up`` stop everything and
exit 1. A broker ``up`` started and that dies is restarted the same way. On Ctrl-C,
SIGTERM or SIGHUP (a closed terminal): the agent, then the controller, then the broker
``up`` started, so that their goodbyes reach the broker and persist; exit status 0. That
holds when nobody reads ``up``'s output any more (``up | tee log``: the Ctrl-C ends ``tee``
too): ``up`` and its children then write nowhere (see
:class:`~edgeplane.shared.logs.PipeSafeStream`).
``up.json`` in the state directory says what runs meanwhile (see :mod:`.state_dir`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edgeplane.controller.broker.choice import (
    LOCAL_HOST,
    BrokerKind,
    BrokerPlan,
    make_broker,
    plan_broker,
)
from edgeplane.controller.broker.process import BrokerProcess, port_bindable
from edgeplane.controller.broker.state_dir import StateDir
from edgeplane.controller.broker.supervisor import ChildFailed, ChildProcess, Supervisor
from edgeplane.controller.command_key import load_command_key, public_key_file
from edgeplane.controller.daemon.settings import COMMAND_KEY_FILE
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.logs import PipeSafeStream
from edgeplane.shared.signals import stop_signals
from edgeplane.shared.topics import TopicRoot

__all__ = ["DEFAULT_ENV_ID", "NO_AUTH_WARNING", "LocalStack", "StackSettings", "run_local_stack"]

DEFAULT_ENV_ID: Final = "default-cloud"
DEFAULT_TOPIC_ROOT: Final = TopicRoot()
NO_AUTH_WARNING: Final = (
    "the development broker has no authentication: any program on this machine may "
    "publish, subscribe and command the agent (it listens on loopback only); for a site's "
    "broker see edgeplane broker init"
)


@dataclass(frozen=True, slots=True)
class StackSettings:
    """The settings of ``edgeplane up``."""

    state_dir: Path  # absolute
    broker: BrokerUrl | None = None  # given: use it, neither start nor stop it
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    broker_kind: BrokerKind = "auto"
    port: int = 1883  # where to find or start a broker on loopback
    ws_port: int | None = 9001  # MQTT over WebSockets of a started mosquitto
    heartbeat_interval: float = 10.0
    log_format: str = "auto"  # of up's children too


def say(text: str) -> None:
    """A line for the person at the terminal (stdout), flushed at once."""
    _show(f"edgeplane up: {text}")


def _show(text: str) -> None:
    """``text`` on stdout, or nowhere once nobody reads it."""
    print(text, file=PipeSafeStream(sys.stdout), flush=True)


def run_local_stack(settings: StackSettings) -> int:
    """Run the stack to its end: the exit status of ``edgeplane up``."""
    state = StateDir(settings.state_dir)
    with state.locked():
        state.stop_leftovers(say)
        given = str(settings.broker) if settings.broker is not None else None
        plan = plan_broker(given=given, kind=settings.broker_kind, port=settings.port)
        stack = LocalStack(settings, plan, state)
        if plan.plan == "existing":
            say(f"a broker is already listening on {plan.url}: using it")
        return asyncio.run(stack.run())


class LocalStack:
    """The broker, controller and agent of one ``edgeplane up``, and what it says of them."""

    def __init__(self, settings: StackSettings, plan: BrokerPlan, state: StateDir) -> None:
        self.settings = settings
        self.plan = plan
        self.state = state
        self.supervisor = Supervisor(say)
        self.notes: list[str] = []  # the started broker's other listeners, for the banner
        self.broker = self._broker() if plan.plan in ("mosquitto", "embedded") else None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signums = stop_signals()
        for signum in signums:
            loop.add_signal_handler(signum, stop.set)
        try:
            async with self.supervisor:
                return await self._run_until(stop)
        finally:
            self.state.remove_status()
            for signum in signums:
                loop.remove_signal_handler(signum)

    async def _run_until(self, stop: asyncio.Event) -> int:
        if self.broker is not None:
            say(NO_AUTH_WARNING)
            await self.supervisor.start_broker(self.broker)
        if stop.is_set():  # Ctrl-C while the broker was starting
            return 0
        for child in self._children():
            await self.supervisor.start(child)
        self.write_status()
        _show(self.banner())
        failure: str | None = None
        try:
            async with asyncio.TaskGroup() as group:
                keeper = group.create_task(
                    self.supervisor.keep_running(self.write_status), name="keep-running"
                )
                await stop.wait()
                keeper.cancel()
        except* ChildFailed as failed:
            failure = str(failed.exceptions[0])
        if failure is not None:
            say(failure)
            return 1
        say("stopping (agent, controller, then the broker up started)")
        return 0

    def describe(self) -> dict[str, Any]:
        """What ``up.json`` says."""
        return {
            "pid": os.getpid(),
            "broker": self.plan.url,
            "broker_kind": self.plan.plan,
            "broker_pid": self.broker.pid if self.broker is not None else None,
            "topic_root": str(self.settings.topic_root),
            "state_dir": str(self.settings.state_dir),
            **{f"{child.name}_pid": child.pid for child in self.supervisor.children},
        }

    def write_status(self) -> None:
        self.state.write_status(self.describe())

    def _broker(self) -> BrokerProcess:
        settings, data = self.settings, self.settings.state_dir
        if self.plan.plan == "mosquitto":
            ws_port = settings.ws_port
            if ws_port is not None and not port_bindable(LOCAL_HOST, ws_port):
                say(f"port {ws_port} is in use: no WebSockets listener (choose one with --ws-port)")
                ws_port = None
            if ws_port is not None:
                self.notes.append(f"MQTT over WebSockets at ws://{LOCAL_HOST}:{ws_port}/")
            return make_broker(
                self.plan, data / "mosquitto", port=settings.port, websockets_port=ws_port
            )
        v311_port: int | None = settings.port + 1 if settings.port < 65535 else None
        if v311_port is not None and not port_bindable(LOCAL_HOST, v311_port):
            v311_port = None
        if v311_port is not None:
            self.notes.append(f"MQTT 3.1.1 for older tools at mqtt://{LOCAL_HOST}:{v311_port}")
        return make_broker(
            self.plan, data / "embedded-broker", port=settings.port, v311_port=v311_port
        )

    def _children(self) -> list[ChildProcess]:
        """The controller and the agent (in the order they start), with their directories."""
        settings, state_dir = self.settings, self.settings.state_dir
        # up's own settings (its --config file, EDGEPLANE_PORT, ...) are not its children's:
        # each child gets what it needs as flags.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPLANE_")}
        if settings.log_format != "auto":
            env["EDGEPLANE_LOG_FORMAT"] = settings.log_format
        agent_state = state_dir / "agents" / DEFAULT_ENV_ID
        models = state_dir / "models"  # DIR/{name}/{version}/ for the cloud agent
        models.mkdir(parents=True, exist_ok=True)
        agent_state.mkdir(parents=True, exist_ok=True)
        python, root = sys.executable, str(settings.topic_root)
        key_file = state_dir / COMMAND_KEY_FILE
        signer = load_command_key(key_file)  # the agent is enrolled with its public key
        controller = [
            *(python, "-m", "edgeplane.controller", "controller", "run"),
            *("--broker", self.plan.url),
            *("--db", str(state_dir / "controller.db")),
            *("--topic-root", root),
            *("--command-key-file", str(key_file)),
        ]
        agent = [
            *(python, "-m", "edgeplane.edge_agent", "run"),
            *("--env-id", DEFAULT_ENV_ID),
            *("--broker", self.plan.url),
            *("--state-dir", str(agent_state)),
            *("--models-dir", str(models)),
            *("--heartbeat-interval", f"{settings.heartbeat_interval:g}"),
            *("--topic-root", root),
            *("--command-key", signer.public_key_b64),
        ]
        return [ChildProcess("controller", controller, env), ChildProcess("agent", agent, env)]

    def banner(self) -> str:
        url, state_dir, root = (
            BrokerUrl.parse(self.plan.url),
            self.settings.state_dir,
            self.settings.topic_root,
        )
        pids = ", ".join(f"{child.name} pid {child.pid}" for child in self.supervisor.children)
        tls = " --capath /etc/ssl/certs" if url.tls else ""
        lines = [
            "edgeplane is up",
            f"  broker      {self.plan.url}  ({self._how()})",
            *(f"              {note}" for note in self.notes),
            f"  topic root  {root}",
            f"  state dir   {state_dir}",
            f"  running     {pids}; agent {DEFAULT_ENV_ID!r}",
            f"  models      {state_dir / 'models'}/NAME/VERSION/ (the cloud agent's)",
            f"  command key {public_key_file(state_dir / COMMAND_KEY_FILE)} (the controller's "
            "public key: give it to other agents, --command-key)",
            "  watch it    mosquitto_sub -V mqttv5 "
            f"-h {url.host} -p {url.port}{tls} -t '{root}/view/#' -v",
            f"              edgeplane status --broker {self.plan.url} --topic-root {root}",
            "  stop        Ctrl-C (or SIGTERM)",
        ]
        return "\n".join(lines)

    def _how(self) -> str:
        """How ``up`` came by the broker, for the banner."""
        if self.plan.plan == "given":
            return "given with --broker; not started or stopped by up"
        if self.plan.plan == "existing":
            return "already listening on this machine; used as it is, not stopped by up"
        if self.plan.plan == "mosquitto":
            return "a private mosquitto started by up, data in " + str(
                self.settings.state_dir / "mosquitto"
            )
        searched = ": no mosquitto found" if self.settings.broker_kind == "auto" else ""
        return (
            f"the embedded broker (iotcore/rumqttd) started by up{searched}; it delivers at "
            "most 100 retained messages per new QoS 1 subscription"
        )
