"""The edge agent's exceptions. Nothing outside :mod:`edgeplane.edge_agent.session` sees paho
errors: they arrive as :class:`BrokerUnavailable`.

EdgeplaneError
├── BrokerUnavailable        the MQTT connection could not be made, or was lost (shared.errors)
└── AgentError
    ├── StateDirError        the state directory or its bdseq file cannot be used
    ├── OutboxError          the event outbox (SQLite in the state directory) cannot be used
    ├── EventInvalid         an event the controller could not read (a bug in its sender)
    ├── EnvironmentRetired   the state directory belongs to a retired environment
    ├── SimulatorMissing     ``edge-agent simulate`` is not part of this installation
    ├── ModelsDirError       the models directory cannot be listed
    ├── SecretsFileError     the secrets file is refused (also a SettingsError: exit status 2)
    └── ExecutionError       a deployment's working or state files cannot be used
"""

from __future__ import annotations

from edgeplane.shared.errors import BrokerUnavailable, EdgeplaneError, SettingsError

__all__ = [
    "AgentError",
    "BrokerUnavailable",
    "EnvironmentRetired",
    "EventInvalid",
    "ExecutionError",
    "ModelsDirError",
    "OutboxError",
    "SecretsFileError",
    "SimulatorMissing",
    "StateDirError",
]


class AgentError(EdgeplaneError):
    """Base class of the edge agent's errors."""


class StateDirError(AgentError):
    """The state directory cannot be created, read or written, or holds a corrupt file."""


class SimulatorMissing(AgentError):
    """The fleet simulator module is not installed with this agent."""


class OutboxError(AgentError):
    """The event outbox cannot be opened, read or written."""


class EventInvalid(AgentError, ValueError):
    """An event that would not pass the controller's decoder (e.g. a field over its limit)."""


class EnvironmentRetired(AgentError):
    """The state directory holds the marker of a retired environment: the agent refuses to
    run with it."""


class ModelsDirError(AgentError):
    """The models directory is missing or cannot be listed; the message names it."""


class SecretsFileError(AgentError, SettingsError):
    """The secrets file is missing, unreadable, too open (group/other readable) or has a
    bad line. The message names the file and the line number, never a value."""


class ExecutionError(AgentError):
    """A deployment's working directory or the executor's state file cannot be used."""
