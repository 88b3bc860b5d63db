"""Who may publish and subscribe where: the broker roles of every identity, as data (pure).

The dynamic security plugin of mosquitto enforces them. Its ACLs substitute neither the
user name nor the client id, so every environment and every operator gets a role of its
own, made from the functions here; ``edgeplane broker init`` writes the first ones into the
plugin's file and the controller creates the rest through ``$CONTROL/dynamic-security/v1``.

Subscriptions are granted as *literal* filters (``subscribeLiteral``): a client may
subscribe exactly the filters listed, so an environment allowed ``R/env/a/cmd`` cannot
subscribe ``R/env/+/cmd`` or ``#``. Receiving is allowed by default (a client only gets
what it could subscribe); publishing and subscribing are denied by default.

User names and client ids:

- environment ``e``: client id ``e``; user name ``e`` when enrolled, ``e.N`` after the
  N-th credential rotation (a rotation creates the new client beside the old one, and a
  dynamic-security user name has one password);
- the controller: :data:`CONTROLLER_USER`;
- an operator: its name (an env-id-like name) when added, ``name.N`` after the N-th
  credential rotation (the same role ``edgeplane-operator-{name}``); reply topic
  ``R/controller/reply/{name}`` for every generation: the base name before the dot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from edgeplane.shared.ids import is_env_id, validate_env_id
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "CONTROLLER_USER",
    "CONTROL_RESPONSE_TOPIC",
    "CONTROL_TOPIC",
    "DEFAULT_ACCESS",
    "Acl",
    "AclType",
    "CredentialNote",
    "OperatorRole",
    "Role",
    "controller_role",
    "credential_note",
    "env_generation",
    "env_role",
    "env_role_name",
    "env_username",
    "operator_generation",
    "operator_role",
    "operator_role_name",
    "operator_username",
]

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
CONTROLLER_USER: Final = "edgeplane-controller"

AclType = Literal["publishClientSend", "publishClientReceive", "subscribeLiteral"]
OperatorRole = Literal["admin", "viewer"]

# The plugin's defaults for what no ACL of a client's roles mentions.
DEFAULT_ACCESS: Final = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}

_GENERATION: Final = re.compile(r"^(?P<env>[^.]+)(?:\.(?P<n>[1-9][0-9]{0,8}))?$")
_NOTE: Final = re.compile(
    r"^edgeplane since=(?P<since>[0-9]+)(?: confirm=(?P<confirm>[0-9a-f]{64}))?$"
)


@dataclass(frozen=True, slots=True)
class Acl:
    """One ACL entry, in the plugin's own JSON form."""

    acltype: AclType
    topic: str
    allow: bool = True
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of ACLs (the plugin's ``rolename`` and ``acls``)."""

    rolename: str
    acls: tuple[Acl, ...]
    textname: str = ""


def _send(topic: str) -> Acl:
    return Acl("publishClientSend", topic)


def _sub(topic: str) -> Acl:
    return Acl("subscribeLiteral", topic)


def _receive(topic: str) -> Acl:
    return Acl("publishClientReceive", topic)


def env_role_name(env: str) -> str:
    return f"edgeplane-env-{validate_env_id(env)}"


def operator_role_name(name: str) -> str:
    return f"edgeplane-operator-{validate_env_id(name)}"


def env_username(env: str, generation: int = 0) -> str:
    """The broker user name of ``env``'s credential ``generation`` (0: as enrolled)."""
    validate_env_id(env)
    if generation < 0:
        raise ValueError(f"credential generation must be >= 0, got {generation}")
    return env if generation == 0 else f"{env}.{generation}"


def env_generation(username: str) -> tuple[str, int] | None:
    """``(env, generation)`` of an environment's user name, None for any other name
    (the controller's own user name included)."""
    match = _GENERATION.match(username)
    if match is None or username == CONTROLLER_USER or not is_env_id(match["env"]):
        return None
    return match["env"], int(match["n"] or 0)


def operator_username(name: str, generation: int = 0) -> str:
    """The broker user name of operator ``name``'s credential ``generation``: the same
    scheme as an environment's (0: as added)."""
    return env_username(name, generation)


def operator_generation(username: str) -> tuple[str, int] | None:
    """``(name, generation)`` of an operator-like user name, None for any other name."""
    return env_generation(username)


@dataclass(frozen=True, slots=True)
class CredentialNote:
    """What an operator's broker client records of its credential, in the plugin's
    ``textdescription``: when it was made and, for a rotated one, the SHA-256 (hex) of the
    token that confirms it."""

    since: float | None = None
    confirm: str = ""

    @property
    def text(self) -> str:
        since = "" if self.since is None else f"edgeplane since={int(self.since)}"
        return f"{since} confirm={self.confirm}" if since and self.confirm else since

    @classmethod
    def parse(cls, text: object) -> CredentialNote:
        """A note of the above form; an empty one for anything else (a client made
        before notes were kept, or by hand)."""
        match = _NOTE.match(text) if isinstance(text, str) else None
        if match is None:
            return cls()
        return cls(float(match["since"]), match["confirm"] or "")


def credential_note(since: float, confirm: str = "") -> str:
    return CredentialNote(since, confirm).text


def env_role(root: TopicRoot, env: str) -> Role:
    """An agent: its own status (heartbeats, will, clean stop) and events out; its own
    command topic and the controller's status in. Not even its own cmd topic to publish."""
    return Role(
        env_role_name(env),
        (
            _send(root.status(env)),
            _send(root.events(env)),
            _sub(root.cmd(env)),
            _sub(root.controller_status()),
        ),
        textname=f"agent of environment {env}",
    )


def controller_role(root: TopicRoot) -> Role:
    """The controller: commands out, views, alerts, its own status and replies out, the
    broker's admin API; statuses, events, requests in, and the views it keeps right. And,
    at its start, whether another controller is alive: a ping on the requests topic, the
    answer on its own reply topic."""
    return Role(
        "edgeplane-controller",
        (
            _send(f"{root}/env/+/cmd"),
            _send(f"{root}/env/+/status"),  # clearing a retired or forgotten env's status
            _send(root.controller_status()),
            _send(f"{root}/view/+"),
            _send(f"{root}/alerts/+"),
            _send(root.all_alert_states()),
            _send(f"{root}/controller/reply/+"),
            _send(CONTROL_TOPIC),
            _send(root.requests()),
            _sub(root.all_status()),
            _sub(root.all_events()),
            _sub(root.requests()),
            _sub(root.all_views()),
            _sub(root.controller_status()),
            _sub(root.reply(CONTROLLER_USER)),
            _sub(CONTROL_RESPONSE_TOPIC),
            # The plugin never lets the default access cover a $CONTROL topic: receiving
            # its responses must be granted (mosquitto 2.0.11 plugins/dynamic-security/acl.c).
            _receive(CONTROL_RESPONSE_TOPIC),
        ),
        textname="the edgeplane controller",
    )


def operator_role(root: TopicRoot, name: str, role: OperatorRole) -> Role:
    """A viewer reads views, alerts (and their retained states), events and the
    controller's status and publishes nothing; an admin also sends requests and reads its
    own replies."""
    reads: tuple[Acl, ...] = (
        _sub(root.all_views()),
        _sub(root.all_alerts()),
        _sub(root.all_alert_states()),
        _sub(root.all_events()),
        _sub(root.controller_status()),
    )
    if role == "admin":
        reads += (_send(root.requests()), _sub(root.reply(name)))
    elif role != "viewer":
        raise ValueError(f"operator role must be admin or viewer, got {role!r}")
    return Role(operator_role_name(name), reads, textname=f"operator {name} ({role})")
