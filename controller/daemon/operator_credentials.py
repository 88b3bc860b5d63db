"""Operators' broker credentials: their generations, rotation without lockout, and age.

An operator ``name`` has one broker client per credential generation: ``name`` as added,
``name.N`` after rotations (:func:`~edgeplane.controller.core.acl.operator_username`), all
with the role ``edgeplane-operator-{name}`` and the reply topic of ``name``. The *lowest*
generation is the one in use. A rotation creates the highest + 1 beside it; its
confirmation deletes every other generation, which leaves the confirmed one lowest (and
alone). So nothing is deleted before the command that asked has logged in with the new
credential and sent back a token only it could open: a command that dies in between
leaves both credentials working, and running it again replaces the pending one.

Each client's ``textdescription`` holds a :class:`~edgeplane.controller.core.acl.
CredentialNote`: when the credential was made, and for a rotated one the SHA-256 of its
confirmation token. Passwords and tokens (192 random bits) go out only sealed to the key
the request carried; neither is stored or logged in clear.

A person's password cannot be delivered automatically: with ``rotate_after`` set, an
operator whose credential is older is listed as ``due`` and :meth:`OperatorCredentials.
watch` logs a warning once a day per operator.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog

from edgeplane.controller.core.acl import (
    CredentialNote,
    OperatorRole,
    credential_note,
    operator_generation,
    operator_role,
    operator_role_name,
    operator_username,
)
from edgeplane.controller.daemon.broker_admin import NOT_FOUND, BrokerAdmin
from edgeplane.controller.daemon.refusals import sealed, translated
from edgeplane.controller.errors import RequestRefused
from edgeplane.shared.clock import Clock
from edgeplane.shared.rpc import (
    OperatorInfo,
    OperatorRotate,
    OperatorRotateConfirm,
    OperatorRotated,
    SealedCredential,
)
from edgeplane.shared.topics import TopicRoot

__all__ = ["CHECK_EVERY", "WARN_EVERY", "OperatorClient", "OperatorCredentials", "operator_of"]

WARN_EVERY: Final = 86400.0  # seconds between two warnings about one operator's old credential
CHECK_EVERY: Final = 3600.0  # seconds between two looks at the operators' ages
RETRY: Final = 2.0  # fewest seconds between two looks (the broker did not answer)

log: Final = structlog.get_logger("controller")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OperatorClient:
    """One generation of an operator's credential, as the broker has it."""

    name: str
    username: str
    generation: int
    note: CredentialNote


def operator_of(client: dict[str, Any]) -> OperatorClient | None:
    """The operator credential a broker client is (None: it is none): by its user name
    and its role, so an environment whose id looks like an operator's is not taken."""
    username = client.get("username")
    parsed = operator_generation(username) if isinstance(username, str) else None
    if parsed is None or operator_role_name(parsed[0]) not in _role_names(client):
        return None
    note = CredentialNote.parse(client.get("textdescription"))
    return OperatorClient(parsed[0], str(username), parsed[1], note)


class OperatorCredentials:
    """``rotate_after``: seconds after which a credential is due (None: never)."""

    def __init__(
        self,
        admin: BrokerAdmin,
        root: TopicRoot,
        clock: Clock,
        *,
        rotate_after: float | None = None,
        ca_pem: str = "",
    ) -> None:
        self._admin = admin
        self._root = root
        self._clock = clock
        self.rotate_after = rotate_after
        self._ca_pem = ca_pem
        self._warned: dict[str, float] = {}

    # --- reading --------------------------------------------------------------------------
    async def generations(self) -> dict[str, list[OperatorClient]]:
        """Every operator's credentials, lowest generation (the one in use) first."""
        found: dict[str, list[OperatorClient]] = {}
        for client in await translated(self._admin.clients()):
            operator = operator_of(client)
            if operator is not None:
                found.setdefault(operator.name, []).append(operator)
        return {name: sorted(gens, key=lambda g: g.generation) for name, gens in found.items()}

    async def listing(self) -> list[OperatorInfo]:
        everyone = await self.generations()
        admins = await self._admins()
        return [self._info(name, _kind(name, admins), everyone[name]) for name in sorted(everyone)]

    # --- rotation -------------------------------------------------------------------------
    async def rotate(self, request: OperatorRotate) -> OperatorRotated:
        """A new credential beside the one in use; see the module's text."""
        name = request.name
        gens = await self._of(name)
        kind = _kind(name, await self._admins())
        password, token = _token(), _token()
        box, sealed_proof = sealed(request.seal_to, password), sealed(request.seal_to, token)
        stale = [g.username for g in gens[1:] if g.username != request.login]
        await self._delete(stale)
        target = gens[-1].generation + 1
        username = operator_username(name, target)
        note = credential_note(self._clock.time(), _digest(token))
        await translated(
            self._admin.create_client(
                username,
                password,
                operator_role(self._root, name, kind),
                textname=f"operator ({kind}), rotated credential",
                textdescription=note,
            )
        )
        del password, token
        log.info("operator credential made", operator=name, username=username, replaced=stale)
        kept = [g for g in gens if g.username not in stale]
        made = OperatorClient(name, username, target, CredentialNote())
        info = self._info(name, kind, [*kept, made])
        credential = SealedCredential(
            username=username, sealed_password=box, ca_pem=self._ca_pem, command_key=""
        )
        return OperatorRotated(
            **_fields(info), rotated_to=target, credential=credential, sealed_proof=sealed_proof
        )

    async def confirm(self, request: OperatorRotateConfirm) -> OperatorInfo:
        """The new generation works: every other one of the operator is deleted."""
        name = request.name
        gens = await self._of(name)
        chosen = next((g for g in gens if g.generation == request.generation), None)
        if chosen is None:
            raise RequestRefused(
                "not-found",
                f"operator {name} has no credential generation {request.generation} "
                "(run rotate-credentials again)",
            )
        if not chosen.note.confirm or not hmac.compare_digest(
            chosen.note.confirm, _digest(request.proof)
        ):
            raise RequestRefused(
                "invalid",
                f"the confirmation of {chosen.username} does not match its rotation "
                "(run rotate-credentials again)",
            )
        others = [g.username for g in gens if g is not chosen]
        await self._delete(others)
        log.info("operator credential rotated", operator=name, username=chosen.username,
                 removed=others)  # fmt: skip
        return self._info(name, _kind(name, await self._admins()), [chosen])

    # --- age ------------------------------------------------------------------------------
    def warn_due(self, operators: Iterable[OperatorInfo]) -> list[str]:
        """Log a warning for each operator that is due, at most once per
        :data:`WARN_EVERY` each; the names warned about."""
        now = self._clock.time()
        warned = []
        for info in operators:
            last = self._warned.get(info.name)
            if not info.due or (last is not None and now - last < WARN_EVERY):
                continue
            self._warned[info.name] = now
            warned.append(info.name)
            log.warning(
                "operator credential due for rotation",
                operator=info.name,
                age=None if info.age is None else round(info.age),
                rotate_after=self.rotate_after,
                fix=f"edgeplane operator rotate-credentials {info.name} --output FILE",
            )
        return warned

    async def watch(self) -> None:
        """With ``rotate_after`` set: look at the operators' ages now and then, warn."""
        rotate_after = self.rotate_after
        if rotate_after is None:
            return
        while True:
            try:
                operators = await self.listing()
                self.warn_due(operators)
                wait = _next_look(operators, rotate_after)
            except RequestRefused as exc:
                log.debug("could not look at the operators' credentials", error=exc.message)
                wait = RETRY
            await asyncio.sleep(wait)

    # --- helpers --------------------------------------------------------------------------
    async def _of(self, name: str) -> list[OperatorClient]:
        gens = (await self.generations()).get(name)
        if not gens:
            raise RequestRefused("not-found", f"no operator {name!r}")
        return gens

    async def _admins(self) -> set[str]:
        requests = self._root.requests()
        roles = await translated(self._admin.roles())
        return {role["rolename"] for role in roles if _may_send(role, requests)}

    async def _delete(self, usernames: list[str]) -> None:
        if usernames:
            commands = [{"command": "deleteClient", "username": u} for u in usernames]
            await translated(self._admin.run(*commands, tolerate=NOT_FOUND))

    def _info(self, name: str, kind: str, gens: list[OperatorClient]) -> OperatorInfo:
        current = gens[0]
        since = current.note.since
        age = None if since is None else max(0.0, self._clock.time() - since)
        due = self.rotate_after is not None and (age is None or age >= self.rotate_after)
        return OperatorInfo(
            name=name,
            role=kind,
            generation=current.generation,
            since=since,
            age=age,
            pending=gens[-1].generation if len(gens) > 1 else 0,
            due=due,
        )


def _next_look(operators: Iterable[OperatorInfo], rotate_after: float) -> float:
    """Seconds until the next credential comes of age, at most :data:`CHECK_EVERY`
    (operators come and go), at least :data:`RETRY`."""
    coming = [rotate_after - i.age for i in operators if not i.due and i.age is not None]
    return max(RETRY, min([CHECK_EVERY, *coming]))


def _kind(name: str, admin_roles: set[str]) -> OperatorRole:
    return "admin" if operator_role_name(name) in admin_roles else "viewer"


def _may_send(role: dict[str, Any], requests: str) -> bool:
    return any(
        acl.get("acltype") == "publishClientSend" and acl.get("topic") == requests
        for acl in role.get("acls", [])
        if isinstance(acl, dict)
    )


def _role_names(client: dict[str, Any]) -> set[str]:
    roles = client.get("roles", [])
    return (
        {r.get("rolename", "") for r in roles if isinstance(r, dict)}
        if isinstance(roles, list)
        else set()
    )


def _token() -> str:
    """192 random bits, URL-safe text."""
    return secrets.token_urlsafe(24)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fields(info: OperatorInfo) -> dict[str, Any]:
    return {field: getattr(info, field) for field in info.__struct_fields__}
