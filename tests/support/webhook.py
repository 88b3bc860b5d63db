"""A webhook receiver for tests: a threaded HTTP server on loopback that records every
POST and answers from a script (status codes, an optional delay)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Hook", "Received", "webhook"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Hook:
    """``answers``: the status of each POST in turn, then ``200`` for ever; ``delay``:
    seconds each answer waits."""

    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    tries: int = 0
    port: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str = "/hook", login: str = "") -> str:
        at = f"{login}@" if login else ""
        return f"http://{at}127.0.0.1:{self.port}{path}"

    def answer(self) -> int:
        with self._changed:
            self.tries += 1
            return self.answers.pop(0) if self.answers else 200

    def record(self, received: Received, status: int) -> None:
        with self._changed:
            if 200 <= status < 300:
                self.received.append(received)
            self._changed.notify_all()

    async def wait_received(self, count: int = 1, timeout: float = 15.0) -> list[Received]:
        """Wait until ``count`` POSTs were answered 2xx."""
        await asyncio.to_thread(self._wait, lambda: len(self.received) >= count, timeout)
        return list(self.received)

    async def wait_body(self, match: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """Wait until a body answered 2xx matches; return it."""

        def found() -> Any:
            return next((r.body for r in list(self.received) if match(r.body)), None)

        await asyncio.to_thread(self._wait, lambda: found() is not None, timeout)
        return found()

    async def wait_tries(self, count: int, timeout: float = 15.0) -> None:
        await asyncio.to_thread(self._wait, lambda: self.tries >= count, timeout)

    def _wait(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"webhook: {self.tries} tries, {len(self.received)} ok")
                self._changed.wait(left)


@contextmanager
def webhook(answers: list[int] | None = None, delay: float = 0.0) -> Iterator[Hook]:
    """A receiver on a free loopback port, for the block."""
    hook = Hook(answers=list(answers or []), delay=delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            status = hook.answer()
            if hook.delay:
                time.sleep(hook.delay)
            body = json.loads(raw) if raw else {}
            hook.record(Received(self.path, dict(self.headers.items()), body), status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
