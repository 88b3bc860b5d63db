"""The controller's SQLite database (aiosqlite, WAL): environments, transitions, alert edges.

Writes never happen on the receive path. The service hands each :class:`Judgement` to
:meth:`Store.submit`, which puts it on a bounded queue and returns its sequence number; one
writer task takes everything queued at once, coalesces the environment rows (the last state
of each wins), writes the batch in one transaction and commits. Plain heartbeats (only
``last_seen`` and ``seq`` change) wait up to ``linger`` seconds for company, so a busy fleet
costs a few commits a second; anything that will be published is committed at once.
:meth:`Store.wait_committed` lets the publisher hold back a view or an alert until what it
shows is on disk, so a crash never loses a transition that was already published.

Everything else (environment records, inventories, deployments, operations-log events)
goes through the same queue as :class:`Writes`: events are inserted in batches with
``INSERT OR IGNORE`` on their unique (env, src, seq), so an event delivered twice is stored
once. Reads for operator requests go straight to the connection (they are off the receive
path).

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` takes a database
from any older version to the current one, and a newer one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgspec

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.presence import EnvRecord, Judgement, Transition
from edgeplane.controller.core.records import LogEntry, ReportedInventory, Writes
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.errors import StoreError
from edgeplane.shared.messages import Event, Platform
from edgeplane.shared.rpc import LoggedEvent
from edgeplane.shared.workflow import Workflow

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
    # version 3: environment records, agent inventories, deployments, the operations log
    """
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        stage TEXT NOT NULL,
        location TEXT NOT NULL,
        purpose TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        retired REAL
    );
    CREATE TABLE inventory (
        env TEXT PRIMARY KEY,
        models TEXT NOT NULL DEFAULT '{}',
        platform TEXT,
        updated REAL NOT NULL
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        env TEXT NOT NULL,
        workflow TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL,
        expires REAL,
        dry_run INTEGER NOT NULL DEFAULT 0,
        when_online INTEGER NOT NULL DEFAULT 0,
        cmd TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX deployments_by_env ON deployments (env, created);
    CREATE INDEX deployments_by_state ON deployments (state);
    CREATE TABLE oplog (
        id INTEGER PRIMARY KEY,
        env TEXT NOT NULL,
        src TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        dep TEXT NOT NULL DEFAULT '',
        at REAL NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (env, src, seq)
    );
    CREATE INDEX oplog_by_env ON oplog (env, id);
    CREATE INDEX oplog_by_dep ON oplog (dep, id);
    CREATE INDEX oplog_by_src ON oplog (src, seq);
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
_UPSERT_RECORD: Final = """
    INSERT OR REPLACE INTO records (id, project, stage, location, purpose, labels, created, retired)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPSERT_INVENTORY: Final = (
    "INSERT OR REPLACE INTO inventory (env, models, platform, updated) VALUES (?, ?, ?, ?)"
)
_DEPLOYMENT_COLUMNS: Final = (
    "id, env, workflow, version, kind, spec, state, reason, created, updated, expires,"
    " dry_run, when_online, cmd"
)
_UPSERT_DEPLOYMENT: Final = f"""
    INSERT OR REPLACE INTO deployments ({_DEPLOYMENT_COLUMNS})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_EVENT: Final = """
    INSERT OR IGNORE INTO oplog (env, src, seq, type, dep, at, body) VALUES (?, ?, ?, ?, ?, ?, ?)
"""

_json: Final = msgspec.json.Encoder()
_models_decoder: Final = msgspec.json.Decoder(dict[str, list[str]])
_labels_decoder: Final = msgspec.json.Decoder(dict[str, str])
_platform_decoder: Final = msgspec.json.Decoder(Platform)
_workflow_decoder: Final = msgspec.json.Decoder(Workflow)
_event_decoder: Final = msgspec.json.Decoder(Event)


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
        self._queue: asyncio.Queue[Judgement | Writes | object] = asyncio.Queue(maxsize=queue_size)
        self._submitted = 0
        self._committed = 0
        self._progress = asyncio.Condition()
        self.batches = 0  # committed write transactions, for stats and tests

    # --- writing ------------------------------------------------------------------------
    async def submit(self, item: Judgement | Writes) -> int:
        """Queue a judgement's (or other) writes (waits while the queue is full); returns
        its number."""
        await self._queue.put(item)
        self._submitted += 1
        if _is_urgent(item):
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

    async def finish_writing(self) -> None:
        """Ask the writer to commit everything queued so far and then stop."""
        await self._queue.put(_CLOSE)
        self._urgent.set()

    async def write_until_finished(self) -> None:
        """The writer: commits what is submitted, in batches, until :meth:`finish_writing`."""
        await self._write_loop()

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
            items = [item for item in batch if isinstance(item, Judgement | Writes)]
            closing = len(items) != len(batch)
            if items:
                await self._write(items)
            async with self._progress:
                self._committed += len(items)
                self._progress.notify_all()

    async def _write(self, items: Sequence[Judgement | Writes]) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        transitions: list[tuple[Any, ...]] = []
        alerts: list[tuple[Any, ...]] = []
        other = Writes()
        for item in items:
            if isinstance(item, Writes):
                other.extend(item)
                continue
            for record in item.records:
                rows[record.env] = _env_row(record)
            transitions.extend(_transition_row(t) for t in item.transitions)
            alerts.extend(_alert_row(a) for a in item.alerts)
        try:
            if rows:
                await self._db.executemany(_UPSERT_ENV, rows.values())
            if transitions:
                await self._db.executemany(_INSERT_TRANSITION, transitions)
            if alerts:
                await self._db.executemany(_INSERT_ALERT, alerts)
            if other:
                await self._write_other(other)
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the database {self.path}: {exc}") from exc
        self.batches += 1

    async def _write_other(self, writes: Writes) -> None:
        # The last version of each row in the batch wins; events keep their order.
        records = {r.id: _record_row(r) for r in writes.records}
        inventory = {i.env: _inventory_row(i) for i in writes.inventory}
        deployments = {d.id: _deployment_row(d) for d in writes.deployments}
        if records:
            await self._db.executemany(_UPSERT_RECORD, records.values())
        if inventory:
            await self._db.executemany(_UPSERT_INVENTORY, inventory.values())
        if deployments:
            await self._db.executemany(_UPSERT_DEPLOYMENT, deployments.values())
        if writes.events:
            await self._db.executemany(_INSERT_EVENT, map(_event_row, writes.events))

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

    async def records(self) -> list[Environment]:
        rows = await self._query(
            "SELECT id, project, stage, location, purpose, labels, created, retired"
            " FROM records ORDER BY id"
        )
        return [_environment(row) for row in rows]

    async def inventories(self) -> list[ReportedInventory]:
        rows = await self._query("SELECT env, models, platform, updated FROM inventory")
        return [_inventory(row) for row in rows]

    async def active_deployments(self) -> list[Deployment]:
        """Deployments not yet at an end (queued or in flight), oldest first."""
        rows = await self._query(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE state IN"
            " ('queued', 'sent', 'accepted', 'running') ORDER BY created, id"
        )
        return [_deployment(row) for row in rows]

    async def deployments(self, env: str = "", limit: int = 50) -> list[Deployment]:
        """Deployments, newest first (all, or one environment's)."""
        where, args = (" WHERE env = ?", [env]) if env else ("", [])
        rows = await self._query(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments{where}"
            " ORDER BY created DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        return [_deployment(row) for row in rows]

    async def deployment(self, dep: str) -> Deployment | None:
        rows = await self._query(
            f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?", (dep,)
        )
        return _deployment(rows[0]) if rows else None

    async def events(
        self, *, env: str = "", dep: str = "", after: int = 0, limit: int = 200
    ) -> list[LoggedEvent]:
        """Operations-log entries with ``id > after``, oldest first."""
        conditions: list[str] = ["id > ?"]
        args: list[int | str] = [after]
        for column, value in (("env", env), ("dep", dep)):
            if value:
                conditions.append(f"{column} = ?")
                args.append(value)
        rows = await self._query(
            f"SELECT id, at, body FROM oplog WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?",
            (*args, limit),
        )
        return [
            LoggedEvent(id=row[0], at=row[1], event=_decode(_event_decoder, row[2], "event"))
            for row in rows
        ]

    async def stream_heads(self) -> list[tuple[str, str, int]]:
        """(env, src, highest seq) of every event stream in the log."""
        rows = await self._query("SELECT env, src, MAX(seq) FROM oplog GROUP BY env, src")
        return [(row[0], row[1], row[2]) for row in rows]

    async def last_seq(self, src: str) -> int:
        """The highest sequence number stored for the event stream ``src`` (0: none)."""
        rows = await self._query("SELECT MAX(seq) FROM oplog WHERE src = ?", (src,))
        return int(rows[0][0] or 0) if rows else 0

    async def _query(self, query: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._db.execute_fetchall(query, tuple(args)))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {self.path}: {exc}") from exc

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
            writer = tasks.create_task(store.write_until_finished(), name="store-writer")
            try:
                yield store
            finally:
                if not writer.done():
                    await store.finish_writing()
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


def _is_urgent(item: Judgement | Writes) -> bool:
    if isinstance(item, Writes):
        return item.urgent
    return bool(item.views or item.alerts or item.transitions)


def _record_row(record: Environment) -> tuple[Any, ...]:
    labels = _json.encode(dict(record.labels)).decode()
    return (
        record.id,
        record.project,
        record.stage,
        record.location,
        record.purpose,
        labels,
        record.created,
        record.retired,
    )


def _environment(row: Sequence[Any]) -> Environment:
    env, project, stage, location, purpose, labels, created, retired = row
    return Environment(
        env, project, stage, location, purpose, _decode(_labels_decoder, labels, "labels"),
        created, retired,
    )  # fmt: skip


def _inventory_row(inventory: ReportedInventory) -> tuple[Any, ...]:
    models = _json.encode({name: list(v) for name, v in inventory.models.items()}).decode()
    platform = None if inventory.platform is None else _json.encode(inventory.platform).decode()
    return (inventory.env, models, platform, inventory.updated)


def _inventory(row: Sequence[Any]) -> ReportedInventory:
    env, models, platform, updated = row
    return ReportedInventory(
        env,
        _decode(_models_decoder, models, "models"),
        None if platform is None else _decode(_platform_decoder, platform, "platform"),
        updated,
    )


def _deployment_row(d: Deployment) -> tuple[Any, ...]:
    spec = _json.encode(d.workflow).decode()
    return (
        d.id, d.env, d.workflow.name, d.workflow.version, d.workflow.kind, spec, d.state,
        d.reason, d.created, d.updated, d.expires, int(d.dry_run), int(d.when_online), d.cmd,
    )  # fmt: skip


def _deployment(row: Sequence[Any]) -> Deployment:
    dep, env, _, _, _, spec, state, reason, created, updated, expires, dry, online, cmd = row
    return Deployment(
        id=dep,
        env=env,
        workflow=_decode(_workflow_decoder, spec, "workflow"),
        state=state,
        created=created,
        updated=updated,
        cmd=cmd,
        reason=reason,
        expires=expires,
        dry_run=bool(dry),
        when_online=bool(online),
    )


def _event_row(entry: LogEntry) -> tuple[Any, ...]:
    event = entry.event
    body = _json.encode(event).decode()
    kind = type(event).__struct_config__.tag
    return (event.env, event.src, event.seq, str(kind), event.dep, entry.at, body)


def _decode(decoder: msgspec.json.Decoder[Any], text: str | bytes, what: str) -> Any:
    try:
        return decoder.decode(text)
    except msgspec.MsgspecError as exc:
        raise StoreError(f"a stored {what} cannot be read: {exc}") from exc
