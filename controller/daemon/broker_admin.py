"""The broker's identities, administered through mosquitto's dynamic security plugin.

Commands go as JSON ``{"commands": [...]}`` to ``$CONTROL/dynamic-security/v1`` on the
controller's presence connection; the plugin answers every payload with one message on
``$CONTROL/dynamic-security/v1/response`` (QoS 0, to every subscriber the ACL lets read it:
only the controller), ``{"responses": [...]}``, one per command in order, each with the
``correlationData`` string the command carried and an ``error`` when it failed. The broker
hands ``$CONTROL`` messages to the plugin only, never to a subscriber.

Every failure is a :class:`BrokerAdminError` with the plugin's words; a lost connection or
no answer in time too. Role and client bodies come from :mod:`controller.core.acl`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, Final

import structlog

from edgeplane.controller.core.acl import CONTROL_TOPIC, Role
from edgeplane.controller.errors import BrokerAdminError, BrokerUnavailable
from edgeplane.controller.mqtt import Connection

__all__ = ["ADMIN_TIMEOUT", "NOT_FOUND", "BrokerAdmin", "role_body"]

ADMIN_TIMEOUT: Final = 10.0  # seconds to wait for the plugin's answer
NOT_FOUND: Final = ("Client not found", "Role not found")

log: Final = structlog.get_logger("controller")

Command = dict[str, Any]


def role_body(role: Role) -> list[dict[str, Any]]:
    """A role's ACLs in the plugin's JSON."""
    return [
        {"acltype": acl.acltype, "topic": acl.topic, "allow": acl.allow, "priority": acl.priority}
        for acl in role.acls
    ]


class BrokerAdmin:
    """The plugin's client, kept across connections: :meth:`attach` at every connection
    (after subscribing to the response topic), :meth:`take` each response message."""

    def __init__(self, timeout: float = ADMIN_TIMEOUT) -> None:
        self._timeout = timeout
        self._connection: Connection | None = None
        self._pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}

    def attach(self, connection: Connection) -> None:
        self._connection = connection

    def detach(self) -> None:
        self._connection = None
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(BrokerAdminError("the broker connection was lost"))

    def take(self, payload: bytes) -> None:
        """One message of the response topic; an answer nobody waits for is ignored."""
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable dynamic security response", size=len(payload))
            return
        if not isinstance(responses, list):
            return
        answered: dict[str, list[dict[str, Any]]] = {}
        for response in responses:
            if isinstance(response, dict) and isinstance(response.get("correlationData"), str):
                answered.setdefault(response["correlationData"], []).append(response)
        for token, found in answered.items():
            waiting = self._pending.get(token)
            if waiting is not None and not waiting.done():
                waiting.set_result(found)

    async def run(self, *commands: Command, tolerate: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Send ``commands`` in one payload; their responses, in order. Raises
        :class:`BrokerAdminError` for the first that failed with an error not in ``tolerate``."""
        connection = self._connection
        if connection is None:
            raise BrokerAdminError("not connected to the broker")
        token = secrets.token_hex(8)
        tagged = [{**command, "correlationData": token} for command in commands]
        waiting: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending[token] = waiting
        try:
            async with asyncio.timeout(self._timeout):
                await connection.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}).encode())
                responses = await waiting
        except TimeoutError:
            raise BrokerAdminError(
                f"the broker's dynamic security plugin did not answer within {self._timeout:g} s"
            ) from None
        except BrokerUnavailable as exc:
            raise BrokerAdminError(f"the broker connection was lost: {exc}") from exc
        finally:
            self._pending.pop(token, None)
        _check(commands, responses, frozenset(tolerate))
        return responses

    # --- the commands edgeplane uses ------------------------------------------------------
    async def create_role(self, role: Role) -> None:
        """Create ``role``, or set its ACLs when it exists already (a leftover)."""
        body = role_body(role)
        create = {"command": "createRole", "rolename": role.rolename, "textname": role.textname}
        responses = await self.run({**create, "acls": body}, tolerate=("Role already exists",))
        if responses and responses[0].get("error"):
            await self.run({"command": "modifyRole", "rolename": role.rolename, "acls": body})

    async def create_client(
        self,
        username: str,
        password: str,
        role: Role,
        *,
        clientid: str = "",
        textname: str = "",
        textdescription: str = "",
    ) -> None:
        command: Command = {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": textname,
            "roles": [{"rolename": role.rolename}],
        }
        if textdescription:
            command["textdescription"] = textdescription
        if clientid:
            command["clientid"] = clientid
        await self.run(command)

    async def delete_client(self, username: str, role: str | None = None) -> None:
        """Delete a client (the plugin disconnects its sessions) and its own role; gone
        already is fine."""
        commands: list[Command] = [{"command": "deleteClient", "username": username}]
        if role is not None:
            commands.append({"command": "deleteRole", "rolename": role})
        await self.run(*commands, tolerate=NOT_FOUND)

    async def clients(self) -> list[dict[str, Any]]:
        """Every client, verbose (username, clientid, textname, roles)."""
        responses = await self.run({"command": "listClients", "verbose": True, "count": -1})
        return _listed(responses[0], "clients")

    async def roles(self) -> list[dict[str, Any]]:
        """Every role, verbose (rolename, acls)."""
        responses = await self.run({"command": "listRoles", "verbose": True, "count": -1})
        return _listed(responses[0], "roles")


def _check(
    commands: Sequence[Command], responses: list[dict[str, Any]], tolerate: frozenset[str]
) -> None:
    if len(responses) < len(commands):
        raise BrokerAdminError(
            f"the dynamic security plugin answered {len(responses)} of {len(commands)} commands"
        )
    for command, response in zip(commands, responses, strict=False):
        error = response.get("error")
        if error and error not in tolerate:
            what = command.get("username") or command.get("rolename") or ""
            raise BrokerAdminError(
                f"the broker refused {command['command']} {what}: {error}".replace("  ", " "),
                str(error),
            )


def _listed(response: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = response.get("data", {}).get(key, [])
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
