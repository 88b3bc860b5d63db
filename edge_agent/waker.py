"""A wake-up socket: signals (and :meth:`Waker.wake`) end the agent's ``select`` at once."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgeplane.shared import signals

__all__ = ["Waker", "stop_signals"]


class Waker:
    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already
            self._writer.send(b"\0")

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        """While inside, every signal delivered to the process wakes the reader."""
        previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)


@contextmanager
def stop_signals(on_stop: Callable[[], None]) -> Iterator[None]:
    """Call ``on_stop`` on SIGTERM, SIGINT and SIGHUP (unless ignored, see
    :mod:`edgeplane.shared.signals`); restore the previous handlers on exit."""
    signums = signals.stop_signals()
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, lambda _signum, _frame: on_stop())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
