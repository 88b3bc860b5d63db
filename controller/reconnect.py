"""The controller's one reconnect loop, used wherever a connection is kept: the daemon's
presence and events connections, ``edgeplane events --follow`` and ``deploy --wait``.

Capped, jittered exponential pauses (:class:`edgeplane.shared.backoff.Backoff`) keep a fleet
of commands that lost their broker at once from coming back in lockstep::

    reconnect = Reconnect(stop=stop, on_retry=lambda retry: log.warning(str(retry.error)))
    await reconnect.run(lambda: Connection(url, client_id), session)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

from edgeplane.shared.backoff import Backoff
from edgeplane.shared.errors import BrokerUnavailable

__all__ = ["Reconnect", "Retry"]

T = TypeVar("T")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Retry:
    """One failed attempt, as :class:`Reconnect` reports it before it waits: the error, the
    seconds until the next attempt, and whether a connection had been made (``lost``) or
    could not be made."""

    error: BaseException
    delay: float
    lost: bool


class Reconnect:
    """The one reconnect loop: :meth:`run` enters ``connect()`` and runs ``session`` on it
    until the session returns (its result) or ``stop`` is set (None). When connecting fails
    or the connection is lost (an error of ``retry_on``, also inside an exception group),
    it waits a capped, jittered delay (:class:`shared.backoff.Backoff`, cut short by
    ``stop``) and connects again; the delays start over once a connection is made.

    It gives up, raising the last error, when the next attempt would start later than
    ``deadline`` (``time.monotonic()``) or more than ``patience`` seconds after the
    connection was lost; and with ``first_must_succeed`` on any error before the session
    calls :meth:`settled` (an operator command whose first connection fails says so at
    once). ``on_retry`` hears of each failure before the wait. One loop per instance.
    """

    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        stop: asyncio.Event | None = None,
        retry_on: tuple[type[Exception], ...] = (BrokerUnavailable,),
        patience: float | None = None,
        deadline: float | None = None,
        first_must_succeed: bool = False,
        on_retry: Callable[[Retry], None] | None = None,
    ) -> None:
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._stop = stop
        self._retry_on = retry_on
        self._patience = patience
        self.deadline = deadline  # may be set (or moved) while the loop runs
        self._must_succeed = first_must_succeed
        self._on_retry = on_retry
        self._failing_since: float | None = None

    def settled(self) -> None:
        """The session's connection has done what a first one must: later errors are
        retried (with ``first_must_succeed``)."""
        self._must_succeed = False

    async def run(
        self,
        connect: Callable[[], AbstractAsyncContextManager[C]],
        session: Callable[[C], Awaitable[T]],
    ) -> T | None:
        while not self._stopped():
            ended: list[T] = []
            connected = False
            try:
                async with connect() as connection:
                    connected = True
                    self._backoff.reset()
                    self._failing_since = None
                    ended.append(await session(connection))
            except* self._retry_on as group:
                failure = _first_leaf(group)
            else:
                return ended[0]
            if ended:  # the session ended; only leaving the connection failed
                return ended[0]
            await self._pause(failure, lost=connected)
        return None

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _pause(self, failure: BaseException, *, lost: bool) -> None:
        """Wait before the next attempt, or raise ``failure`` when it is time to give up."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        delay = self._backoff.next_delay()
        if (
            self._must_succeed
            or (self.deadline is not None and now + delay >= self.deadline)
            or (self._patience is not None and now + delay >= self._failing_since + self._patience)
        ):
            raise failure
        if self._on_retry is not None:
            self._on_retry(Retry(failure, delay, lost))
        if self._stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    inner = group.exceptions[0]
    return _first_leaf(inner) if isinstance(inner, BaseExceptionGroup) else inner
