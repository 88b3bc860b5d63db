"""The controller's command keys and their rotation, the shell around
:mod:`edgeplane.controller.core.key_rotation`: which key signs a command for which agent,
the key files (:mod:`edgeplane.controller.command_key`), and what the core decides turned
into :class:`Effects` (rows stored before the ``trust`` / ``distrust`` commands go out).

The old key is dropped (the new file moved over it) before the rotation is stored as
finished; a controller killed in between finds the new key in the key file and finishes
the rotation when it starts again (:func:`open_command_keys`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from edgeplane.controller.command_key import (
    load_command_key,
    load_next_key,
    make_next_key,
    next_key_file,
    promote_next_key,
)
from edgeplane.controller.core.key_rotation import AgentTrust, KeyRotation, KeyRotations, KeyStep
from edgeplane.controller.core.operations import Effects, Operations, Outgoing, new_id
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.records import Writes
from edgeplane.controller.errors import CommandKeyError
from edgeplane.shared.clock import Clock
from edgeplane.shared.codec import encode
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.messages import (
    Ack,
    AgentStatus,
    Distrust,
    Event,
    OnlineStatus,
    Trust,
    replace,
)
from edgeplane.shared.rpc import CommandKeyInfo
from edgeplane.shared.topics import TopicRoot

__all__ = ["CommandKeys", "KeyRotator", "open_command_keys"]

KEY_OPS: Final = ("trust", "distrust")

log: Final = structlog.get_logger("controller")


class CommandKeys:
    """The key in use (``current``; the old one while a rotation rolls out) and the new
    one (``next``, while rolling). ``announce`` makes the controller's retained status, to
    publish when the keys change (set once the beacon exists)."""

    def __init__(
        self,
        path: Path | None,
        current: CommandSigner,
        rotations: KeyRotations,
        next_key: CommandSigner | None = None,
    ) -> None:
        self.path = path
        self.current = current
        self.next = next_key
        self.rotations = rotations
        self.announce: Callable[[], Outgoing] | None = None
        self.on_new_current: Callable[[CommandSigner], None] | None = None

    # --- signing ------------------------------------------------------------------------------
    def signer_for(self, env: str) -> CommandSigner:
        """The key a command to ``env`` is signed with now."""
        if self.next is not None and self.rotations.signs_with_new(env):
            return self.next
        return self.current

    @property
    def key_ids(self) -> list[str]:
        """Every key that signs commands now, the current one first."""
        return [self.current.key_id] + ([] if self.next is None else [self.next.key_id])

    @property
    def state(self) -> str:
        rotation = self.rotations.rotation
        return "" if rotation is None or rotation.state == "done" else rotation.state

    def info(self) -> CommandKeyInfo:
        rotation, rotations = self.rotations.rotation, self.rotations
        return CommandKeyInfo(
            key_id=self.current.key_id,
            next_key_id="" if self.next is None else self.next.key_id,
            state="" if rotation is None else rotation.state,
            started=None if rotation is None else rotation.started,
            finished=None if rotation is None else rotation.finished,
            pending=rotations.by_phase("trust"),
            trusted=rotations.by_phase("distrust"),
            done=rotations.by_phase("done"),
            lost=rotations.by_phase("lost"),
        )


class KeyRotator:
    """Carries out the rotation for the operator's requests and the agents' messages."""

    def __init__(
        self,
        keys: CommandKeys,
        root: TopicRoot,
        clock: Clock,
        operations: Operations,
        presence: Presence,
        command_ttl: float,
    ) -> None:
        self.keys = keys
        self._root = root
        self._clock = clock
        self._ops = operations
        self._presence = presence
        self._ttl = command_ttl
        for agent in keys.rotations:  # sent before a restart: their acks are still awaited
            if agent.cmd:
                operations.issued(agent.env, agent.cmd)

    # --- the operator -------------------------------------------------------------------------
    def request(self, action: str) -> tuple[CommandKeyInfo, Effects]:
        rotations, now = self.keys.rotations, self._clock.time()
        if action == "rotate":
            new = self._make_new_key()
            step = rotations.start(
                self.keys.current.key_id, new.key_id, new.public_key_b64, now,
                self._live(), self._online(),
            )  # fmt: skip
            log.info("command key rotation started", old=self.keys.current.key_id, new=new.key_id)
        elif action == "finish":
            step = rotations.finish(now, self._online())
        else:
            return self.keys.info(), Effects()
        effects = self._carry_out(step)
        return self.keys.info(), effects

    # --- what the agents say ------------------------------------------------------------------
    def on_status(self, status: AgentStatus) -> Effects | None:
        """An online message: the ``trust`` or ``distrust`` its agent still needs."""
        if not isinstance(status, OnlineStatus) or self.keys.rotations.rotation is None:
            return None
        record = self._ops.registry.get(status.env)
        live = record is not None and record.retired is None
        step = self.keys.rotations.on_online(status.env, status.bdseq, live)
        return self._carry_out(step) if step else None

    def on_event(self, event: Event) -> Effects | None:
        """An agent's ``ack`` of a ``trust`` or ``distrust`` command."""
        if not isinstance(event, Ack) or event.op not in KEY_OPS:
            return None
        if not event.ok:
            log.warning("an agent refused a command key change", env=event.env, op=event.op,
                        detail=event.detail)  # fmt: skip
        step = self.keys.rotations.on_ack(
            event.env, event.cmd, event.ok, self._clock.time(), self._live(), self._online()
        )
        return self._carry_out(step) if step else None

    # --- helpers ------------------------------------------------------------------------------
    def _make_new_key(self) -> CommandSigner:
        path = self.keys.path
        new = CommandSigner.generate() if path is None else make_next_key(path)
        self.keys.next = new
        return new

    def _carry_out(self, step: KeyStep) -> Effects:
        if step.drop_old:
            self._drop_old()
        writes = Writes(
            key_rotation=[] if step.rotation is None else [step.rotation],
            key_agents=list(step.agents),
            urgent=True,
        )
        effects = Effects(writes=writes)
        effects.outgoing.extend(self._command(c.env, c.command) for c in step.commands)
        if step.rotation is not None and self.keys.announce is not None:
            effects.outgoing.append(self.keys.announce())
        for agent in step.agents:
            if agent.phase == "lost":
                log.error(
                    "this agent never took the new command key and refuses every command now: "
                    "enrol it again (a new bootstrap file, or command_key in its settings)",
                    env=agent.env,
                    key_id=self.keys.current.key_id,
                )
        return effects

    def _drop_old(self) -> None:
        keys = self.keys
        if keys.next is None:
            return
        old = keys.current.key_id
        keys.current = keys.next if keys.path is None else promote_next_key(keys.path)
        keys.next = None
        if keys.on_new_current is not None:
            keys.on_new_current(keys.current)
        log.info("command key rotation finished: the old key is dropped", old=old,
                 current=keys.current.key_id)  # fmt: skip

    def _command(self, env: str, command: Trust | Distrust) -> Outgoing:
        """Like every command: it names its environment and expires; the publisher signs it."""
        unsigned = replace(command, env=env, expires=self._clock.time() + self._ttl)
        self._ops.issued(env, command.id)
        expiry = max(1, round(self._ttl))
        return Outgoing(self._root.cmd(env), encode(unsigned), False, expiry=expiry, command=True)

    def _live(self) -> set[str]:
        """Registered, not retired, and seen at least once: the agents that must take the
        new key before the old one is dropped."""
        live = set()
        for record in self._ops.registry:
            presence = self._presence.get(record.id)
            if record.retired is None and presence is not None and presence.status != "unknown":
                live.add(record.id)
        return live

    def _online(self) -> dict[str, int]:
        return {
            p.env: p.bdseq
            for p in self._presence.records()
            if p.status == "online" and p.bdseq is not None
        }


def open_command_keys(
    path: Path | None,
    rotation: KeyRotation | None,
    agents: list[AgentTrust],
    clock: Clock,
) -> tuple[CommandKeys, KeyStep]:
    """The keys as the files and the stored rotation left them, and what to store when the
    controller was killed after dropping the old key but before saying so."""
    rotations = KeyRotations((new_id("c") for _ in itertools.count()), rotation, agents)
    rotations.resume()
    current = load_command_key(path)
    keys = CommandKeys(path, current, rotations)
    if rotation is None or not rotations.rolling:
        return keys, KeyStep()
    if current.key_id == rotation.new:
        return keys, rotations.dropped_old(clock.time())
    if current.key_id != rotation.old or path is None:
        raise CommandKeyError(_mismatch(path, current, rotation))
    next_key = load_next_key(path)
    if next_key is None or next_key.key_id != rotation.new:
        raise CommandKeyError(_mismatch(next_key_file(path), next_key, rotation))
    keys.next = next_key
    return keys, KeyStep()


def _mismatch(path: Path | None, found: CommandSigner | None, rotation: KeyRotation) -> str:
    return (
        f"the command key rotation from {rotation.old} to {rotation.new} is under way, but "
        f"{path or 'the key file'} holds {found.key_id if found else 'no key'}: put the "
        "key files back as they were"
    )
