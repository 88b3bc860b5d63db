"""Every received message, decoded with the shared codecs and judged: the receive path.

A status goes through the presence core (and through operations when it brought an
environment online or reports an inventory); an event through operations (each logged
once, by env, src and seq); a view and the controller's own status into the retained
sync, and a view someone else wrote wrong to the view guard. Bad input is counted and
dropped, never raised: the receive loop must not stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

import structlog

from edgeplane.controller.core.badinput import BadInput
from edgeplane.controller.core.operations import CONTROLLER_SRC, Effects, Operations
from edgeplane.controller.core.presence import Judgement, Presence
from edgeplane.controller.core.views import ViewGuard, same_judgement
from edgeplane.controller.daemon.command_keys import KeyRotator
from edgeplane.controller.daemon.sync import RetainedSync
from edgeplane.shared.codec import EVENT, STATUS, check_env
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import AgentStatus, Event, OnlineStatus
from edgeplane.shared.topics import TopicKind, TopicRoot

__all__ = ["Intake", "Taken"]

log: Final = structlog.get_logger("controller")
KEY_CONFLICT: Final = "an online reported a box key other than the pinned one"


class Taken(NamedTuple):
    """What one received message changed: presence, and/or rows and messages."""

    judgement: Judgement | None
    effects: Effects | None


class Intake:
    def __init__(
        self,
        root: TopicRoot,
        core: Presence,
        operations: Operations,
        sync: RetainedSync,
        bad: BadInput,
        views: ViewGuard,
        *,
        max_payload: int,
        keys: KeyRotator | None = None,
        on_online: Callable[[OnlineStatus], list[tuple[str, str]]] | None = None,
        on_heartbeat: Callable[[OnlineStatus], None] | None = None,
        on_answer: Callable[[Event], None] | None = None,
    ) -> None:
        self._root = root
        self._keys = keys
        # Credential rotation's feed (never waits); says what in an online is not taken.
        self._on_online = on_online
        # env diagnose's feeds (never wait): every online's figures, every event logged.
        self._on_heartbeat = on_heartbeat
        self._on_answer = on_answer
        self._core = core
        self._ops = operations
        self._sync = sync
        self._bad = bad
        self._views = views
        self._limit = max_payload

    def judge(self, topic: str, payload: bytes, retained: bool) -> Taken | None:
        """Decode and judge one message; None when it changes nothing. Never raises."""
        try:
            parsed = self._root.parse(topic)
            if parsed.kind is TopicKind.STATUS:
                return self._take_status(parsed.env or "", payload, retained)
            if parsed.kind is TopicKind.EVENTS:
                return self._take_event(topic, parsed.env or "", payload)
            if parsed.kind is TopicKind.VIEW:
                self._take_view(parsed.env or "", payload)
            elif parsed.kind is TopicKind.CONTROLLER_STATUS:
                self._sync.note_controller_status(payload)
        except InvalidTopic as exc:
            self.drop("bad-topic", topic, str(exc))
        except DecodeError as exc:
            self.drop(exc.reason, topic, exc.detail)
        return None

    def drop(self, reason: str, topic: str, detail: str) -> None:
        """Count a message that is bad input, and log it (not every one of a flood)."""
        decision = self._bad.drop(reason)
        if decision.log:
            log.warning(
                "bad input dropped",
                reason=reason,
                topic=topic[:200],
                detail=detail[:300],
                suppressed_before=decision.suppressed,
            )

    def _take_status(self, env: str, payload: bytes, retained: bool) -> Taken:
        status = STATUS.decode(payload, limit=self._limit)
        check_env(status.env, env)
        judgement = self._core.on_status(status, retained=retained)
        if self._on_heartbeat is not None and isinstance(status, OnlineStatus):
            self._on_heartbeat(status)
        if judgement.stale:
            log.debug("stale offline ignored", env=status.env, bdseq=status.bdseq)
        if self._on_online is not None and isinstance(status, OnlineStatus):
            # The online counts (the broker let it in); what the rotation refuses does not.
            for reason, detail in self._on_online(status):
                self.drop(reason, self._root.status(env), detail)
                if reason == "box-key-mismatch":
                    judgement.extend(self._core.conflict(env, KEY_CONFLICT))
        came_online = any(t.to_status == "online" for t in judgement.transitions)
        keys = None if self._keys is None else self._keys.on_status(status)
        if came_online or _reports_inventory(status):
            effects = self._ops.after_status(status, came_online)
            if keys is not None:
                effects.extend(keys)
            return Taken(judgement, effects)
        return Taken(judgement, keys)  # a plain heartbeat (keys None): the hot path

    def _take_view(self, env: str, payload: bytes) -> None:
        """A view arriving after the sync was written by someone else (we subscribe
        without our own): wrong ones are noted, to be put right."""
        syncing = self._sync.syncing
        try:
            held = self._sync.note_view(env, payload)
        except DecodeError:
            if not syncing:
                self._views.wrong(env)
            raise
        if not syncing and not same_judgement(held, self._ops.expected_view(env)):
            self._views.wrong(env)

    def _take_event(self, topic: str, env: str, payload: bytes) -> Taken | None:
        event = EVENT.decode(payload, limit=self._limit)
        check_env(event.env, env)
        if event.src == CONTROLLER_SRC:
            return None  # our own, stored before it was published
        stranger = self._ops.stranger(event)
        if stranger:
            self.drop(
                "unknown-deployment",
                topic,
                f"{type(event).__struct_config__.tag} event: {stranger}",
            )
            return None
        effects = self._ops.on_event(event)
        if effects is None:
            log.debug("duplicate event", env=event.env, src=event.src, seq=event.seq)
            return None
        keys = None if self._keys is None else self._keys.on_event(event)
        if keys is not None:
            effects.extend(keys)
        if self._on_answer is not None:
            self._on_answer(event)
        return Taken(None, effects)


def _reports_inventory(status: AgentStatus) -> bool:
    return isinstance(status, OnlineStatus) and (
        status.models is not None or status.platform is not None
    )
