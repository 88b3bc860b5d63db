"""The agent's durable event outbox, and its memory of the commands it has taken.

Every event is committed to SQLite (WAL) in the state directory before anything publishes
it, and deleted only when the broker has acknowledged it (PUBACK). So an event survives a
cut link, a broker restart and a ``kill -9`` of the agent, and goes out again, in ``seq``
order, on the next connection. Sending an event twice is expected (a PUBACK lost with the
link): the controller stores each (env, src, seq) once.

``seq`` grows by one per event and is never reused, across restarts too; ``src`` is a
random stream id made once with the database, so a fresh state directory is a new stream
and the controller does not mistake its ``seq`` 1 for the old stream's.

The ``seen`` table remembers command ids so that a command delivered twice (or replayed)
runs once: each until its command expires (``until``), and after that among the newest
10,000 for at most 7 days. An id is never forgotten before its command expires, so a
replay cannot get past it, not even across a restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from edgeplane.edge_agent.errors import EventInvalid, OutboxError
from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.codec import encode
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import Event

__all__ = ["DEFAULT_CAP", "OUTBOX_FILE", "SEEN_KEEP", "SEEN_TTL", "Outbox", "outbox_files"]

OUTBOX_FILE: Final = "outbox.db"
DEFAULT_CAP: Final = 100_000  # beyond this many unacknowledged events, complain loudly
SEEN_KEEP: Final = 10_000  # command ids remembered at most
SEEN_TTL: Final = 7 * 86_400.0  # ... and for at most this many seconds
_PRUNE_EVERY: Final = 100  # remembered commands between two prunings of `seen`
_CAP_LOG_GAP: Final = 60.0  # seconds between two complaints about the cap

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS seen (cmd TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (at);
"""
# Outboxes made before commands were signed lack the column; 0: expired long ago.
_SEEN_UNTIL: Final = "ALTER TABLE seen ADD COLUMN until REAL NOT NULL DEFAULT 0"

E = TypeVar("E", bound=Event)

log = get_logger(__name__)


def outbox_files(state_dir: Path) -> list[Path]:
    """The database and its WAL side files."""
    base = state_dir / OUTBOX_FILE
    return [base, base.with_name(OUTBOX_FILE + "-wal"), base.with_name(OUTBOX_FILE + "-shm")]


class Outbox:
    """The :class:`~edge_agent.events.EventSink` of a real agent. Thread-safe.

    ``on_emit`` is called (outside the lock) after each event is committed: the agent
    passes its waker, so the loop publishes the event at once.
    """

    def __init__(
        self,
        state_dir: Path,
        env: str,
        *,
        clock: Clock | None = None,
        on_emit: Callable[[], None] | None = None,
        cap: int = DEFAULT_CAP,
        seen_keep: int = SEEN_KEEP,
    ) -> None:
        self.path = state_dir / OUTBOX_FILE
        self.env = env
        self.cap = cap
        self.seen_keep = seen_keep
        self.on_emit = on_emit
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._cap_logged_at = -float("inf")
        self._remembered = 0
        self._db = self._open()
        try:
            self.src, self._last_seq, self._count = self._load()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error("cannot be read", exc) from exc

    # opening -------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            # Created private first: SQLite gives its WAL files the database's mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("cannot be opened", exc) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an event is on disk before it is sent
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(seen)")}
            if "until" not in columns:
                db.execute(_SEEN_UNTIL)
        except sqlite3.Error as exc:
            db.close()
            raise self._error("cannot be used", exc) from exc
        return db

    def _load(self) -> tuple[str, int, int]:
        with self._transaction():
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            owner = meta.get("env")
            if owner is not None and owner != self.env:
                raise OutboxError(
                    f"{str(self.path)!r} belongs to environment {owner!r}, not {self.env!r}; "
                    "give each environment its own --state-dir"
                )
            src = meta.get("src") or os.urandom(4).hex()
            if "src" not in meta:
                self._db.execute("INSERT INTO meta VALUES ('src', ?), ('env', ?)", (src, self.env))
            last_seq = int(meta.get("last_seq", "0"))
            (count,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return src, last_seq, int(count)

    def _error(self, what: str, exc: BaseException) -> OutboxError:
        return OutboxError(
            f"the event outbox {str(self.path)!r} {what}: {exc}; it holds events not yet "
            "delivered, so move it aside rather than deleting it"
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # events --------------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event emitted (0 before the first)."""
        return self._last_seq

    def __len__(self) -> int:
        """Events not yet acknowledged by the broker."""
        return self._count

    def emit(self, kind: type[E], /, **fields: Any) -> E:
        with self._lock:
            seq = self._last_seq + 1
            event = kind(env=self.env, seq=seq, src=self.src, ts=self._timestamp(), **fields)
            payload = encode(event)
            _check(kind, payload)
            try:
                with self._transaction():
                    self._db.execute("INSERT INTO events VALUES (?, ?)", (seq, payload))
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(seq),)
                    )
            except sqlite3.Error as exc:
                raise self._error("cannot store an event", exc) from exc
            self._last_seq = seq
            self._count += 1
            self._check_cap()
        if self.on_emit is not None:
            self.on_emit()
        return event

    def pending(self, after: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Unacknowledged events (seq, payload) with ``seq > after``, oldest first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot be read", exc) from exc
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def acked(self, *seqs: int) -> None:
        """The broker has these events: forget them (in one transaction)."""
        if not seqs:
            return
        with self._lock:
            try:
                with self._transaction():
                    deleted = self._db.executemany(
                        "DELETE FROM events WHERE seq = ?", [(seq,) for seq in seqs]
                    ).rowcount
            except sqlite3.Error as exc:
                raise self._error("cannot delete acknowledged events", exc) from exc
            self._count -= deleted

    def _timestamp(self) -> float:
        return round(self._clock.time(), 3)

    def _check_cap(self) -> None:
        if self._count <= self.cap:
            return
        now = self._clock.monotonic()
        if now - self._cap_logged_at < _CAP_LOG_GAP:
            return
        self._cap_logged_at = now
        log.error(
            f"the event outbox holds {self._count} events, over its cap of {self.cap}: the "
            "broker has not acknowledged events for a long time; nothing is dropped, but "
            "the state directory keeps growing",
            outbox=str(self.path),
            pending=self._count,
            cap=self.cap,
        )

    # commands ------------------------------------------------------------------------------
    def seen(self, cmd_id: str) -> bool:
        """Was a command with this id taken before (and not yet forgotten)?"""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE cmd = ?", (cmd_id,)).fetchone()
        return row is not None

    def remember(self, cmd_id: str, until: float | None = None) -> None:
        """Keep ``cmd_id`` so that the same command delivered again is not run again: at
        least until ``until`` (its command's expiry, unix seconds)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO seen (cmd, at, until) VALUES (?, ?, ?)",
                    (cmd_id, self._clock.time(), until or 0.0),
                )
                self._remembered += 1
                if self._remembered % _PRUNE_EVERY == 0:
                    self._prune_seen()
            except sqlite3.Error as exc:
                raise self._error("cannot remember a command", exc) from exc

    def _prune_seen(self) -> None:
        now = self._clock.time()
        self._db.execute("DELETE FROM seen WHERE at < ? AND until < ?", (now - SEEN_TTL, now))
        self._db.execute(
            "DELETE FROM seen WHERE until < ? AND cmd NOT IN "
            "(SELECT cmd FROM seen ORDER BY at DESC LIMIT ?)",
            (now, self.seen_keep),
        )

    # closing -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()


def _check(kind: type[msgspec.Struct], payload: bytes) -> None:
    """Refuse an event the controller could not read (e.g. a reason over 256 characters):
    it would be dropped there, silently."""
    try:
        msgspec.json.decode(payload, type=kind)
    except msgspec.ValidationError as exc:
        raise EventInvalid(f"{kind.__name__} event: {exc}") from exc
