"""The edge agent's exceptions. Nothing outside :mod:`edge_agent.session` sees paho errors.

AgentError
├── StateDirError        the state directory or its bdseq file cannot be used
├── BrokerUnavailable    the MQTT connection could not be made, or was lost
└── SimulatorMissing     ``edge-agent simulate`` is not part of this installation
"""

from __future__ import annotations

from shared.errors import EdgeplaneError

__all__ = ["AgentError", "BrokerUnavailable", "SimulatorMissing", "StateDirError"]


class AgentError(EdgeplaneError):
    """Base class of the edge agent's errors."""


class StateDirError(AgentError):
    """The state directory cannot be created, read or written, or holds a corrupt file."""


class BrokerUnavailable(AgentError):
    """The connection to the broker could not be made or was lost."""


class SimulatorMissing(AgentError):
    """The fleet simulator module is not installed with this agent."""
