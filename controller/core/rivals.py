"""One active controller per topic root: what a running controller makes of each message on
``R/controller/status`` (pure).

Before it starts, a controller makes sure no other one is alive there (the daemon's
:mod:`~edgeplane.controller.daemon.rivals`). Two started at the same moment can both pass
that check; each then sees the other's birth, and :func:`stays` picks the same one in
both: the one that started first (the smaller ``since``; at equal ``since``, the smaller
``boot``). The other gives way. Anything else that overwrites the running controller's
status (a stray will or goodbye, a cleared topic, garbage) is put right by publishing its
own again.
"""

from __future__ import annotations

import enum
import math

from edgeplane.shared.messages import ControllerStatus

__all__ = ["RivalWatch", "Verdict", "stays"]


class Verdict(enum.Enum):
    NOTHING = "nothing"  # our own birth, or the stale birth of a dead one, settled at start
    REASSERT = "reassert"  # something else overwrote our status: publish ours again
    GIVE_WAY = "give-way"  # another controller that stays is alive: stop


def stays(theirs: ControllerStatus, ours: ControllerStatus) -> bool:
    """Whether ``theirs`` is the one of the two that stays (both sides decide alike)."""
    return _rank(theirs) < _rank(ours)


def _rank(status: ControllerStatus) -> tuple[float, str]:
    return (math.inf if status.since is None else status.since, status.boot)


class RivalWatch:
    """``ours``: our own online status (boot and since are what count); ``settled``: the
    payload of a retained birth found dead before we started (it may be delivered again
    as retained at a subscription, and means nothing then)."""

    def __init__(self, ours: ControllerStatus, settled: bytes | None = None) -> None:
        self._ours = ours
        self._settled = settled

    def judge(self, status: ControllerStatus | None, payload: bytes, retained: bool) -> Verdict:
        """``status``: the message decoded, None for an empty (cleared) or bad one."""
        if status is None:
            return Verdict.REASSERT
        if retained and payload == self._settled:
            return Verdict.NOTHING
        if status.boot == self._ours.boot:
            # Offline with our own boot: the will of an earlier connection of ours, fired
            # after we were back.
            return Verdict.NOTHING if status.status == "online" else Verdict.REASSERT
        if status.status == "online" and stays(status, self._ours):
            return Verdict.GIVE_WAY
        return Verdict.REASSERT
