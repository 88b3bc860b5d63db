"""Credential rotation, the I/O shell around :mod:`edgeplane.controller.core.rotation`:
broker clients made and deleted, passwords made and sealed, every step stored before the
next one is taken.

The broker's clients are made through :class:`BrokerClients`, which the controller's
dynamic-security client provides (``createClient`` with the environment's role and client
id, ``deleteClient``). A new password (256 random bits) lives only in this module's
memory between being made and being given to the broker: what is stored and sent is the
password sealed to the agent's box key (PyNaCl ``SealedBox``), which only the agent opens,
together with a new proof of possession (128 random bits; stored in clear, it opens
nothing: it only ends the rotation when the agent reports it, see core/rotation.py).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

import structlog

from edgeplane.controller.core.acl import env_role_name
from edgeplane.controller.core.records import Writes
from edgeplane.controller.core.rotation import (
    Action,
    CreateClient,
    Credential,
    DeleteClient,
    RotationCause,
    Rotations,
    SendCredentials,
)
from edgeplane.controller.daemon.store import Store
from edgeplane.controller.errors import ControllerError, RequestRefused
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import Credentials, OnlineStatus

__all__ = ["PASSWORD_BYTES", "PROOF_BYTES", "BrokerClients", "CredentialRotator", "seal"]

PASSWORD_BYTES: Final = 32
PROOF_BYTES: Final = 16

log: Final = structlog.get_logger("controller")


class BrokerClients(Protocol):
    """The broker's client administration (the dynamic security plugin)."""

    async def create_client(
        self, username: str, password: str, *, client_id: str, role: str
    ) -> None: ...

    async def delete_client(self, username: str) -> None:
        """Delete ``username``; one that does not exist counts as deleted."""
        ...


def seal(password: str, proof: str, box_key: str) -> str:
    """``{"password": ..., "proof": ...}`` sealed to the base64 X25519 public key
    ``box_key``, base64."""
    from nacl.public import PublicKey, SealedBox

    clear = json.dumps({"password": password, "proof": proof}).encode("utf-8")
    sealed = SealedBox(PublicKey(base64.b64decode(box_key, validate=True))).encrypt(clear)
    return base64.b64encode(sealed).decode("ascii")


class CredentialRotator:
    """Carries out what the rotation core decides. ``send`` publishes a command to an
    environment's agent; ``online_bdseq`` says which connection of an environment is
    online now (None: offline); ``enrolled`` when an environment's record was made."""

    def __init__(
        self,
        rotations: Rotations,
        clients: BrokerClients,
        store: Store,
        clock: Clock,
        *,
        send: Callable[[str, Credentials], Awaitable[None]],
        online_bdseq: Callable[[str], int | None],
        enrolled: Callable[[str], float],
    ) -> None:
        self.rotations = rotations
        self._clients = clients
        self._store = store
        self._clock = clock
        self._send = send
        self._online_bdseq = online_bdseq
        self._enrolled = enrolled

    async def rotate(
        self, env: str, cause: RotationCause = "operator", *, repin: bool = False
    ) -> Credential:
        """Start a rotation of ``env``'s credential; the state it reached. ``repin``: seal
        to the box key of the agent connected now (the operator reinstalled it)."""
        now = self._clock.time()
        repin_on = self._online_bdseq(env) if repin else None
        if repin and repin_on is None:
            raise RequestRefused(
                "offline",
                f"environment {env} is offline: --repin pins the box key of the agent "
                "connected now",
            )
        state, actions = self.rotations.start(
            env, cause, now, self._enrolled(env), repin_on=repin_on
        )
        if repin:
            log.warning("box key re-pinned by an operator", env=env, box_key=state.box_key)
        await self._keep([state])
        await self._carry_out(actions)
        return self.rotations.get(env) or state

    async def on_online(self, message: OnlineStatus) -> None:
        changed, actions = self.rotations.on_online(message, self._enrolled(message.env))
        if changed is not None:
            await self._keep([changed])
        await self._carry_out(actions)

    async def resume(self) -> None:
        """After a restart: the steps that were under way, taken again."""
        await self._carry_out(self.rotations.resume())

    async def rotate_due(self, enrolled: dict[str, float]) -> list[tuple[str, str]]:
        """Rotate every credential older than the core's ``rotate_after``; the ones that
        failed, (env, why)."""
        failed: list[tuple[str, str]] = []
        for env in self.rotations.due(self._clock.time(), enrolled):
            try:
                await self.rotate(env, "age")
            except (ControllerError, RequestRefused) as exc:
                log.warning("automatic credential rotation failed", env=env, error=str(exc))
                failed.append((env, str(exc)))
        return failed

    # --- the steps --------------------------------------------------------------------------
    async def _carry_out(self, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case CreateClient():
                    await self._create(action)
                case SendCredentials(env=env, command=command):
                    await self._send(env, command)
                    log.info("credentials sent", env=env, username=command.username)
                case DeleteClient(env=env, username=username):
                    await self._clients.delete_client(username)
                    log.info("old credential removed", env=env, username=username)
                    await self._keep([self.rotations.removed(env, self._clock.time())])

    async def _create(self, action: CreateClient) -> None:
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        proof = secrets.token_hex(PROOF_BYTES)
        sealed = seal(password, proof, action.box_key)
        # A client half made by a controller killed earlier is made again from scratch.
        await self._clients.delete_client(action.username)
        await self._clients.create_client(
            action.username, password, client_id=action.env, role=env_role_name(action.env)
        )
        del password
        log.info("new credential made", env=action.env, username=action.username)
        state, actions = self.rotations.created(
            action.env,
            action.generation,
            sealed,
            action.box_key,
            self._online_bdseq(action.env),
            proof=proof,
        )
        await self._keep([state])
        await self._carry_out(actions)

    async def _keep(self, credentials: list[Credential]) -> None:
        """Stored and committed before the next step: a restart resumes from here."""
        number = await self._store.submit(Writes(credentials=credentials, urgent=True))
        await self._store.wait_committed(number)
