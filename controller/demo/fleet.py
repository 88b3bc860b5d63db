"""The demo's private fleet: a broker, the controller and agents, as real child processes.

Everything lives in one temporary directory (broker data, controller database, agent state,
models, secrets files, the results bucket, every log) and on a broker of its own on a free
loopback port, so the demo never touches a broker already on 1883 nor anybody's state.
Leaving ``async with DemoFleet(...)`` stops every process it started (agents, then the
controller, then the broker; SIGTERM, then SIGKILL) and removes the directory.

Children run in their own sessions (see :mod:`edgeplane.controller.broker.supervisor`): a
Ctrl-C at the terminal reaches only the demo, which then stops them in order.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from edgeplane.controller.broker.choice import BrokerKind, make_broker, plan_broker
from edgeplane.controller.broker.process import BrokerProcess, free_port
from edgeplane.controller.broker.supervisor import ChildProcess, Supervisor
from edgeplane.controller.command_key import load_command_key
from edgeplane.shared.topics import TopicRoot

__all__ = ["AgentPlan", "DemoFleet", "FlapSettings"]

STOP_GRACE: Final = 5.0  # seconds a child gets to stop cleanly before SIGKILL
HEARTBEAT_INTERVAL: Final = 1.0  # short, so presence changes show within seconds


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
        self.supervisor = Supervisor(grace=STOP_GRACE)
        self.broker: BrokerProcess | None = None
        self.broker_kind = ""
        self.controller: ChildProcess | None = None
        self.agents: dict[str, ChildProcess] = {}
        # The controller's command key, in the demo's directory; its agents trust it.
        self.key_file = self.workdir / "command-key"
        self.signer = load_command_key(self.key_file)

    @property
    def broker_url(self) -> str:
        assert self.broker is not None, "start_broker() first"
        return self.broker.url

    async def start_broker(self, kind: BrokerKind = "auto") -> None:
        """A private broker on a free port: mosquitto if one is installed (``auto``), else
        the embedded broker; or the one ``kind`` names."""
        port = free_port()
        plan = plan_broker(given=None, kind=kind, port=port, reuse=False)
        self.broker = make_broker(plan, self.workdir / "broker", port=port)
        self.broker_kind = "mosquitto" if plan.plan == "mosquitto" else "embedded broker"
        await self.supervisor.start_broker(self.broker)

    async def start_controller(self, flap: FlapSettings) -> None:
        self.controller = self._child(
            "controller",
            [
                *_module("edgeplane.controller"),
                *("controller", "run", "--broker", self.broker_url),
                *("--db", str(self.workdir / "controller.db")),
                *("--topic-root", self.root.value),
                *("--command-key-file", str(self.key_file)),
                *("--flap-window", f"{flap.window:g}"),
                *("--flap-high", str(flap.high), "--flap-low", str(flap.low)),
                *("--log-format", "json"),
            ],
            self.workdir / "controller.log",
        )
        await self.supervisor.start(self.controller)

    def add_agent(self, plan: AgentPlan) -> ChildProcess:
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
        child = self._child(
            plan.env_id,
            [
                *_module("edgeplane.edge_agent"),
                *("run", "--env-id", plan.env_id, "--broker", self.broker_url),
                *("--state-dir", str(home / "state")),
                *("--heartbeat-interval", f"{HEARTBEAT_INTERVAL:g}"),
                *("--topic-root", self.root.value),
                *("--models-dir", str(models_dir), "--secrets-file", str(secrets_file)),
                *("--command-key", self.signer.public_key_b64),
                *("--log-format", "json"),
            ],
            home / "agent.log",
        )
        self.agents[plan.env_id] = child
        return self.supervisor.add(child)

    def children(self) -> list[ChildProcess]:
        return list(self.supervisor.children)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the agents, then the controller, then the broker; remove the directory."""
        try:
            await self.supervisor.stop_all()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _child(self, name: str, argv: list[str], log_path: Path) -> ChildProcess:
        return ChildProcess(name, argv, _child_environment(), log_path)


def _module(name: str) -> list[str]:
    """Run a package of this installation with this interpreter (``python -m NAME``)."""
    return [sys.executable, "-m", name]


def _child_environment() -> dict[str, str]:
    """This process's environment without ``EDGEPLANE_*`` settings: the demo's children
    take every setting from their flags, never from a fleet the user has configured."""
    return {key: value for key, value in os.environ.items() if not key.startswith("EDGEPLANE_")}
