"""Where the agent's events go: the seam between execution and the outbox.

Execution code (preflight, steps, services) never builds a whole event: it names the event
type and its own fields, and the sink adds ``env``, ``seq``, ``src`` and ``ts``, stores the
event durably (the outbox) and has it published. ``emit`` is safe to call from any thread.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from edgeplane.shared.messages import Event

__all__ = ["EventSink"]

E = TypeVar("E", bound=Event)


class EventSink(Protocol):
    def emit(self, kind: type[E], /, **fields: Any) -> E:
        """Build a ``kind`` event from ``fields``, keep it until the broker has it, and
        return it (with its ``seq``)."""
        ...
