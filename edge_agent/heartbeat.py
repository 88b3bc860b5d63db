"""Building the agent's status messages: pure, over an injected clock, metrics source and
inventory source.

The first online message of each connection carries the model inventory (``models``), the
platform facts (``platform``) and the box key (``box_key``); later heartbeats carry
``models`` only when the inventory changed since it was last sent, and never ``platform``
or ``box_key``: plain heartbeats stay small. ``cred_gen`` is in every one (when not 0), and
``cred_proof`` too (when the login it names came with a proof).
The inventory is looked at once per heartbeat (a directory listing)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Final

from edgeplane.edge_agent.metrics import Sample
from edgeplane.shared import __version__
from edgeplane.shared.clock import Clock
from edgeplane.shared.messages import OfflineReason, OfflineStatus, OnlineStatus, Platform

__all__ = ["EXPIRY_FACTOR", "HeartbeatBuilder", "Inventory", "message_expiry", "new_boot_id"]

Inventory = dict[str, list[str]]  # model name -> versions held

# A retained online message outlives its sender by at most this many intervals, so a dead
# agent whose will was lost does not stay online forever for late subscribers.
EXPIRY_FACTOR: Final = 3


def new_boot_id() -> str:
    """Six hex digits, new for every start of the agent process.

    It only has to differ from the previous start's (one chance in 16.7 million that it
    does not), and every byte of the heartbeat counts."""
    return os.urandom(3).hex()


def message_expiry(interval: float) -> int:
    """The MQTT message expiry (whole seconds) of an online message sent every ``interval``."""
    return max(1, math.ceil(EXPIRY_FACTOR * interval))


class HeartbeatBuilder:
    """Online and offline messages of one agent process.

    ``seq`` counts the online messages of one connection: :meth:`new_connection` starts it
    again with that connection's ``bdseq``. ``inventory`` (None: no models directory)
    and ``platform`` are sent as the module docstring says.
    """

    def __init__(
        self,
        env: str,
        interval: float,
        clock: Clock,
        metrics: Callable[[], Sample],
        boot: str | None = None,
        *,
        inventory: Callable[[], Inventory] | None = None,
        platform: Platform | None = None,
    ) -> None:
        self.env = env
        self.interval = interval
        self.boot = boot or new_boot_id()
        self._clock = clock
        self._metrics = metrics
        self._inventory = inventory
        self._platform = platform
        self._sent_inventory: Inventory | None = None  # as last sent on this connection
        self._started = clock.monotonic()
        self._bdseq = 0
        self._seq = 0
        self.refused = 0  # CONNECTs refused since the last connection: told in its first
        self.refused_reason = ""  # online message, then forgotten
        self.box_key = ""  # the agent's public box key, sent in a connection's first online
        self.cred_gen = 0  # the credential generation the connection logged in with
        self.cred_proof = ""  # the proof of possession that came with that credential
        self.taken_over_by = ""  # told once, in the next online message

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        # A whole number of seconds goes out as "10", not "10.0": every byte counts.
        self._interval: float = int(seconds) if float(seconds).is_integer() else seconds

    @property
    def bdseq(self) -> int:
        return self._bdseq

    @property
    def seq(self) -> int:
        """The sequence number of the next online message."""
        return self._seq

    def new_connection(self, bdseq: int) -> None:
        self._bdseq = bdseq
        self._seq = 0
        self._sent_inventory = None

    def online(self) -> OnlineStatus:
        sample = self._metrics()
        first = self._seq == 0
        models = self._changed_inventory()
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
            models=models,
            platform=self._platform if first else None,
            box_key=self.box_key if first else "",
            cred_gen=self.cred_gen,
            cred_proof=self.cred_proof,
            taken_over_by=self.taken_over_by,
            refused=self.refused if first else 0,
            refused_reason=self.refused_reason[:256] if first else "",
        )
        self._seq += 1
        self.taken_over_by = ""
        if first:
            self.refused, self.refused_reason = 0, ""
        return message

    def _changed_inventory(self) -> Inventory | None:
        """The inventory if it is not what this connection last sent, else None."""
        if self._inventory is None:
            return None
        current = self._inventory()
        if current == self._sent_inventory:
            return None
        self._sent_inventory = current
        return current

    def offline(self, reason: OfflineReason) -> OfflineStatus:
        return OfflineStatus(env=self.env, bdseq=self._bdseq, reason=reason)

    def will(self) -> OfflineStatus:
        return self.offline("connection-lost")
