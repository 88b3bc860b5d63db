"""The rows of a command key rotation (schema version 5): the latest rotation, one row, and
each agent's part in it. A stored value that cannot be read back is a
:class:`StoreError` naming what it was."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from edgeplane.controller.core.key_rotation import (
    AGENT_PHASES,
    ROTATION_STATES,
    AgentTrust,
    KeyRotation,
)
from edgeplane.controller.errors import StoreError

__all__ = [
    "KEY_AGENT_SELECT",
    "KEY_ROTATION_SELECT",
    "UPSERT_KEY_AGENT",
    "UPSERT_KEY_ROTATION",
    "key_agent_from_row",
    "key_agent_row",
    "key_rotation_from_row",
    "key_rotation_row",
]

_ROTATION_COLUMNS: Final = "old, new, new_key, state, started, finished"
_AGENT_COLUMNS: Final = "env, phase, cmd, sent_bdseq, acked"
UPSERT_KEY_ROTATION: Final = (
    f"INSERT OR REPLACE INTO key_rotation (id, {_ROTATION_COLUMNS}) VALUES (1, ?, ?, ?, ?, ?, ?)"
)
KEY_ROTATION_SELECT: Final = f"SELECT {_ROTATION_COLUMNS} FROM key_rotation WHERE id = 1"
UPSERT_KEY_AGENT: Final = (
    f"INSERT OR REPLACE INTO key_agents ({_AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
)
KEY_AGENT_SELECT: Final = f"SELECT {_AGENT_COLUMNS} FROM key_agents ORDER BY env"


def key_rotation_row(rotation: KeyRotation) -> tuple[Any, ...]:
    return (
        rotation.old,
        rotation.new,
        rotation.new_key,
        rotation.state,
        rotation.started,
        rotation.finished,
    )


def key_rotation_from_row(row: Sequence[Any]) -> KeyRotation:
    old, new, new_key, state, started, finished = row
    if state not in ROTATION_STATES:
        raise StoreError(f"the stored command key rotation has an unknown state {state!r}")
    return KeyRotation(old, new, new_key, state, started, finished)


def key_agent_row(agent: AgentTrust) -> tuple[Any, ...]:
    return (agent.env, agent.phase, agent.cmd, agent.sent_bdseq, agent.acked)


def key_agent_from_row(row: Sequence[Any]) -> AgentTrust:
    env, phase, cmd, sent_bdseq, acked = row
    if phase not in AGENT_PHASES:
        raise StoreError(f"the stored command key phase of {env!r} is unknown: {phase!r}")
    return AgentTrust(env, phase, cmd, sent_bdseq, acked)
