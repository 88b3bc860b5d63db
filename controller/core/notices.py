"""What the webhook is sent and when it is tried again (pure).

A *notice* is the JSON body of one webhook POST (:mod:`edgeplane.shared.notices`: a frozen
Struct tagged by its ``type``), so one queue and one worker carry every kind.
:class:`NoticeQueue` is the bounded queue between the receive path and the worker:
putting never waits, a full queue drops the oldest notice and counts it.
:class:`RetryPolicy` says, after each try, whether the notice is sent, tried again (and
after how long: capped, jittered backoff) or given up.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar
from urllib.parse import urlsplit

from edgeplane.shared.backoff import Backoff

__all__ = [
    "NoticeQueue",
    "RetryPolicy",
    "TryVerdict",
    "check_notify_url",
    "public_url",
    "retryable",
]

TryVerdict = Literal["sent", "retry", "give-up"]
T = TypeVar("T")


class NoticeQueue(Generic[T]):
    """A bounded FIFO that never refuses: a full one drops its oldest item."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("a notice queue needs room for at least one item")
        self._items: collections.deque[T] = collections.deque()
        self._size = size
        self.dropped = 0

    def put(self, item: T) -> T | None:
        """Queue ``item``; returns the oldest item dropped to make room for it, if any."""
        dropped = self._items.popleft() if len(self._items) >= self._size else None
        if dropped is not None:
            self.dropped += 1
        self._items.append(item)
        return dropped

    def take(self) -> T | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_tries`` tries at most, none started later than ``max_age`` seconds after the
    notice was queued; delays double from ``initial`` up to ``cap``, jittered."""

    max_tries: int = 6
    max_age: float = 300.0
    initial: float = 0.5
    cap: float = 30.0

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self.initial, self.cap, rng=rng)

    def verdict(self, status: int | None, tries: int, age: float, delay: float) -> TryVerdict:
        """After try number ``tries`` answered ``status`` (None: no answer at all, a
        connection error or time-out), ``age`` seconds after the notice was queued, with
        the next try ``delay`` seconds away."""
        if status is not None and 200 <= status < 300:
            return "sent"
        if not retryable(status) or tries >= self.max_tries or age + delay > self.max_age:
            return "give-up"
        return "retry"


def retryable(status: int | None) -> bool:
    """No answer, a server error and "too many requests" may pass; any other answer (a
    4xx, a redirect) would be the same next time."""
    return status is None or status >= 500 or status == 429


def check_notify_url(value: str) -> str:
    """``value`` if it is an http:// or https:// URL with a host; ``ValueError`` naming what
    is wrong otherwise (the URL shown without its password)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ValueError(
            f"expected an http:// or https:// URL, got {public_url(value)!r}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {public_url(value)!r}")
    if not parts.hostname:
        raise ValueError(f"expected a host name in the URL, got {public_url(value)!r}")
    return value


def public_url(url: str) -> str:
    """``url`` without its user name and password (what a log line may show)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(not a URL)"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return parts._replace(netloc=netloc, query="", fragment="").geturl()
