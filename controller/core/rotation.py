"""Credential rotation without lockout: the decisions, over messages and an injected clock
(pure, no I/O; the shell in :mod:`edgeplane.controller.daemon.rotation` carries them out).

An environment's broker credential has a *generation*: 0 as enrolled (user name ``env``),
N after the N-th rotation (``env.N``, :func:`~edgeplane.controller.core.acl.env_username`).
A rotation to N+1 goes through these states, each stored before the next step is taken, so
a controller killed at any point takes up where it was (:meth:`Rotations.resume`):

``creating``  the new broker client ``env.N+1`` is being made beside the old one (the
              shell makes a password, seals it to the agent's box key, creates the client);
``created``   it exists, and only its *sealed* password is kept; the ``credentials``
              command goes out when the agent is online (at once, or when it returns);
``sent``      the command went out on the agent's current connection; it is sent again on
              each new connection until the agent comes online with generation N+1;
``removing``  the agent is online with N+1: the old client ``env.N`` is deleted.

Once the old client is gone the environment is idle again with generation N+1. The agent
keeps its previous credential until the new one is accepted, so no state leaves it
unable to connect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from edgeplane.controller.core.acl import env_username
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import Credentials, OnlineStatus

__all__ = [
    "CAUSES",
    "Action",
    "CreateClient",
    "Credential",
    "DeleteClient",
    "RotationCause",
    "RotationState",
    "Rotations",
    "SendCredentials",
]

RotationState = Literal["creating", "created", "sent", "removing"]
RotationCause = Literal["operator", "age"]
CAUSES: Final = ("operator", "age")


@dataclass(frozen=True, slots=True)
class Credential:
    """One environment's broker credential, and the rotation under way (``state`` None:
    none). ``sealed`` is the new password sealed to ``sealed_to`` (the agent's box key,
    base64): the clear password is never kept."""

    env: str
    generation: int = 0
    since: float = 0.0  # when the credential in use was made (unix seconds)
    box_key: str = ""  # the agent's X25519 public key, as it last reported it
    state: RotationState | None = None
    target: int = 0  # the generation being rolled out
    started: float | None = None
    cause: str = ""
    sealed: str = ""
    sealed_to: str = ""
    sent_bdseq: int | None = None  # the connection the command last went out on

    @property
    def rotating(self) -> bool:
        return self.state is not None

    def age(self, now: float) -> float:
        return max(0.0, now - self.since)


@dataclass(frozen=True, slots=True)
class CreateClient:
    """Make broker client ``username`` (client id ``env``, the environment's role) with a
    new password sealed to ``box_key``, then report :meth:`Rotations.created`."""

    env: str
    username: str
    generation: int
    box_key: str


@dataclass(frozen=True, slots=True)
class SendCredentials:
    """Publish ``command`` to the environment's agent."""

    env: str
    command: Credentials


@dataclass(frozen=True, slots=True)
class DeleteClient:
    """Delete broker client ``username`` (an environment's old credential), then report
    :meth:`Rotations.removed`. One that is gone already counts as deleted."""

    env: str
    username: str


Action = CreateClient | SendCredentials | DeleteClient


class Rotations:
    """Every environment's credential and rotation, by id. ``rotate_after``: seconds after
    which a credential is rotated on its own (None: only when an operator asks).
    ``new_id`` names each ``credentials`` command."""

    def __init__(
        self,
        rotate_after: float | None,
        new_id: Iterator[str],
        credentials: Iterable[Credential] = (),
    ) -> None:
        self.rotate_after = rotate_after
        self._ids = new_id
        self._by_env: dict[str, Credential] = {c.env: c for c in credentials}

    def __iter__(self) -> Iterator[Credential]:
        return iter(sorted(self._by_env.values(), key=lambda c: c.env))

    def get(self, env: str) -> Credential | None:
        return self._by_env.get(env)

    # --- starting -----------------------------------------------------------------------------
    def start(
        self, env: str, cause: RotationCause, now: float, enrolled: float
    ) -> tuple[Credential, list[Action]]:
        """Begin rotating ``env``'s credential (``enrolled``: when its record was made, the
        age of a credential never rotated). Asked again while the new client is not yet
        in use, the same generation is made again with a new password."""
        current = self._by_env.get(env) or Credential(env, since=enrolled)
        if current.state == "removing":
            raise RequestRefused(
                "invalid",
                f"environment {env} is already on generation {current.target}; its old "
                "credential is being removed",
            )
        if not current.box_key:
            raise RequestRefused(
                "offline",
                f"environment {env}'s agent has not reported a box key yet (it must have "
                "been online with an agent that takes rotated credentials)",
            )
        target = current.target if current.rotating else current.generation + 1
        rotation = dataclasses.replace(
            current,
            state="creating",
            target=target,
            started=now,
            cause=cause,
            sealed="",
            sealed_to="",
            sent_bdseq=None,
        )
        return self._put(rotation), [self._create(rotation)]

    def due(self, now: float, enrolled: dict[str, float]) -> list[str]:
        """The environments (of ``enrolled``: id -> when their record was made) whose
        credential is older than ``rotate_after`` and whose agent can take a new one."""
        if self.rotate_after is None:
            return []
        due = []
        for env, created in sorted(enrolled.items()):
            credential = self._by_env.get(env) or Credential(env, since=created)
            ready = credential.box_key and not credential.rotating
            if ready and credential.age(now) >= self.rotate_after:
                due.append(env)
        return due

    def next_due(self, enrolled: dict[str, float]) -> float | None:
        """When the next credential of ``enrolled`` that :meth:`due` could take comes of
        age (None: never)."""
        if self.rotate_after is None:
            return None
        times = [
            credential.since + self.rotate_after
            for credential in self._by_env.values()
            if credential.env in enrolled and credential.box_key and not credential.rotating
        ]
        return min(times, default=None)

    # --- the shell's reports ------------------------------------------------------------------
    def created(
        self, env: str, generation: int, sealed: str, sealed_to: str, online_bdseq: int | None
    ) -> tuple[Credential, list[Action]]:
        """The client of ``generation`` exists, its password ``sealed`` to ``sealed_to``.
        ``online_bdseq``: the agent's current connection (None: it is not online)."""
        current = self._require(env)
        if current.state != "creating" or current.target != generation:
            return current, []  # a stale report: a newer start took over
        rotation = dataclasses.replace(current, state="created", sealed=sealed, sealed_to=sealed_to)
        if online_bdseq is None:
            return self._put(rotation), []
        return self._send(rotation, online_bdseq)

    def removed(self, env: str, now: float) -> Credential:
        """The old client is gone: ``env`` is idle on its new generation."""
        current = self._require(env)
        if current.state != "removing":
            return current
        return self._put(
            dataclasses.replace(
                current,
                generation=current.target,
                since=current.started if current.started is not None else now,
                state=None,
                target=0,
                started=None,
                cause="",
                sealed="",
                sealed_to="",
                sent_bdseq=None,
            )
        )

    # --- what the agent says ------------------------------------------------------------------
    def on_online(
        self, message: OnlineStatus, enrolled: float
    ) -> tuple[Credential | None, list[Action]]:
        """An online message of ``message.env``'s agent: a new box key is kept, a pending
        command is sent on a new connection, the new generation in use ends the rotation.
        Returns the credential when it changed (to store), and what to do."""
        env = message.env
        current = self._by_env.get(env)
        if current is None and not message.box_key:
            return None, []
        before = current or Credential(env, since=enrolled)
        updated = before
        if message.box_key and message.box_key != before.box_key:
            updated = dataclasses.replace(updated, box_key=message.box_key)
        if updated.rotating and message.cred_gen == updated.target:
            if updated.state != "removing":
                updated = self._put(dataclasses.replace(updated, state="removing"))
                return updated, [self._delete(updated)]
        elif updated.state in ("created", "sent") and updated.sealed_to != updated.box_key:
            # The agent has a new key pair (its state directory was made anew): what was
            # sealed to the old key is of no use, so the new client is made again.
            again = dataclasses.replace(updated, state="creating", sealed="", sealed_to="")
            return self._put(again), [self._create(again)]
        elif updated.state in ("created", "sent") and updated.sent_bdseq != message.bdseq:
            return self._send(updated, message.bdseq)
        if updated == current:
            return None, []
        return self._put(updated), []

    # --- restart ------------------------------------------------------------------------------
    def resume(self) -> list[Action]:
        """After a restart: what was under way goes on. A client half made is made again;
        a command is sent again on the next online seen (it may not have gone out)."""
        actions: list[Action] = []
        for credential in list(self):
            match credential.state:
                case "creating":
                    actions.append(self._create(credential))
                case "removing":
                    actions.append(self._delete(credential))
                case "created" | "sent":
                    self._by_env[credential.env] = dataclasses.replace(credential, sent_bdseq=None)
                case None:
                    pass
        return actions

    def forget(self, env: str) -> None:
        """A retired environment: its clients are removed by the retirement."""
        self._by_env.pop(env, None)

    # --- helpers ------------------------------------------------------------------------------
    def _send(self, rotation: Credential, bdseq: int) -> tuple[Credential, list[Action]]:
        command = Credentials(
            id=next(self._ids),
            username=env_username(rotation.env, rotation.target),
            generation=rotation.target,
            sealed=rotation.sealed,
            box_key=rotation.sealed_to,
        )
        sent = self._put(dataclasses.replace(rotation, state="sent", sent_bdseq=bdseq))
        return sent, [SendCredentials(rotation.env, command)]

    @staticmethod
    def _create(rotation: Credential) -> CreateClient:
        username = env_username(rotation.env, rotation.target)
        return CreateClient(rotation.env, username, rotation.target, rotation.box_key)

    @staticmethod
    def _delete(rotation: Credential) -> DeleteClient:
        return DeleteClient(rotation.env, env_username(rotation.env, rotation.generation))

    def _require(self, env: str) -> Credential:
        current = self._by_env.get(env)
        if current is None:
            raise RequestRefused("not-found", f"no credential rotation of environment {env!r}")
        return current

    def _put(self, credential: Credential) -> Credential:
        self._by_env[credential.env] = credential
        return credential
