"""Credential rotation without lockout: the decisions, over messages and an injected clock
(pure, no I/O; the shell in :mod:`edgeplane.controller.daemon.rotation` carries them out).

An environment's broker credential has a *generation*: 0 as enrolled (user name ``env``),
N after the N-th rotation (``env.N``, :func:`~edgeplane.controller.core.acl.env_username`).
A rotation to N+1 goes through these states, each stored before the next step is taken, so
a controller killed at any point takes up where it was (:meth:`Rotations.resume`):

``creating``  the new broker client ``env.N+1`` is being made beside the old one (the
              shell makes a password, seals it to the agent's box key, creates the client);
``created``   it exists, and only its *sealed* password is kept (with its proof, below);
              the ``credentials`` command goes out when the agent is online (at once, or
              when it returns);
``sent``      the command went out on the agent's current connection; it is sent again on
              each new connection until the agent comes online with generation N+1;
``removing``  the agent is online with N+1, proven: the old client ``env.N`` is deleted.

Once the old client is gone the environment is idle again with generation N+1. The agent
keeps its previous credential until the new one is accepted, so no state leaves it
unable to connect.

**Proof of possession.** An online message's ``cred_gen`` is only the agent's claim: whoever
holds the old credential can claim N+1 while the agent is away, and deleting the old client
on that claim would lock the agent out. So each new credential comes with a random *proof*,
sealed with the password; only a connection that reports it (``cred_proof``, which the agent
sends only while logged in with that credential) ends the rotation. Asked again, a rotation
makes a new password and a new proof: an online of the earlier password's session does not
end it either. A claim without the right proof changes nothing (:meth:`Rotations.proof_refused`
names it, so that it is counted).

**The pinned box key.** The first box key an environment's agent reports is pinned, and
every new password is sealed to the pinned key only. Whoever holds a leaked credential and
reports a key of its own while the agent is away gets nothing it can open: an online with
another key never moves the pin (:meth:`Rotations.key_mismatch` names it, so that it is
counted and raises ``identity-conflict``), nor does it receive a pending command. Only an
operator moves the pin (``env rotate-credentials ID --repin``, after reinstalling an
agent): to the key of the environment's current connection.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from edgeplane.controller.core.acl import env_username
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import Credentials, OnlineStatus

__all__ = [
    "CAUSES",
    "PROOF_REFUSED",
    "Action",
    "CreateClient",
    "Credential",
    "DeleteClient",
    "RotationCause",
    "RotationState",
    "Rotations",
    "SendCredentials",
    "fingerprint",
]

PROOF_REFUSED: Final = "bad-credential-proof"  # the bad-input reason of a claim without proof

RotationState = Literal["creating", "created", "sent", "removing"]
RotationCause = Literal["operator", "age"]
CAUSES: Final = ("operator", "age")


@dataclass(frozen=True, slots=True)
class Credential:
    """One environment's broker credential, and the rotation under way (``state`` None:
    none). ``sealed`` is the new password sealed to ``sealed_to`` (the agent's box key,
    base64): the clear password is never kept. ``proof`` is the new credential's proof
    of possession (sealed with it): the online that reports it ends the rotation."""

    env: str
    generation: int = 0
    since: float = 0.0  # when the credential in use was made (unix seconds)
    box_key: str = ""  # the agent's X25519 public key, pinned: the first one it reported
    state: RotationState | None = None
    target: int = 0  # the generation being rolled out
    started: float | None = None
    cause: str = ""
    sealed: str = ""
    sealed_to: str = ""
    sent_bdseq: int | None = None  # the connection the command last went out on
    reported_key: str = ""  # the box key of the latest connection that reported one
    reported_bdseq: int | None = None  # that connection
    proof: str = ""

    @property
    def rotating(self) -> bool:
        return self.state is not None

    @property
    def key_mismatch(self) -> bool:
        """The latest connection reported a box key other than the pinned one."""
        return bool(self.reported_key and self.box_key and self.reported_key != self.box_key)

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
        self,
        env: str,
        cause: RotationCause,
        now: float,
        enrolled: float,
        *,
        repin_on: int | None = None,
    ) -> tuple[Credential, list[Action]]:
        """Begin rotating ``env``'s credential (``enrolled``: when its record was made, the
        age of a credential never rotated). Asked again while the new client is not yet
        in use, the same generation is made again with a new password. ``repin_on``: the
        operator re-pins the box key to the one reported by this connection (the agent's
        current one) first."""
        current = self._by_env.get(env) or Credential(env, since=enrolled)
        if repin_on is not None:
            current = self._repinned(current, repin_on)
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
            proof="",
        )
        return self._put(rotation), [self._create(rotation)]

    def _repinned(self, current: Credential, bdseq: int) -> Credential:
        if current.reported_bdseq != bdseq or not current.reported_key:
            raise RequestRefused(
                "offline",
                f"environment {current.env} has no online connection that reported a box "
                "key: --repin pins the key of the agent connected now",
            )
        return dataclasses.replace(current, box_key=current.reported_key)

    def key_mismatch(self, message: OnlineStatus) -> str | None:
        """Why ``message``'s box key is not taken (another key is pinned), or None."""
        credential = self._by_env.get(message.env)
        if credential is None or not credential.box_key or not message.box_key:
            return None
        if message.box_key == credential.box_key:
            return None
        return (
            f"environment {message.env}: connection bdseq {message.bdseq} reports box key "
            f"{fingerprint(message.box_key)}, not the pinned {fingerprint(credential.box_key)}"
            f" (another runtime, or an agent whose state was wiped: "
            f"env rotate-credentials {message.env} --repin once it is reinstalled)"
        )

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
        self,
        env: str,
        generation: int,
        sealed: str,
        sealed_to: str,
        online_bdseq: int | None,
        *,
        proof: str,
    ) -> tuple[Credential, list[Action]]:
        """The client of ``generation`` exists, its password and ``proof`` ``sealed`` to
        ``sealed_to``. ``online_bdseq``: the agent's current connection (None: it is not
        online)."""
        current = self._require(env)
        if current.state != "creating" or current.target != generation:
            return current, []  # a stale report: a newer start took over
        rotation = dataclasses.replace(
            current, state="created", sealed=sealed, sealed_to=sealed_to, proof=proof
        )
        stranger = rotation.key_mismatch and rotation.reported_bdseq == online_bdseq
        if online_bdseq is None or stranger:  # sent to the agent with the pinned key only
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
                proof="",
            )
        )

    # --- what the agent says ------------------------------------------------------------------
    def on_online(
        self, message: OnlineStatus, enrolled: float
    ) -> tuple[Credential | None, list[Action]]:
        """An online message of ``message.env``'s agent: the first box key is pinned, a
        pending command is sent on a new connection that has not reported another key,
        the new generation in use, with its proof, ends the rotation. Returns the
        credential when it changed (to store), and what to do."""
        env = message.env
        current = self._by_env.get(env)
        if current is None and not message.box_key:
            return None, []
        updated = _reported(current or Credential(env, since=enrolled), message)
        # What is sealed to the pinned key is of no use to a connection with another key.
        stranger = updated.key_mismatch and updated.reported_bdseq == message.bdseq
        pending = updated.state in ("created", "sent") and updated.sent_bdseq != message.bdseq
        claimed = updated.rotating and message.cred_gen == updated.target
        if claimed and updated.state in ("created", "sent") and _proven(updated, message):
            updated = self._put(dataclasses.replace(updated, state="removing"))
            return updated, [self._delete(updated)]
        if pending and not stranger:
            return self._send(updated, message.bdseq)
        if updated == current:
            return None, []
        return self._put(updated), []

    def proof_refused(self, message: OnlineStatus) -> str | None:
        """Why ``message`` claims the generation being rolled out without its proof (it
        changes nothing), or None."""
        credential = self._by_env.get(message.env)
        if credential is None or credential.state in (None, "removing"):
            return None
        if message.cred_gen != credential.target or _proven(credential, message):
            return None
        what = "a stale proof" if message.cred_proof else "no proof"
        return (
            f"environment {message.env}: connection bdseq {message.bdseq} claims credential "
            f"generation {message.cred_gen} with {what} of it (the old credential in other "
            "hands, or an earlier password of a rotation asked again): the old credential is "
            "kept"
        )

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


def _reported(credential: Credential, message: OnlineStatus) -> Credential:
    """``credential`` with the box key ``message`` reports noted (and pinned, if none is)."""
    if not message.box_key:
        return credential
    return dataclasses.replace(
        credential,
        box_key=credential.box_key or message.box_key,
        reported_key=message.box_key,
        reported_bdseq=message.bdseq,
    )


def _proven(credential: Credential, message: OnlineStatus) -> bool:
    """``message`` reports the proof of ``credential``'s pending new credential."""
    reported, stored = message.cred_proof.encode(), credential.proof.encode()
    return bool(stored) and hmac.compare_digest(reported, stored)


def fingerprint(box_key: str) -> str:
    """A short, readable name of a box key (a public key: nothing secret) for logs."""
    return f"{box_key[:8]}..." if len(box_key) > 8 else box_key
