"""An in-memory :class:`~edge_agent.events.EventSink` for tests of the execution code.

Every event is encoded and decoded again with the wire codec, so an event the controller
could not read (a field over its length limit, a bad value) fails the test at once. Tests
wait for the event they expect with a timeout, never with a sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from edgeplane.shared.codec import EVENT, encode
from edgeplane.shared.messages import Event

__all__ = ["MemorySink"]

E = TypeVar("E", bound=Event)


class MemorySink:
    def __init__(self, env: str = "dev-lab-exec") -> None:
        self.env = env
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def emit(self, kind: type[E], /, **fields: Any) -> E:
        with self._changed:
            event = kind(
                env=self.env, seq=len(self.events) + 1, src="test", ts=time.time(), **fields
            )
            decoded = EVENT.decode(encode(event))  # raises on anything the wire would refuse
            assert decoded == event, (decoded, event)
            self.events.append(event)
            self._changed.notify_all()
        return event

    def of(self, kind: type[E], dep: str | None = None) -> list[E]:
        with self._changed:
            return [e for e in self.events if isinstance(e, kind) and dep in (None, e.dep)]

    def types(self, dep: str | None = None) -> list[str]:
        """The ``type`` tags of the events (of one deployment), in order."""
        with self._changed:
            return [_tag(e) for e in self.events if dep in (None, e.dep)]

    def wait_for(
        self,
        kind: type[E],
        *,
        dep: str | None = None,
        where: Callable[[E], bool] = lambda _: True,
        timeout: float = 20.0,
        after: int = 0,
    ) -> E:
        """The first ``kind`` event (of ``dep``, matching ``where``) at index >= ``after``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if isinstance(event, kind) and dep in (None, event.dep) and where(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n  ".join(repr(e) for e in self.events[-15:])
                    raise AssertionError(
                        f"no {kind.__name__} event for {dep or 'any deployment'} within"
                        f" {timeout} s; last seen:\n  {seen}"
                    )
                self._changed.wait(left)


def _tag(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    return str(tag)
