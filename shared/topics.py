"""The topic tree: builders that only make valid topics, and a parser that rejects the rest.

Every topic lives under a root (default ``edgeplane/v1``)::

    R/env/{env}/status     retained heartbeat / will of an agent
    R/env/{env}/events     events from an agent
    R/env/{env}/cmd        commands to an agent
    R/controller/status    the controller's birth and will
    R/view/{env}           the controller's judged status of an environment
    R/alerts/{env}         alerts raised and cleared
    R/alert-state/{env}/{kind}   the latest alert edge of one kind, retained
    R/controller/req       operator requests to the controller (MQTT 5 request/response)
    R/controller/reply/{client}   the controller's replies, on the requester's topic
"""

from __future__ import annotations

import enum
import re
from typing import Final

import msgspec

from edgeplane.shared.errors import InvalidTopic
from edgeplane.shared.ids import is_env_id, validate_env_id

__all__ = ["DEFAULT_ROOT", "ParsedTopic", "TopicKind", "TopicRoot"]

DEFAULT_ROOT: Final = "edgeplane/v1"


class TopicKind(enum.Enum):
    STATUS = "status"
    EVENTS = "events"
    CMD = "cmd"
    CONTROLLER_STATUS = "controller-status"
    VIEW = "view"
    ALERTS = "alerts"
    ALERT_STATE = "alert-state"
    REQUEST = "request"
    REPLY = "reply"


class ParsedTopic(msgspec.Struct, frozen=True):
    kind: TopicKind
    env: str | None  # None for the controller's own topics
    client: str | None = None  # the requester of a reply topic
    alert_kind: str | None = None  # the alert kind of an alert-state topic


_ALERT_KIND: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ENV_SUFFIXES: Final = {
    "status": TopicKind.STATUS,
    "events": TopicKind.EVENTS,
    "cmd": TopicKind.CMD,
}


class TopicRoot(msgspec.Struct, frozen=True):
    """A validated topic root, and the builders and parser of the tree below it."""

    value: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        levels = self.value.split("/")
        if not self.value or any(not level for level in levels):
            raise InvalidTopic(f"invalid topic root {self.value!r}: empty level")
        if any(ch in self.value for ch in "+#\x00") or self.value.startswith("$"):
            raise InvalidTopic(
                f"invalid topic root {self.value!r}: no wildcards, NUL or leading '$'"
            )

    def __str__(self) -> str:
        return self.value

    # builders -------------------------------------------------------------------------
    def status(self, env: str) -> str:
        return f"{self.value}/env/{validate_env_id(env)}/status"

    def events(self, env: str) -> str:
        return f"{self.value}/env/{validate_env_id(env)}/events"

    def cmd(self, env: str) -> str:
        return f"{self.value}/env/{validate_env_id(env)}/cmd"

    def controller_status(self) -> str:
        return f"{self.value}/controller/status"

    def view(self, env: str) -> str:
        return f"{self.value}/view/{validate_env_id(env)}"

    def alerts(self, env: str) -> str:
        return f"{self.value}/alerts/{validate_env_id(env)}"

    def alert_state(self, env: str, kind: str) -> str:
        """The retained latest alert edge of ``kind`` for ``env``."""
        if not _ALERT_KIND.match(kind):
            raise InvalidTopic(f"invalid alert kind {kind!r}: lower-case letters, digits, '-'")
        return f"{self.value}/alert-state/{validate_env_id(env)}/{kind}"

    def requests(self) -> str:
        return f"{self.value}/controller/req"

    def reply(self, client: str) -> str:
        """The response topic of one requester; ``client`` follows the env id pattern."""
        if not is_env_id(client):
            raise InvalidTopic(f"invalid reply client {client!r}: use an env-id-like name")
        return f"{self.value}/controller/reply/{client}"

    # subscription filters ---------------------------------------------------------------
    def all_status(self) -> str:
        return f"{self.value}/env/+/status"

    def all_events(self) -> str:
        return f"{self.value}/env/+/events"

    def all_views(self) -> str:
        return f"{self.value}/view/+"

    def all_alerts(self) -> str:
        return f"{self.value}/alerts/+"

    def all_alert_states(self) -> str:
        return f"{self.value}/alert-state/+/+"

    def everything(self) -> str:
        return f"{self.value}/#"

    # parser -----------------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic:
        """Tell what ``topic`` is, or raise :class:`InvalidTopic`."""
        prefix = self.value + "/"
        if not topic.startswith(prefix):
            raise InvalidTopic(f"topic {topic!r} is not under root {self.value!r}")
        levels = topic[len(prefix) :].split("/")
        match levels:
            case ["env", env, suffix] if suffix in _ENV_SUFFIXES:
                return ParsedTopic(_ENV_SUFFIXES[suffix], _checked(env, topic))
            case ["controller", "status"]:
                return ParsedTopic(TopicKind.CONTROLLER_STATUS, None)
            case ["controller", "req"]:
                return ParsedTopic(TopicKind.REQUEST, None)
            case ["controller", "reply", client] if is_env_id(client):
                return ParsedTopic(TopicKind.REPLY, None, client)
            case ["view", env]:
                return ParsedTopic(TopicKind.VIEW, _checked(env, topic))
            case ["alerts", env]:
                return ParsedTopic(TopicKind.ALERTS, _checked(env, topic))
            case ["alert-state", env, kind] if _ALERT_KIND.match(kind):
                return ParsedTopic(TopicKind.ALERT_STATE, _checked(env, topic), alert_kind=kind)
        raise InvalidTopic(f"topic {topic!r} is not part of the edgeplane tree")


def _checked(env: str, topic: str) -> str:
    if not is_env_id(env):
        raise InvalidTopic(f"topic {topic!r} has an invalid environment id {env!r}")
    return env
