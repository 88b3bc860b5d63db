"""Broker identities: environments enrolled, operators added and removed, retired
environments locked out. Only under ``edgeplane broker init`` (the controller logs in with a
user name); on a broker without identities every such request is refused with a sentence
saying so, and everything else works as before.

Records: the broker's dynamic security plugin is the one record of who may log in. An
operator is a client with a role named ``edgeplane-operator-{name}``; it is an admin when
that role may publish requests (one client per credential generation, ``name`` and
``name.N``: :mod:`controller.daemon.operator_credentials`). An environment's clients are named by
:func:`controller.core.acl.env_username` and carry ``edgeplane-env-{env}``.

Passwords are 192 random bits, made here, sent to the broker inside ``$CONTROL`` (which the
broker hands to the plugin only) and to the operator sealed to the key its request
carried: never readable in any other payload, and never logged.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Final, TypeVar

import msgspec
import structlog

from edgeplane.controller.core.acl import (
    CONTROLLER_USER,
    credential_note,
    env_generation,
    env_role,
    env_role_name,
    operator_role,
    operator_role_name,
)
from edgeplane.controller.core.operations import Effects, Operations
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.daemon.broker_admin import NOT_FOUND, BrokerAdmin
from edgeplane.controller.daemon.operator_credentials import OperatorCredentials, operator_of
from edgeplane.controller.daemon.refusals import sealed, translated
from edgeplane.controller.errors import BrokerAdminError, RequestRefused
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.rpc import (
    EnvCreate,
    EnvCreated,
    OperatorAdd,
    OperatorAdded,
    OperatorInfo,
    OperatorRemove,
    SealedCredential,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["LOCKOUT_GRACE", "NO_IDENTITIES", "EnvClients", "Identities", "new_password"]

NO_IDENTITIES: Final = (
    "this broker has no identities: it was not made by edgeplane broker init (the controller "
    "logs in without a user name)"
)
# Seconds a retiring agent that is online gets to stop its workflows and say goodbye
# before its client is deleted (the agent itself gives up after 30 s).
LOCKOUT_GRACE: Final = 35.0
_POLL: Final = 0.25

log: Final = structlog.get_logger("controller")
T = TypeVar("T")


def new_password() -> str:
    """192 random bits, URL-safe text (no quoting needed in TOML)."""
    return secrets.token_urlsafe(24)


class Identities:
    """``admin`` None: a broker without identities (every method refuses)."""

    def __init__(
        self,
        admin: BrokerAdmin | None,
        root: TopicRoot,
        presence: Presence,
        *,
        ca_pem: str = "",
        command_key: str = "",
        lockout_grace: float = LOCKOUT_GRACE,
        clock: Clock | None = None,
        rotate_after: float | None = None,
    ) -> None:
        self.admin = admin
        self._clock = clock or SystemClock()
        self._operator_credentials = (
            None
            if admin is None
            else OperatorCredentials(
                admin, root, self._clock, rotate_after=rotate_after, ca_pem=ca_pem
            )
        )
        self._root = root
        self._presence = presence
        self._ca_pem = ca_pem
        self.command_key = command_key  # the current one: a key rotation changes it
        self._grace = lockout_grace
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.admin is not None

    def env_clients(self) -> EnvClients:
        """The broker clients of environments, for credential rotation."""
        return EnvClients(self._admin(), self._root)

    def operator_credentials(self) -> OperatorCredentials:
        """Operators' credential generations, rotation and age."""
        if self._operator_credentials is None:
            raise RequestRefused("no-identities", NO_IDENTITIES)
        return self._operator_credentials

    def _admin(self) -> BrokerAdmin:
        if self.admin is None:
            raise RequestRefused("no-identities", NO_IDENTITIES)
        return self.admin

    # --- environments ---------------------------------------------------------------------
    async def create_env(self, request: EnvCreate, ops: Operations) -> tuple[EnvCreated, Effects]:
        """The record and the environment's broker client (user name and client id = its
        id, role env_role), with the password sealed to ``request.seal_to``."""
        admin = self._admin()
        env = ops.planned_id(request)
        await self._refuse_taken(admin, env, "environment")
        password = new_password()
        box = sealed(request.seal_to, password)
        role = env_role(self._root, env)
        await translated(admin.create_role(role))
        await translated(
            admin.create_client(
                env, password, role, clientid=env, textname=f"agent of environment {env}"
            )
        )
        info, effects = ops.create(request)
        log.info("environment enrolled", env=env)
        fields = msgspec.structs.asdict(info)
        return EnvCreated(**fields, credential=self._credential(env, box)), effects

    async def check_env_name(self, env: str) -> None:
        """Refuse an environment id that is the controller's or an operator's user name
        (also for a record made without a broker identity: retiring it would otherwise
        aim at that login)."""
        await self._refuse_taken(self._admin(), env, "environment")

    async def lock_out(self, env: str) -> None:
        """Delete every broker client of a retired ``env``: at once when its agent is not
        online, else once it went offline (it retired) or after the grace period."""
        if self.admin is None:
            return
        presence = self._presence.get(env)
        if presence is not None and presence.status == "online":
            task = asyncio.create_task(self._lock_out_after_goodbye(env), name=f"lockout-{env}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._delete_env_clients(env)

    async def lock_out_retired(self, ops: Operations) -> None:
        """Delete the clients of every retired environment still at the broker (a lockout
        that a restart or a lost connection interrupted)."""
        if self.admin is None:
            return
        retired = {record.id for record in ops.registry if record.retired is not None}
        try:
            clients = await self.admin.clients()
        except BrokerAdminError as exc:
            log.warning("could not list the broker's clients", error=str(exc))
            return
        for env in sorted({_env_of(client) for client in clients} & retired):
            await self._delete_env_clients(env)

    async def _lock_out_after_goodbye(self, env: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._grace
        while loop.time() < give_up:
            presence = self._presence.get(env)
            if presence is None or presence.status != "online":
                break
            await asyncio.sleep(_POLL)
        await self._delete_env_clients(env)

    async def _delete_env_clients(self, env: str) -> None:
        admin = self._admin()
        try:
            # Only clients that hold the environment's role: a record whose id is also an
            # operator's or the controller's user name must never delete that login.
            names = [c["username"] for c in await admin.clients() if _env_of(c) == env]
            for name in names:
                await admin.delete_client(name)
            await admin.run(
                {"command": "deleteRole", "rolename": env_role_name(env)},
                tolerate=("Role not found",),
            )
        except BrokerAdminError as exc:
            log.error("could not lock out a retired environment", env=env, error=str(exc))
            return
        log.info("retired environment locked out", env=env, clients=len(names))

    # --- operators ------------------------------------------------------------------------
    async def add_operator(
        self, request: OperatorAdd, ops: Operations
    ) -> tuple[OperatorAdded, Effects]:
        admin = self._admin()
        name = request.name
        if name in ops.registry:
            raise RequestRefused("exists", f"{name!r} is an environment's id; pick another name")
        await self._refuse_taken(admin, name, "operator")
        password = new_password()
        box = sealed(request.seal_to, password)
        role = operator_role(self._root, name, request.role)
        await translated(admin.create_role(role))
        await translated(
            admin.create_client(
                name,
                password,
                role,
                textname=f"operator ({request.role})",
                textdescription=credential_note(self._clock.time()),
            )
        )
        log.info("operator added", operator=name, role=request.role)
        credential = self._credential(name, box, for_agent=False)
        return OperatorAdded(name=name, role=request.role, credential=credential), Effects()

    async def operators(self) -> list[OperatorInfo]:
        """Every operator once, with the generation and age of its credential."""
        return await self.operator_credentials().listing()

    async def remove_operator(self, request: OperatorRemove, requester: str) -> OperatorInfo:
        admin = self._admin()
        everyone = {info.name: info for info in await self.operators()}
        removed = everyone.get(request.name)
        if removed is None:
            raise RequestRefused("not-found", f"no operator {request.name!r}")
        if request.name == requester:
            raise RequestRefused(
                "invalid", f"{request.name} cannot remove itself; another admin can"
            )
        admins = [info for info in everyone.values() if info.role == "admin"]
        if removed.role == "admin" and len(admins) == 1:
            raise RequestRefused("invalid", f"{request.name} is the last admin; add another first")
        generations = (await self.operator_credentials().generations()).get(request.name, [])
        commands: list[dict[str, Any]] = [
            {"command": "deleteClient", "username": g.username} for g in generations
        ]
        commands.append({"command": "deleteRole", "rolename": operator_role_name(request.name)})
        await translated(admin.run(*commands, tolerate=NOT_FOUND))
        log.info("operator removed", operator=request.name, generations=len(generations))
        return removed

    def requester(self, response_topic: str) -> str:
        """The operator a request came from: the name in its reply topic ("" for none)."""
        prefix = self._root.reply("x")[:-1]
        return response_topic.removeprefix(prefix) if response_topic.startswith(prefix) else ""

    # --- helpers --------------------------------------------------------------------------
    async def _refuse_taken(self, admin: BrokerAdmin, name: str, what: str) -> None:
        if name == CONTROLLER_USER:
            raise RequestRefused("invalid", f"{name!r} is the controller's own user name")
        clients = await translated(admin.clients())
        for client in clients:
            username = client.get("username")
            operator = operator_of(client)
            taken = _env_of(client) == name or (operator is not None and operator.name == name)
            if username == name or (isinstance(username, str) and taken):
                raise RequestRefused(
                    "exists",
                    f"the broker has a client named {name!r} already; pick another {what} name",
                )

    def _credential(
        self, username: str, sealed: str, *, for_agent: bool = True
    ) -> SealedCredential:
        key = self.command_key if for_agent else ""
        return SealedCredential(
            username=username, sealed_password=sealed, ca_pem=self._ca_pem, command_key=key
        )


class EnvClients:
    """An environment's broker clients through the dynamic security plugin: what
    :class:`controller.daemon.rotation.BrokerClients` asks for (a rotated generation is a
    client of its own beside the old one, with the environment's role and client id)."""

    def __init__(self, admin: BrokerAdmin, root: TopicRoot) -> None:
        self._admin = admin
        self._root = root

    async def create_client(
        self, username: str, password: str, *, client_id: str, role: str
    ) -> None:
        env_role_of = env_role(self._root, client_id)
        if env_role_of.rolename != role:
            raise BrokerAdminError(f"{role} is not the role of environment {client_id}")
        text = f"agent of environment {client_id} (rotated credential)"
        await self._admin.create_client(
            username, password, env_role_of, clientid=client_id, textname=text
        )

    async def delete_client(self, username: str) -> None:
        await self._admin.delete_client(username)


def _role_names(client: dict[str, Any]) -> set[str]:
    roles = client.get("roles", [])
    return (
        {r.get("rolename", "") for r in roles if isinstance(r, dict)}
        if isinstance(roles, list)
        else set()
    )


def _env_of(client: dict[str, Any]) -> str:
    """The environment a client belongs to ("" for none): by its role, so an operator whose
    name looks like an environment's is not taken for one."""
    username = client.get("username")
    parsed = env_generation(username) if isinstance(username, str) else None
    if parsed is None or env_role_name(parsed[0]) not in _role_names(client):
        return ""
    return parsed[0]
