"""The webhook (``--notify-url``): every notice POSTed as JSON, off the receive path.

:meth:`Notifier.notify` never waits and never raises: it encodes the notice and puts it on
a bounded queue (:class:`~edgeplane.controller.core.notices.NoticeQueue`; a full one drops
the oldest, counted and logged). One worker task POSTs each in turn over asyncio streams
(no thread, nothing blocking the loop, every try cancellable and bounded by ``timeout``),
retrying connection errors, 5xx and 429 with capped, jittered backoff
(:class:`~edgeplane.controller.core.notices.RetryPolicy`) and giving up, counted and
logged, after a bounded number of tries or age. A user name and password in the URL are
sent as HTTP basic authentication and never logged: log lines name the URL without them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import SplitResult, unquote, urlsplit

import msgspec
import structlog

from edgeplane.controller.core.notices import (
    NoticeQueue,
    RetryPolicy,
    check_notify_url,
    public_url,
)
from edgeplane.controller.tasks import cancel_and_wait
from edgeplane.shared import __version__

__all__ = [
    "DRAIN_TIMEOUT",
    "QUEUE_SIZE",
    "USER_AGENT",
    "Notifier",
    "NotifyCounts",
]

QUEUE_SIZE: Final = 1000
USER_AGENT: Final = f"edgeplane-controller/{__version__}"
ANSWER_LIMIT: Final = 8192  # bytes of a status line we read at most
DRAIN_TIMEOUT: Final = 2.0  # seconds a clean stop gives what is queued

log: Final = structlog.get_logger("controller")
_json: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class NotifyCounts:
    sent: int = 0
    failed: int = 0  # given up: out of tries or too old, or refused by the server
    dropped: int = 0  # pushed out of a full queue before they were tried


@dataclass(frozen=True, slots=True)
class _Queued:
    body: bytes
    what: str  # the notice's type, for the log
    at: float  # the loop's clock


class Notifier:
    """``async with Notifier(url) as notifier: notifier.notify(body)``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        queue_size: int = QUEUE_SIZE,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._target = _Target.of(check_notify_url(url))
        self._timeout = timeout
        self._policy = policy or RetryPolicy()
        self._queue: NoticeQueue[_Queued] = NoticeQueue(queue_size)
        self._more = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued, nothing being tried
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._sent = 0
        self._failed = 0

    async def settled(self) -> None:
        """Wait until nothing is queued or being tried (each notice sent or given up)."""
        await self._idle.wait()

    @property
    def counts(self) -> NotifyCounts:
        return NotifyCounts(self._sent, self._failed, self._queue.dropped)

    async def __aenter__(self) -> Self:
        self._worker = asyncio.create_task(self._work(), name="notifier")
        log.info("webhook notifications on", url=self._target.shown)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._worker is not None:
            # A clean stop: what is queued gets a short while to go out, no more.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await self.settled()
            await cancel_and_wait(self._worker)
        counts = self.counts
        log.info(
            "webhook notifications stopped",
            url=self._target.shown,
            sent=counts.sent,
            failed=counts.failed,
            dropped=counts.dropped,
            unsent=len(self._queue),
        )

    def notify(self, body: msgspec.Struct | Mapping[str, Any]) -> None:
        """Queue ``body`` for the webhook; never waits, never raises."""
        try:
            encoded = _json.encode(body)
            what = _type_of(body)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            self._failed += 1
            log.error("webhook notice not encodable; dropped", error=str(exc))
            return
        dropped = self._queue.put(_Queued(encoded, what, time.monotonic()))
        if dropped is not None:
            log.warning(
                "webhook queue full: oldest notice dropped",
                url=self._target.shown,
                type=dropped.what,
                dropped=self._queue.dropped,
            )
        self._idle.clear()
        self._more.set()

    async def _work(self) -> None:
        while True:
            queued = self._queue.take()
            if queued is None:
                self._idle.set()
                self._more.clear()
                await self._more.wait()
                continue
            try:
                await self._deliver(queued)
            except Exception as exc:  # never a crash of the controller: count and go on
                self._failed += 1
                log.error("webhook notice lost to an error", error=repr(exc), type=queued.what)

    async def _deliver(self, queued: _Queued) -> None:
        backoff = self._policy.backoff()
        tries = 0
        while True:
            tries += 1
            status, error = await self._try(queued.body)
            delay = backoff.next_delay()
            age = time.monotonic() - queued.at
            verdict = self._policy.verdict(status, tries, age, delay)
            if verdict == "sent":
                self._sent += 1
                return
            if verdict == "give-up":
                self._failed += 1
                log.warning(
                    "webhook notice given up",
                    url=self._target.shown,
                    type=queued.what,
                    tries=tries,
                    status=status,
                    error=error,
                    failed=self._failed,
                )
                return
            log.debug("webhook try failed; retrying", status=status, error=error, retry_in=delay)
            await asyncio.sleep(delay)

    async def _try(self, body: bytes) -> tuple[int | None, str]:
        """One POST: the status of the answer (None: none) and what went wrong."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._target.post(body), ""
        except TimeoutError:
            return None, f"no answer within {self._timeout:g} s"
        except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
            return None, _error_text(exc)


def _error_text(exc: BaseException) -> str:
    """What went wrong, without the URL (the exception's text may hold it)."""
    reason = exc.strerror if isinstance(exc, OSError) else None
    return type(exc).__name__ + (f": {reason}" if reason else "")


def _type_of(body: msgspec.Struct | Mapping[str, Any]) -> str:
    if isinstance(body, msgspec.Struct):
        return str(type(body).__struct_config__.tag or type(body).__name__)
    return str(body.get("type", "notice"))


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the POSTs go: host, port, path, TLS, and the basic authentication."""

    host: str
    port: int
    tls: bool
    path: str
    authorization: str  # "" without a user name in the URL
    shown: str  # the URL without its password

    @classmethod
    def of(cls, url: str) -> _Target:
        parts: SplitResult = urlsplit(url)
        tls = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authorization = ""
        if parts.username is not None:
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(login.encode()).decode("ascii")
        return cls(
            host=parts.hostname or "",
            port=parts.port or (443 if tls else 80),
            tls=tls,
            path=path,
            authorization=authorization,
            shown=public_url(url),
        )

    def request(self, body: bytes) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {host}:{self.port}",
            f"User-Agent: {USER_AGENT}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if self.authorization:
            lines.append(f"Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def post(self, body: bytes) -> int:
        """POST ``body``; the answer's status code."""
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        try:
            writer.write(self.request(body))
            await writer.drain()
            line = await reader.readuntil(b"\r\n")
            if len(line) > ANSWER_LIMIT:
                raise ValueError("status line too long")
            return _status(line)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _status(line: bytes) -> int:
    """The status code of ``HTTP/1.1 200 OK``."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    return int(parts[1])
