"""The controller's SQLite database (aiosqlite, WAL): environments, transitions, alert edges.

Writes never happen on the receive path. The service hands each :class:`Judgement` to
:meth:`Store.submit`, which puts it on a bounded queue and returns its sequence number; one
writer task takes everything queued at once, coalesces the environment rows (the last state
of each wins), writes the batch in one transaction and commits. Plain heartbeats (only
``last_seen`` and ``seq`` change) wait up to ``linger`` seconds for company, so a busy fleet
costs a few commits a second; anything that will be published is committed at once.
:meth:`Store.wait_committed` lets the publisher hold back a view or an alert until what it
shows is on disk, so a crash never loses a transition that was already published.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` takes a database
from any older version to the current one, and a newer one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite

from controller.alerts import AlertEdge
from controller.errors import StoreError
from controller.presence import EnvRecord, Judgement, Transition

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store", "open_store"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # version 1: environments, every transition, every alert edge
    """
    CREATE TABLE envs (
        env TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        since REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        last_seen REAL,
        bdseq INTEGER,
        seq INTEGER,
        boot TEXT NOT NULL DEFAULT '',
        interval REAL,
        flapping INTEGER NOT NULL DEFAULT 0,
        conflict INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        env TEXT NOT NULL,
        from_status TEXT NOT NULL,
        to_status TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        during_downtime INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX transitions_by_env ON transitions (env, at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        env TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # version 2: the transitions the flap detector needs at restart, found by time
    """
    CREATE INDEX transitions_by_time ON transitions (at);
    CREATE INDEX alerts_by_env ON alerts (env, at);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_ENV_COLUMNS: Final = (
    "env, status, since, reason, last_seen, bdseq, seq, boot, interval, flapping, conflict"
)
_UPSERT_ENV: Final = f"""
    INSERT INTO envs ({_ENV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (env) DO UPDATE SET
        status = excluded.status, since = excluded.since, reason = excluded.reason,
        last_seen = excluded.last_seen, bdseq = excluded.bdseq, seq = excluded.seq,
        boot = excluded.boot, interval = excluded.interval, flapping = excluded.flapping,
        conflict = excluded.conflict
"""
_INSERT_TRANSITION: Final = """
    INSERT INTO transitions (env, from_status, to_status, reason, at, during_downtime)
    VALUES (?, ?, ?, ?, ?, ?)
"""
_INSERT_ALERT: Final = "INSERT INTO alerts (env, kind, state, at, detail) VALUES (?, ?, ?, ?, ?)"

_CLOSE: Final = object()  # the writer's stop signal, queued after everything else


class Store:
    """Use through :func:`open_store`, which runs the writer task."""

    def __init__(
        self, db: aiosqlite.Connection, path: Path, queue_size: int, linger: float
    ) -> None:
        self._db = db
        self.path = path
        self._linger = linger
        self._urgent = asyncio.Event()  # something queued waits to be published
        self._queue: asyncio.Queue[Judgement | object] = asyncio.Queue(maxsize=queue_size)
        self._submitted = 0
        self._committed = 0
        self._progress = asyncio.Condition()
        self.batches = 0  # committed write transactions, for stats and tests

    # --- writing ------------------------------------------------------------------------
    async def submit(self, judgement: Judgement) -> int:
        """Queue a judgement's writes (waits while the queue is full); returns its number."""
        await self._queue.put(judgement)
        self._submitted += 1
        if judgement.views or judgement.alerts or judgement.transitions:
            self._urgent.set()
        return self._submitted

    @property
    def committed(self) -> int:
        return self._committed

    async def wait_committed(self, number: int) -> None:
        """Wait until the judgement numbered ``number`` (and all before it) is committed."""
        if self._committed >= number:
            return
        async with self._progress:
            await self._progress.wait_for(lambda: self._committed >= number)

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        self._urgent.set()
        await self.wait_committed(self._submitted)

    async def _write_loop(self) -> None:
        closing = False
        while not closing:
            batch = [await self._queue.get()]
            if not self._urgent.is_set():
                # Only heartbeats so far (last_seen, seq): let a batch gather; anything
                # that will be published ends the wait at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._linger)
            self._urgent.clear()
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            judgements = [item for item in batch if isinstance(item, Judgement)]
            closing = len(judgements) != len(batch)
            if judgements:
                await self._write(judgements)
            async with self._progress:
                self._committed += len(judgements)
                self._progress.notify_all()

    async def _write(self, judgements: Sequence[Judgement]) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        transitions: list[tuple[Any, ...]] = []
        alerts: list[tuple[Any, ...]] = []
        for judgement in judgements:
            for record in judgement.records:
                rows[record.env] = _env_row(record)
            transitions.extend(_transition_row(t) for t in judgement.transitions)
            alerts.extend(_alert_row(a) for a in judgement.alerts)
        try:
            if rows:
                await self._db.executemany(_UPSERT_ENV, rows.values())
            if transitions:
                await self._db.executemany(_INSERT_TRANSITION, transitions)
            if alerts:
                await self._db.executemany(_INSERT_ALERT, alerts)
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the database {self.path}: {exc}") from exc
        self.batches += 1

    # --- reading ------------------------------------------------------------------------
    async def load(
        self, transitions_since: float
    ) -> tuple[list[EnvRecord], dict[str, list[float]]]:
        """Every stored environment, and per environment the times of its online/offline
        transitions since ``transitions_since`` (what the flap detector restores)."""
        records = await self.envs()
        recent: dict[str, list[float]] = {}
        try:
            rows = await self._db.execute_fetchall(
                "SELECT env, at FROM transitions WHERE at >= ?"
                " AND from_status IN ('online', 'offline') AND to_status IN ('online', 'offline')"
                " ORDER BY at",
                (transitions_since,),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {self.path}: {exc}") from exc
        for env, at in rows:
            recent.setdefault(env, []).append(at)
        return records, recent

    async def envs(self) -> list[EnvRecord]:
        rows = await self._rows(f"SELECT {_ENV_COLUMNS} FROM envs ORDER BY env")
        return [_record(row) for row in rows]

    async def transitions(self, env: str | None = None) -> list[Transition]:
        """Stored transitions, oldest first (all, or one environment's)."""
        rows = await self._rows(
            "SELECT env, from_status, to_status, reason, at, during_downtime FROM transitions",
            env,
        )
        return [Transition(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    async def alerts(self, env: str | None = None) -> list[AlertEdge]:
        """Stored alert edges, oldest first (all, or one environment's)."""
        rows = await self._rows("SELECT env, kind, state, at, detail FROM alerts", env)
        return [AlertEdge(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def _rows(self, query: str, env: str | None = None) -> list[sqlite3.Row]:
        try:
            if env is None:
                suffix = "" if "ORDER BY" in query else " ORDER BY id"
                return list(await self._db.execute_fetchall(query + suffix))
            return list(
                await self._db.execute_fetchall(query + " WHERE env = ? ORDER BY id", (env,))
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {self.path}: {exc}") from exc


@contextlib.asynccontextmanager
async def open_store(
    path: Path, *, queue_size: int = 10_000, linger: float = 0.25
) -> AsyncIterator[Store]:
    """Open (creating or migrating) the database and run its writer until the block ends;
    on the way out everything submitted is committed before the database is closed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        await _prepare(db, path)
        store = Store(db, path, queue_size, linger)
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(store._write_loop(), name="store-writer")
            try:
                yield store
            finally:
                if not writer.done():
                    await store._queue.put(_CLOSE)
                    store._urgent.set()
                    # Let the writer drain even when the block ends with an error.
                    await asyncio.wait([writer])
    finally:
        await db.close()


async def _prepare(db: aiosqlite.Connection, path: Path) -> None:
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives the process being killed (what the controller
        # must survive); only a power cut may lose the last moments.
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database {path} has schema version {version}, newer than this "
                f"controller's {SCHEMA_VERSION}: upgrade edgeplane"
            )
        for number in range(version, SCHEMA_VERSION):
            await db.executescript(
                f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;"
            )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot prepare the database {path}: {exc}") from exc


def _env_row(record: EnvRecord) -> tuple[Any, ...]:
    return (
        record.env,
        record.status,
        record.since,
        record.reason,
        record.last_seen,
        record.bdseq,
        record.seq,
        record.boot,
        record.interval,
        int(record.flapping),
        int(record.conflict),
    )


def _record(row: Sequence[Any]) -> EnvRecord:
    env, status, since, reason, last_seen, bdseq, seq, boot, interval, flapping, conflict = row
    return EnvRecord(
        env, status, since, reason, last_seen, bdseq, seq, boot, interval, bool(flapping),
        bool(conflict),
    )  # fmt: skip


def _transition_row(transition: Transition) -> tuple[Any, ...]:
    return (
        transition.env,
        transition.from_status,
        transition.to_status,
        transition.reason,
        transition.at,
        int(transition.during_downtime),
    )


def _alert_row(edge: AlertEdge) -> tuple[Any, ...]:
    return (edge.env, edge.kind, edge.state, edge.at, edge.detail)
