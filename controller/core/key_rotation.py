"""Rotating the controller's command key without lockout: the decisions (pure, no I/O; the
shell in :mod:`edgeplane.controller.daemon.command_keys` keeps the key files and carries
them out).

A rotation from the old key O to the new key N goes through these states, each stored
before its commands go out, so a controller killed at any point takes up where it was:

``rolling``   N exists beside O. Every agent (of the environments the caller calls *live*:
              registered, not retired, seen at least once) gets a ``trust`` command naming
              N, signed with O: at once when it is online, on its next connection when it
              is not, and again on each new connection until it acknowledges. Commands to
              an agent that acknowledged are signed with N, to the others still with O.
``finished``  every live agent acknowledged (or an operator forced it): O is dropped and
              everything is signed with N. Each agent that trusts N gets a ``distrust``
              command for O; an agent that never acknowledged N is *lost*: it refuses
              everything now and must be enrolled again.
``done``      every agent that trusts N has dropped O (or is lost).

Each agent's part is an :class:`AgentTrust`: phase ``trust`` (waiting for its ack of N),
``distrust`` (it trusts N; waiting for the rotation to finish, then for its ack of the
distrust), ``done`` or ``lost``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import Distrust, Trust

__all__ = [
    "AGENT_PHASES",
    "ROTATION_STATES",
    "AgentPhase",
    "AgentTrust",
    "KeyCommand",
    "KeyRotation",
    "KeyRotations",
    "KeyStep",
    "RotationState",
]

RotationState = Literal["rolling", "finished", "done"]
AgentPhase = Literal["trust", "distrust", "done", "lost"]
ROTATION_STATES: Final = ("rolling", "finished", "done")
AGENT_PHASES: Final = ("trust", "distrust", "done", "lost")


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """The latest rotation from key ``old`` to ``new`` (key ids); ``new_key``: the new
    public key, base64 (what the ``trust`` command carries)."""

    old: str
    new: str
    new_key: str
    state: RotationState
    started: float
    finished: float | None = None


@dataclass(frozen=True, slots=True)
class AgentTrust:
    """One environment's part in the rotation. ``cmd``: the id of the command last sent to
    it (an ack of that one moves it on); ``sent_bdseq``: the connection it went out on."""

    env: str
    phase: AgentPhase = "trust"
    cmd: str = ""
    sent_bdseq: int | None = None
    acked: float | None = None


@dataclass(frozen=True, slots=True)
class KeyCommand:
    """Publish ``command`` to ``env``'s agent (signed as :meth:`KeyRotations.signs_with_new`
    says at the moment it is queued)."""

    env: str
    command: Trust | Distrust


@dataclass(slots=True)
class KeyStep:
    """What one decision changed: the rotation and the agents' rows (to store, before the
    commands go out), and ``drop_old``: the shell drops the old key now."""

    rotation: KeyRotation | None = None
    agents: list[AgentTrust] = field(default_factory=list)
    commands: list[KeyCommand] = field(default_factory=list)
    drop_old: bool = False

    def __bool__(self) -> bool:
        return bool(self.rotation or self.agents or self.commands)


class KeyRotations:
    """The latest rotation and every agent's part in it. ``new_id`` names each command."""

    def __init__(
        self,
        new_id: Iterator[str],
        rotation: KeyRotation | None = None,
        agents: Iterable[AgentTrust] = (),
    ) -> None:
        self._ids = new_id
        self.rotation = rotation
        self._agents: dict[str, AgentTrust] = {a.env: a for a in agents}

    def __iter__(self) -> Iterator[AgentTrust]:
        return iter(sorted(self._agents.values(), key=lambda a: a.env))

    def get(self, env: str) -> AgentTrust | None:
        return self._agents.get(env)

    @property
    def rolling(self) -> bool:
        return self.rotation is not None and self.rotation.state == "rolling"

    def signs_with_new(self, env: str) -> bool:
        """While rolling: has ``env``'s agent acknowledged the new key?"""
        agent = self._agents.get(env)
        return agent is not None and agent.phase in ("distrust", "done")

    def by_phase(self, phase: AgentPhase) -> list[str]:
        return [a.env for a in self if a.phase == phase]

    # --- the operator -------------------------------------------------------------------------
    def start(
        self,
        old: str,
        new: str,
        new_key: str,
        now: float,
        live: Collection[str],
        online: Mapping[str, int],
    ) -> KeyStep:
        """Roll out key ``new`` (``new_key``) beside ``old`` to every ``live`` environment;
        ``online``: env -> bdseq of the connection online now."""
        if self.rolling:
            raise RequestRefused(
                "invalid",
                f"a rotation of the command key (to {self.rotation.new if self.rotation else ''}) "
                "is rolling out already: wait for it, or finish it (--finish)",
            )
        self.rotation = KeyRotation(old, new, new_key, "rolling", now)
        self._agents = {env: AgentTrust(env) for env in sorted(live)}
        step = KeyStep(rotation=self.rotation)
        for env in sorted(live):
            if env in online:
                self._send(step, env, online[env])
        if not live:
            self._finish(step, now)
        return step

    def finish(self, now: float, online: Mapping[str, int]) -> KeyStep:
        """Drop the old key now: agents that have not acknowledged the new one are lost."""
        if not self.rolling:
            raise RequestRefused("invalid", "no rotation of the command key is rolling out")
        step = KeyStep()
        self._finish(step, now)
        for env in self.by_phase("distrust"):
            if env in online:
                self._send(step, env, online[env])
        return step

    # --- what the agents say -------------------------------------------------------------------
    def on_online(self, env: str, bdseq: int, live: bool) -> KeyStep:
        """``env``'s agent online on connection ``bdseq``: the command it still needs, sent
        once per connection. ``live``: it is registered and not retired."""
        step = KeyStep()
        if self.rotation is None or self.rotation.state == "done" or not live:
            return step
        agent = self._agents.get(env)
        if agent is None:
            if not self.rolling:
                return step  # a newcomer after the finish is enrolled with the new key
            agent = self._put(step, AgentTrust(env))  # seen for the first time
        if self._needs_command(agent) and agent.sent_bdseq != bdseq:
            self._send(step, env, bdseq)
        return step

    def on_ack(
        self,
        env: str,
        cmd: str,
        ok: bool,
        now: float,
        live: Collection[str],
        online: Mapping[str, int],
    ) -> KeyStep:
        """An ``ack`` of a ``trust`` or ``distrust`` command (``cmd``) from ``env``."""
        step = KeyStep()
        agent = self._agents.get(env)
        if agent is None or agent.cmd != cmd or not ok or self.rotation is None:
            return step
        if agent.phase in ("trust", "lost"):  # lost: it took the new key after the finish
            self._put(step, AgentTrust(env, "distrust", acked=now))
            if self.rolling and all(self.signs_with_new(e) for e in live):
                self._finish(step, now)
            elif not self.rolling and env in online:
                self._send(step, env, online[env])
        elif agent.phase == "distrust" and not self.rolling:
            self._put(step, AgentTrust(env, "done", acked=now))
            if not self.by_phase("distrust"):
                self.rotation = dataclasses.replace(self.rotation, state="done")
                step.rotation = self.rotation
        return step

    # --- restart ------------------------------------------------------------------------------
    def resume(self) -> None:
        """After a restart: every command still needed goes out again on the next online."""
        for agent in list(self):
            if agent.sent_bdseq is not None:
                self._agents[agent.env] = dataclasses.replace(agent, sent_bdseq=None)

    def dropped_old(self, now: float) -> KeyStep:
        """The shell found the old key gone (a controller killed right after dropping it):
        the rotation is finished."""
        step = KeyStep()
        if self.rolling:
            self._finish(step, now)
            step.drop_old = False
        return step

    # --- helpers ------------------------------------------------------------------------------
    def _needs_command(self, agent: AgentTrust) -> bool:
        if agent.phase == "trust":
            return self.rolling
        return agent.phase == "distrust" and not self.rolling

    def _finish(self, step: KeyStep, now: float) -> None:
        assert self.rotation is not None
        self.rotation = dataclasses.replace(self.rotation, state="finished", finished=now)
        step.rotation = self.rotation
        step.drop_old = True
        for agent in [a for a in self if a.phase == "trust"]:
            self._put(step, dataclasses.replace(agent, phase="lost", sent_bdseq=None))
        if not self.by_phase("distrust"):
            self.rotation = dataclasses.replace(self.rotation, state="done")
            step.rotation = self.rotation

    def _send(self, step: KeyStep, env: str, bdseq: int) -> None:
        assert self.rotation is not None
        agent = self._agents.get(env) or AgentTrust(env)
        command: Trust | Distrust
        if agent.phase == "trust":
            command = Trust(id=next(self._ids), key=self.rotation.new_key)
        else:
            command = Distrust(id=next(self._ids), key=self.rotation.old)
        self._put(step, dataclasses.replace(agent, cmd=command.id, sent_bdseq=bdseq))
        step.commands.append(KeyCommand(env, command))

    def _put(self, step: KeyStep, agent: AgentTrust) -> AgentTrust:
        self._agents[agent.env] = agent
        step.agents = [a for a in step.agents if a.env != agent.env] + [agent]
        return agent
