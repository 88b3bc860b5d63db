"""The process of a workflow step, with the environment it sees (:func:`.runner.step_env`:
the agent's base variables, the step's own, the deployment's, the required buckets,
endpoints and secrets), its output files in the working directory and secrets masked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgeplane.edge_agent.execution.runner import StepProcess, step_env
from edgeplane.edge_agent.secrets import Secrets
from edgeplane.shared.clock import Clock
from edgeplane.shared.workflow import Step, Workflow

__all__ = ["StepLauncher"]


class StepLauncher:
    """Makes (unstarted) step processes for environment ``env``. ``endpoints`` is the
    agent's mapping in force, read at every launch (an update changes it in place)."""

    def __init__(
        self,
        env: str,
        *,
        models_dir: Path | None,
        secrets: Secrets | None,
        endpoints: Mapping[str, str],
        agent_env: Mapping[str, str],
        kill_grace: float,
        clock: Clock,
    ) -> None:
        self.env = env
        self.models_dir = models_dir
        self.secrets = secrets
        self.endpoints = endpoints
        self.kill_grace = kill_grace
        self._agent_env = dict(agent_env)
        self._clock = clock

    def process(
        self, workflow: Workflow, dep: str, workdir: Path, step: Step, index: int
    ) -> StepProcess:
        needs = workflow.requires
        secrets = self.secrets.env_for(needs.secrets) if self.secrets and needs.secrets else {}
        env = step_env(
            step.env,
            agent_env=self._agent_env,
            env_id=self.env,
            dep=dep,
            workdir=workdir,
            models_dir=self.models_dir,
            buckets=needs.buckets,
            endpoints={name: self.endpoints.get(name, "") for name in needs.endpoints},
            secrets=secrets,
        )
        return StepProcess(
            step.run,
            cwd=workdir,
            env=env,
            log_name=f"{index:02d}-{step.name}",
            mask=self.secrets.mask if self.secrets is not None else str,
            clock=self._clock,
            kill_grace=self.kill_grace,
        )
