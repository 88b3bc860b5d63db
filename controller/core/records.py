"""The rows the core hands the store, besides presence judgements: what an agent reported,
operations-log entries, and a batch of writes. Plain values: the store
(:mod:`edgeplane.controller.daemon.store`) writes them, the core never sees SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgeplane.controller.core.deployments import Deployment, OperatorCommand
from edgeplane.controller.core.incidents import Incident
from edgeplane.controller.core.key_rotation import AgentTrust, KeyRotation
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.core.rollout import RolloutRecord, Target
from edgeplane.controller.core.rotation import Credential
from edgeplane.shared.messages import Event, Platform

__all__ = ["Forgotten", "LogEntry", "ReportedInventory", "Writes"]


@dataclass(frozen=True, slots=True)
class ReportedInventory:
    """What an agent last reported holding: model name -> versions, and its platform."""

    env: str
    models: Mapping[str, Sequence[str]]
    platform: Platform | None
    updated: float


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An event for the operations log, with the controller's receipt time."""

    event: Event
    at: float


@dataclass(frozen=True, slots=True)
class Forgotten:
    """An environment id whose rows go (``env forget``): its presence and inventory; with
    ``history`` (an id that never had a record) also its transitions, alerts and events."""

    env: str
    history: bool


@dataclass(slots=True)
class Writes:
    """Rows other than presence: each list is written in one batch; ``urgent`` ends the
    writer's wait for company (something waits for the commit: a reply, a command)."""

    records: list[Environment] = field(default_factory=list)
    inventory: list[ReportedInventory] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    commands: list[OperatorCommand] = field(default_factory=list)
    events: list[LogEntry] = field(default_factory=list)
    credentials: list[Credential] = field(default_factory=list)
    key_rotation: list[KeyRotation] = field(default_factory=list)
    key_agents: list[AgentTrust] = field(default_factory=list)
    rollouts: list[RolloutRecord] = field(default_factory=list)
    rollout_targets: list[Target] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    # Deleted after everything before them in the store's queue, before what comes after.
    forgotten: list[Forgotten] = field(default_factory=list)
    urgent: bool = False

    def extend(self, other: Writes) -> None:
        self.records.extend(other.records)
        self.inventory.extend(other.inventory)
        self.deployments.extend(other.deployments)
        self.commands.extend(other.commands)
        self.events.extend(other.events)
        self.credentials.extend(other.credentials)
        self.key_rotation.extend(other.key_rotation)
        self.key_agents.extend(other.key_agents)
        self.rollouts.extend(other.rollouts)
        self.rollout_targets.extend(other.rollout_targets)
        self.incidents.extend(other.incidents)
        self.forgotten.extend(other.forgotten)
        self.urgent = self.urgent or other.urgent

    def __bool__(self) -> bool:
        return bool(
            self.records
            or self.inventory
            or self.deployments
            or self.commands
            or self.events
            or self.credentials
            or self.key_rotation
            or self.key_agents
            or self.rollouts
            or self.rollout_targets
            or self.incidents
            or self.forgotten
        )
