"""The demo's private fleet: a broker, the controller and agents, as real child processes.

Everything lives in one temporary directory (broker data, controller database, agent state,
models, secrets files, the results bucket, every log) and on a broker of its own on a free
loopback port, so the demo never touches a broker already on 1883 nor anybody's state.
:meth:`DemoFleet.close` stops every process it started (SIGTERM, then SIGKILL) and removes
the directory; it is safe to call at any point and more than once.

Children run in their own sessions: a Ctrl-C at the terminal reaches only the demo, which
then stops them in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from edgeplane.controller.broker.embedded import EmbeddedBroker
from edgeplane.controller.broker.mosquitto import (
    MosquittoProcess,
    find_mosquitto,
    packaged_mosquitto_config,
)
from edgeplane.controller.broker.process import BrokerProcess, close_pipes
from edgeplane.shared.topics import TopicRoot

__all__ = ["AgentPlan", "BrokerKind", "Child", "DemoFleet", "FlapSettings"]

BrokerKind = Literal["auto", "mosquitto", "embedded"]

STOP_GRACE: Final = 5.0  # seconds a child gets to stop cleanly before SIGKILL
HEARTBEAT_INTERVAL: Final = 1.0  # short, so presence changes show within seconds


@dataclass
class Child:
    """One child process, its output going to a log file in the demo's directory."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_environment(),
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would: the agent says no goodbye, the broker sends its will."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        close_pipes(process)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, up to ``grace`` seconds for a clean stop, then SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        close_pipes(process)

    def tail(self, lines: int = 15) -> str:
        """The last lines of the child's output, for a failure report."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class AgentPlan:
    """What one demo agent holds: its secrets and its models (name -> versions)."""

    env_id: str
    secrets: dict[str, str] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FlapSettings:
    """Low flapping thresholds, so a few quick restarts raise the alert."""

    window: float = 60.0
    high: int = 4
    low: int = 1


class DemoFleet:
    """The broker, the controller and the agents of one demo run."""

    def __init__(self, root: TopicRoot) -> None:
        self.root = root
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeplane-demo-"))
        self.bucket = self.workdir / "bucket"
        self.broker: BrokerProcess | None = None
        self.broker_kind = ""
        self.controller: Child | None = None
        self.agents: dict[str, Child] = {}

    @property
    def broker_url(self) -> str:
        assert self.broker is not None, "start_broker() first"
        return self.broker.url

    def start_broker(self, kind: BrokerKind = "auto") -> None:
        """A private broker on a free port: mosquitto if one is installed (``auto``), else
        the embedded broker; or the one ``kind`` names."""
        data_dir = self.workdir / "broker"
        if kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None):
            self.broker = MosquittoProcess(packaged_mosquitto_config(), data_dir)
            self.broker_kind = "mosquitto"
        else:
            self.broker = EmbeddedBroker(data_dir)
            self.broker_kind = "embedded broker"
        self.broker.start()

    def start_controller(self, flap: FlapSettings) -> None:
        self.controller = Child(
            "controller",
            [
                *_module("edgeplane.controller"),
                "controller",
                "run",
                "--broker",
                self.broker_url,
                "--db",
                str(self.workdir / "controller.db"),
                "--topic-root",
                self.root.value,
                "--flap-window",
                f"{flap.window:g}",
                "--flap-high",
                str(flap.high),
                "--flap-low",
                str(flap.low),
                "--log-format",
                "json",
            ],
            self.workdir / "controller.log",
        )
        self.controller.start()

    def add_agent(self, plan: AgentPlan) -> Child:
        """Prepare an agent's state dir, models and secrets file (owner-only), unstarted."""
        home = self.workdir / "agents" / plan.env_id
        models_dir = home / "models"
        for name, versions in plan.models.items():
            for version in versions:
                (models_dir / name / version).mkdir(parents=True, exist_ok=True)
        models_dir.mkdir(parents=True, exist_ok=True)
        secrets_file = home / "secrets.env"
        secrets_file.write_text("".join(f"{key}={value}\n" for key, value in plan.secrets.items()))
        secrets_file.chmod(0o600)
        child = Child(
            plan.env_id,
            [
                *_module("edgeplane.edge_agent"),
                "run",
                "--env-id",
                plan.env_id,
                "--broker",
                self.broker_url,
                "--state-dir",
                str(home / "state"),
                "--heartbeat-interval",
                f"{HEARTBEAT_INTERVAL:g}",
                "--topic-root",
                self.root.value,
                "--models-dir",
                str(models_dir),
                "--secrets-file",
                str(secrets_file),
                "--log-format",
                "json",
            ],
            home / "agent.log",
        )
        self.agents[plan.env_id] = child
        return child

    def children(self) -> list[Child]:
        found = list(self.agents.values())
        return found + ([self.controller] if self.controller else [])

    def close(self) -> None:
        """Stop agents, then the controller, then the broker; remove the directory."""
        for child in self.agents.values():
            child.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _module(name: str) -> list[str]:
    """Run a package of this installation with this interpreter (``python -m NAME``)."""
    return [sys.executable, "-m", name]


def _child_environment() -> dict[str, str]:
    """This process's environment without ``EDGEPLANE_*`` settings: the demo's children
    take every setting from their flags, never from a fleet the user has configured."""
    return {key: value for key, value in os.environ.items() if not key.startswith("EDGEPLANE_")}
