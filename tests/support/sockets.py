"""What a process listens on, seen from outside it (psutil): for the tests that check a
broker or a daemon exposes nothing but what it should."""

from __future__ import annotations

from typing import Final

import psutil

__all__ = ["LOOPBACK", "listening"]

LOOPBACK: Final = frozenset({"127.0.0.1", "::1"})


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket of process ``pid`` in the LISTEN state."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }
