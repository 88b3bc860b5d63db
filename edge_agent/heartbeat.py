"""Building the agent's status messages: pure, over an injected clock and metrics source."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Final

from edge_agent.metrics import Sample
from shared import __version__
from shared.clock import Clock
from shared.messages import OfflineReason, OfflineStatus, OnlineStatus

__all__ = ["EXPIRY_FACTOR", "HeartbeatBuilder", "message_expiry", "new_boot_id"]

# A retained online message outlives its sender by at most this many intervals, so a dead
# agent whose will was lost does not stay online forever for late subscribers.
EXPIRY_FACTOR: Final = 3


def new_boot_id() -> str:
    """Six hex digits, new for every start of the agent process.

    It only has to differ from the previous start's (one chance in 16.7 million that it
    does not), and every byte of the heartbeat counts."""
    return secrets.token_hex(3)


def message_expiry(interval: float) -> int:
    """The MQTT message expiry (whole seconds) of an online message sent every ``interval``."""
    return max(1, math.ceil(EXPIRY_FACTOR * interval))


class HeartbeatBuilder:
    """Online and offline messages of one agent process.

    ``seq`` counts the online messages of one connection: :meth:`new_connection` starts it
    again with that connection's ``bdseq``.
    """

    def __init__(
        self,
        env: str,
        interval: float,
        clock: Clock,
        metrics: Callable[[], Sample],
        boot: str | None = None,
    ) -> None:
        self.env = env
        # A whole number of seconds goes out as "10", not "10.0": every byte counts.
        self.interval: float = int(interval) if float(interval).is_integer() else interval
        self.boot = boot or new_boot_id()
        self._clock = clock
        self._metrics = metrics
        self._started = clock.monotonic()
        self._bdseq = 0
        self._seq = 0

    @property
    def bdseq(self) -> int:
        return self._bdseq

    def new_connection(self, bdseq: int) -> None:
        self._bdseq = bdseq
        self._seq = 0

    def online(self) -> OnlineStatus:
        sample = self._metrics()
        message = OnlineStatus(
            env=self.env,
            bdseq=self._bdseq,
            seq=self._seq,
            interval=self.interval,
            boot=self.boot,
            cpu=sample.cpu,
            mem=sample.mem,
            disk=sample.disk,
            ver=__version__,
            up=int(self._clock.monotonic() - self._started),
        )
        self._seq += 1
        return message

    def offline(self, reason: OfflineReason) -> OfflineStatus:
        return OfflineStatus(env=self.env, bdseq=self._bdseq, reason=reason)

    def will(self) -> OfflineStatus:
        return self.offline("connection-lost")
