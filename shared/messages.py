"""Every message on the wire, as frozen msgspec Structs.

Rules of evolution (the contract's promise to dashboards and old agents): readers ignore
unknown fields, and every field added after the first release gets a default.

Topics that carry several kinds of message use tagged unions: the agent's status topic is
tagged by its ``status`` field (``online`` / ``offline``), commands and events by ``type``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "AgentStatus",
    "Alert",
    "AlertKind",
    "AlertState",
    "Command",
    "CommandRejected",
    "ControllerStatus",
    "EnvView",
    "Event",
    "OfflineReason",
    "OfflineStatus",
    "OnlineStatus",
    "Ping",
    "Pong",
    "ViewStatus",
]

ENV_ID_REGEX: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

EnvId = Annotated[str, msgspec.Meta(pattern=ENV_ID_REGEX)]
# Counters stop at 2**53 - 1: exact in JavaScript dashboards, and fits SQLite INTEGER.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
UnixTime = Annotated[float, msgspec.Meta(ge=0)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
CommandId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

OfflineReason = Literal["connection-lost", "shutdown", "retired"]
ViewStatus = Literal["online", "offline", "unknown", "retired"]
AlertState = Literal["raised", "cleared"]
AlertKind = Literal["flapping", "identity-conflict"]


# --- R/env/{env}/status -------------------------------------------------------------------
class OnlineStatus(
    msgspec.Struct, frozen=True, tag="online", tag_field="status", omit_defaults=True
):
    """The retained heartbeat. Short field names: constrained links pay for every byte."""

    env: EnvId
    bdseq: Count  # taken anew for every connection, kept on disk
    seq: Count  # restarts with every bdseq
    interval: Seconds  # seconds until the next heartbeat
    boot: ShortText  # changes with every start of the agent process
    cpu: Percent | None = None
    mem: Percent | None = None
    disk: Percent | None = None
    ver: ShortText = ""  # agent version
    up: Count = 0  # agent process uptime, whole seconds


class OfflineStatus(msgspec.Struct, frozen=True, tag="offline", tag_field="status"):
    """The will (``connection-lost``) or the clean-shutdown / retirement message."""

    env: EnvId
    bdseq: Count
    reason: OfflineReason


AgentStatus = OnlineStatus | OfflineStatus


# --- R/controller/status ------------------------------------------------------------------
class ControllerStatus(msgspec.Struct, frozen=True):
    """The controller's retained birth (``online``) and will (``offline``)."""

    status: Literal["online", "offline"]
    boot: ShortText = ""
    ver: ShortText = ""
    since: UnixTime | None = None
    # Counters, refreshed periodically while online and in the clean-stop message.
    envs: Count = 0  # environments known
    online: Count = 0  # of which judged online
    stale: Count = 0  # stale offline messages ignored since start
    dropped: dict[str, Count] = {}  # bad input dropped since start, by reason


# --- R/view/{env} ---------------------------------------------------------------------------
class EnvView(msgspec.Struct, frozen=True):
    """The controller's judged status of one environment, retained for dashboards.

    ``since`` is the controller's clock (unix seconds) at the last transition; ``reason``
    says what caused it (``heartbeat``, ``connection-lost``, ``shutdown``, ``retired``,
    ``heartbeat-timeout``), ``last_seen`` when the controller last heard a heartbeat.
    """

    env: EnvId
    status: ViewStatus
    since: UnixTime
    flapping: bool = False
    reason: ShortText = ""
    last_seen: UnixTime | None = None
    interval: Seconds | None = None


# --- R/alerts/{env} -------------------------------------------------------------------------
class Alert(msgspec.Struct, frozen=True):
    """One alert edge: ``raised`` once when an episode starts, ``cleared`` once when it ends."""

    kind: AlertKind
    state: AlertState
    env: EnvId
    ts: UnixTime
    detail: ShortText = ""


# --- R/env/{env}/cmd ------------------------------------------------------------------------
class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    """Ask an agent to answer with a ``pong`` event: a liveness probe of the command path."""

    id: CommandId


Command = Ping


# --- R/env/{env}/events ---------------------------------------------------------------------
class Pong(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    env: EnvId
    seq: Count  # the agent's event sequence, for de-duplication
    cmd: CommandId  # the id of the ping being answered


class CommandRejected(msgspec.Struct, frozen=True, tag="rejected", tag_field="type"):
    """A command the agent could not accept (bad payload, unknown type)."""

    env: EnvId
    seq: Count
    reason: ShortText
    cmd: ShortText = ""


Event = Pong | CommandRejected
