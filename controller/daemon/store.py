"""The controller's SQLite database (aiosqlite, WAL): environments, transitions, alert edges,
environment records, inventories, deployments and the operations log.

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
path). The schema and its migrations are :mod:`~edgeplane.controller.daemon.schema`; the
rows, :mod:`~edgeplane.controller.daemon.rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.deployments import REFOLD, Deployment, OperatorCommand, refold
from edgeplane.controller.core.incidents import Incident, IncidentStepRecord
from edgeplane.controller.core.key_rotation import AgentTrust, KeyRotation
from edgeplane.controller.core.presence import EnvRecord, Judgement, Transition
from edgeplane.controller.core.records import Forgotten, ReportedInventory, Writes
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.core.rollout import RolloutRecord, Target
from edgeplane.controller.core.rotation import Credential
from edgeplane.controller.daemon import incident_rows, key_rows, rollout_rows, rows
from edgeplane.controller.daemon.schema import prepare
from edgeplane.controller.errors import StoreError
from edgeplane.shared.resources import PRESSURE_KINDS
from edgeplane.shared.rpc import LoggedEvent

__all__ = ["Store", "open_store"]

_CLOSE: Final = object()  # the writer's stop signal, queued after everything else


@dataclass(frozen=True, slots=True)
class _Delete:
    """One bounded DELETE, run by the writer in a transaction of its own."""

    sql: str
    params: Mapping[str, Any]
    done: asyncio.Future[int]


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

    @property
    def submitted(self) -> int:
        """The number of the last item submitted (what a wait for "all so far" waits for)."""
        return self._submitted

    def hurry(self) -> None:
        """Commit what is queued without lingering for more (someone waits for it)."""
        self._urgent.set()

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
            closing = any(item is _CLOSE for item in batch)
            if items:
                await self._write(items)
            async with self._progress:
                self._committed += len(items)
                self._progress.notify_all()
            for delete in (item for item in batch if isinstance(item, _Delete)):
                await self._delete(delete, closing)

    async def delete_batch(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run ``sql`` (a DELETE bounded by its own LIMIT) between two of the writer's
        batches, in a transaction of its own, so it never mixes with them; returns the
        rows deleted (0 once the store is closing)."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Delete(sql, params, done))
        self._urgent.set()  # no lingering: the DELETE is short and someone waits for it
        return await done

    async def _delete(self, delete: _Delete, closing: bool) -> None:
        if delete.done.done():
            return  # its caller is gone
        if closing:
            delete.done.set_result(0)
            return
        try:
            cursor = await self._db.execute(delete.sql, delete.params)
            await self._db.commit()
        except sqlite3.Error as exc:
            delete.done.set_exception(StoreError(f"cannot prune {self.path}: {exc}"))
            return
        delete.done.set_result(max(cursor.rowcount, 0))

    async def _write(self, items: Sequence[Judgement | Writes]) -> None:
        try:
            for part in _parts(items):
                await self._write_part(part)
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the database {self.path}: {exc}") from exc
        self.batches += 1

    async def _write_part(self, items: Sequence[Judgement | Writes]) -> None:
        envs: dict[str, tuple[Any, ...]] = {}
        transitions: list[tuple[Any, ...]] = []
        alerts: list[tuple[Any, ...]] = []
        other = Writes()
        for item in items:
            if isinstance(item, Writes):
                other.extend(item)
                continue
            for record in item.records:
                envs[record.env] = rows.env_row(record)
            transitions.extend(rows.transition_row(t) for t in item.transitions)
            alerts.extend(rows.alert_row(a) for a in item.alerts)
        if envs:
            await self._db.executemany(rows.UPSERT_ENV, envs.values())
        if transitions:
            await self._db.executemany(rows.INSERT_TRANSITION, transitions)
        if alerts:
            await self._db.executemany(rows.INSERT_ALERT, alerts)
        if other:
            await self._write_other(other)
        for forgotten in other.forgotten:
            await self._forget(forgotten)

    async def _forget(self, forgotten: Forgotten) -> None:
        tables = rows.HISTORY_TABLES if forgotten.history else ()
        if forgotten.history:
            await self._db.execute(incident_rows.DELETE_STEPS_OF_ENV, (forgotten.env,))
        for table in (*rows.PRESENCE_TABLES, *tables):
            await self._db.execute(f"DELETE FROM {table} WHERE env = ?", (forgotten.env,))

    async def _write_other(self, writes: Writes) -> None:
        # The last version of each row in the batch wins; events keep their order.
        records = {r.id: rows.environment_row(r) for r in writes.records}
        inventory = {i.env: rows.inventory_row(i) for i in writes.inventory}
        deployments = {d.id: rows.deployment_row(d) for d in writes.deployments}
        if records:
            await self._db.executemany(rows.UPSERT_ENVIRONMENT, records.values())
        if inventory:
            await self._db.executemany(rows.UPSERT_INVENTORY, inventory.values())
        if deployments:
            await self._db.executemany(rows.UPSERT_DEPLOYMENT, deployments.values())
        commands = {c.id: rows.command_row(c) for c in writes.commands}
        if commands:
            await self._db.executemany(rows.UPSERT_COMMAND, commands.values())
        if writes.events:
            await self._db.executemany(rows.INSERT_EVENT, map(rows.event_row, writes.events))
        credentials = {c.env: rows.credential_row(c) for c in writes.credentials}
        if credentials:
            await self._db.executemany(rows.UPSERT_CREDENTIAL, credentials.values())
        await self._write_key_rotation(writes)
        rollouts = {r.id: rollout_rows.rollout_row(r) for r in writes.rollouts}
        if rollouts:
            await self._db.executemany(rollout_rows.UPSERT_ROLLOUT, rollouts.values())
        targets = {(t.rollout, t.env): rollout_rows.target_row(t) for t in writes.rollout_targets}
        if targets:
            await self._db.executemany(rollout_rows.UPSERT_TARGET, targets.values())
        await self._write_incidents(writes)

    async def _write_incidents(self, writes: Writes) -> None:
        incidents = {i.id: i for i in writes.incidents}  # the last version of each wins
        if not incidents:
            return
        await self._db.executemany(
            incident_rows.UPSERT_INCIDENT, map(incident_rows.incident_row, incidents.values())
        )
        steps = [row for i in incidents.values() for row in incident_rows.step_rows(i)]
        await self._db.executemany(incident_rows.INSERT_STEP, steps)

    async def _write_key_rotation(self, writes: Writes) -> None:
        if writes.key_rotation:
            rotation = writes.key_rotation[-1]
            # A new rotation: the agents' parts in the one before are over.
            await self._db.execute(
                "DELETE FROM key_agents WHERE NOT EXISTS"
                " (SELECT 1 FROM key_rotation WHERE started = ?)",
                (rotation.started,),
            )
            await self._db.execute(
                key_rows.UPSERT_KEY_ROTATION, key_rows.key_rotation_row(rotation)
            )
        agents = {a.env: key_rows.key_agent_row(a) for a in writes.key_agents}
        if agents:
            await self._db.executemany(key_rows.UPSERT_KEY_AGENT, agents.values())

    # --- reading ------------------------------------------------------------------------
    async def load(
        self, transitions_since: float
    ) -> tuple[list[EnvRecord], dict[str, list[float]]]:
        """Every stored environment, and per environment the times of its online/offline
        transitions since ``transitions_since`` (what the flap detector restores)."""
        records = await self.envs()
        recent: dict[str, list[float]] = {}
        found = await self._query(
            "SELECT env, at FROM transitions WHERE at >= ?"
            " AND from_status IN ('online', 'offline') AND to_status IN ('online', 'offline')"
            " ORDER BY at",
            (transitions_since,),
        )
        for env, at in found:
            recent.setdefault(env, []).append(at)
        return records, recent

    async def envs(self) -> list[EnvRecord]:
        found = await self._query(f"{rows.ENV_SELECT} ORDER BY env")
        return [rows.env_record_from_row(row) for row in found]

    async def transitions(self, env: str | None = None) -> list[Transition]:
        """Stored transitions, oldest first (all, or one environment's)."""
        found = await self._of_env(rows.TRANSITION_SELECT, env)
        return [rows.transition_from_row(row) for row in found]

    async def open_pressure(self) -> dict[str, list[str]]:
        """Per environment, the resources whose latest pressure edge is ``raised`` (what the
        pressure watch restores)."""
        resource_of = {kind: resource for resource, kind in PRESSURE_KINDS.items()}
        marks = ", ".join("?" * len(resource_of))
        found = await self._query(
            "SELECT env, kind, state, max(rowid) FROM alerts"
            f" WHERE kind IN ({marks}) GROUP BY env, kind",
            tuple(resource_of),
        )
        episodes: dict[str, list[str]] = {}
        for env, kind, state, _ in found:
            if state == "raised":
                episodes.setdefault(env, []).append(resource_of[kind])
        return episodes

    async def alerts(self, env: str | None = None) -> list[AlertEdge]:
        """Stored alert edges, oldest first (all, or one environment's)."""
        found = await self._of_env(rows.ALERT_SELECT, env)
        return [rows.alert_from_row(row) for row in found]

    async def records(self) -> list[Environment]:
        found = await self._query(f"{rows.ENVIRONMENT_SELECT} ORDER BY id")
        return [rows.environment_from_row(row) for row in found]

    async def credentials(self) -> list[Credential]:
        found = await self._query(f"{rows.CREDENTIAL_SELECT} ORDER BY env")
        return [rows.credential_from_row(row) for row in found]

    async def key_rotation(self) -> tuple[KeyRotation | None, list[AgentTrust]]:
        """The latest command key rotation and every agent's part in it."""
        found = await self._query(key_rows.KEY_ROTATION_SELECT)
        rotation = key_rows.key_rotation_from_row(found[0]) if found else None
        agents = await self._query(key_rows.KEY_AGENT_SELECT)
        return rotation, [key_rows.key_agent_from_row(row) for row in agents]

    async def inventories(self) -> list[ReportedInventory]:
        found = await self._query(rows.INVENTORY_SELECT)
        return [rows.inventory_from_row(row) for row in found]

    async def active_deployments(self) -> list[Deployment]:
        """Deployments not final (queued, in flight, or stopped but revivable), oldest first."""
        found = await self._query(
            f"{rows.DEPLOYMENT_SELECT} WHERE revivable = 1 OR state IN"
            " ('queued', 'sent', 'accepted', 'running', 'restarting') ORDER BY created, id"
        )
        return [rows.deployment_from_row(row) for row in found]

    async def open_deployments(self) -> list[Deployment]:
        """:meth:`active_deployments`, but one an older controller kept (the migration to
        version 8 marked it) folded again from its logged events, once: that is stored."""
        found = await self.active_deployments()
        refolded: dict[str, Deployment] = {}
        for deployment in (d for d in found if d.last_seq == REFOLD):
            logged = await self.events(env=deployment.env, dep=deployment.id, limit=100_000)
            refolded[deployment.id] = refold(deployment, [(e.event, e.at) for e in logged])
        if refolded:
            writes = Writes(deployments=[*refolded.values()], urgent=True)
            await self.wait_committed(await self.submit(writes))
        current = (refolded.get(d.id, d) for d in found)
        return [d for d in current if not d.final]

    async def dry_runs(self) -> list[Deployment]:
        """The finished dry runs a critical workflow's validation may rest on: the latest
        of each environment, workflow and version; and those that deployments waiting
        for their validation name (whatever became of them)."""
        latest = await self._query(
            f"{rows.DEPLOYMENT_SELECT} AS d WHERE dry_run = 1"
            " AND state NOT IN ('queued', 'sent', 'accepted') AND id = (SELECT id FROM"
            " deployments WHERE env = d.env AND workflow = d.workflow AND version = d.version"
            " AND dry_run = 1 AND state NOT IN ('queued', 'sent', 'accepted')"
            " ORDER BY updated DESC, id DESC LIMIT 1)"
        )
        awaited = await self._query(
            f"{rows.DEPLOYMENT_SELECT} WHERE id IN (SELECT after_dep FROM deployments"
            " WHERE after_dep != '' AND state = 'queued')"
        )
        found = {row[0]: rows.deployment_from_row(row) for row in [*latest, *awaited]}
        return list(found.values())

    async def open_commands(self) -> list[OperatorCommand]:
        """The operator commands still pending, and the last one answered of each
        environment (oldest first)."""
        found = await self._query(
            f"{rows.COMMAND_SELECT} WHERE state = 'pending' UNION ALL"
            f" SELECT * FROM ({rows.COMMAND_SELECT} AS c WHERE state != 'pending' AND id ="
            " (SELECT id FROM commands WHERE env = c.env AND state != 'pending'"
            "  ORDER BY answered DESC, id DESC LIMIT 1))"
        )
        commands = [rows.command_from_row(row) for row in found]
        return sorted(commands, key=lambda c: (c.sent, c.id))

    async def commands(self, env: str = "") -> list[OperatorCommand]:
        """Operator commands, oldest first (all, or one environment's)."""
        found = await self._of_env(rows.COMMAND_SELECT, env or None)
        return sorted(map(rows.command_from_row, found), key=lambda c: (c.sent, c.id))

    async def issued_deployments(self) -> list[tuple[str, str, str]]:
        """(env, id, cmd) of every deployment ever created."""
        found = await self._query("SELECT env, id, cmd FROM deployments")
        return [(row[0], row[1], row[2]) for row in found]

    async def deployments(self, env: str = "", limit: int = 50) -> list[Deployment]:
        """Deployments, newest first (all, or one environment's)."""
        where, args = (" WHERE env = ?", [env]) if env else ("", [])
        found = await self._query(
            f"{rows.DEPLOYMENT_SELECT}{where} ORDER BY created DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        return [rows.deployment_from_row(row) for row in found]

    async def deployment(self, dep: str) -> Deployment | None:
        found = await self._query(f"{rows.DEPLOYMENT_SELECT} WHERE id = ?", (dep,))
        return rows.deployment_from_row(found[0]) if found else None

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
        found = await self._query(
            f"SELECT id, at, body FROM oplog WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?",
            (*args, limit),
        )
        return [rows.logged_event_from_row(row) for row in found]

    async def timeline(
        self, env: str, since: float, limit: int
    ) -> tuple[list[Transition], list[AlertEdge]]:
        """``env``'s transitions and alert edges at or after ``since``, oldest first (at
        most ``limit`` of each)."""
        args = (env, since, limit)
        transitions = await self._query(
            f"{rows.TRANSITION_SELECT} WHERE env = ? AND at >= ? ORDER BY at, id LIMIT ?", args
        )
        alerts = await self._query(
            f"{rows.ALERT_SELECT} WHERE env = ? AND at >= ? ORDER BY at, id LIMIT ?", args
        )
        return (
            [rows.transition_from_row(row) for row in transitions],
            [rows.alert_from_row(row) for row in alerts],
        )

    async def open_incidents(self) -> list[Incident]:
        """Every incident not resolved, with its timeline (what the book restores)."""
        return await self.incidents(open_only=True, limit=None)

    async def incidents(
        self,
        *,
        env: str = "",
        since: float | None = None,
        open_only: bool = False,
        kind: str = "",
        limit: int | None = 100,
    ) -> list[Incident]:
        """Incidents, newest first, each with its timeline."""
        conditions: list[str] = ["1 = 1"]
        args: list[Any] = []
        if env:
            conditions.append("env = ?")
            args.append(env)
        if kind:
            conditions.append("kind = ?")
            args.append(kind)
        if since is not None:
            conditions.append("updated >= ?")
            args.append(since)
        if open_only:
            conditions.append("state != 'resolved'")
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        found = await self._query(
            f"{incident_rows.INCIDENT_SELECT} WHERE {' AND '.join(conditions)}"
            f" ORDER BY opened DESC, id{tail}",
            args,
        )
        return await self._with_timelines(found)

    async def incident(self, incident_id: str) -> Incident | None:
        found = await self._query(f"{incident_rows.INCIDENT_SELECT} WHERE id = ?", (incident_id,))
        incidents = await self._with_timelines(found)
        return incidents[0] if incidents else None

    async def _with_timelines(self, found: list[sqlite3.Row]) -> list[Incident]:
        if not found:
            return []
        ids = [row[0] for row in found]
        steps: dict[str, list[IncidentStepRecord]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in await self._query(
                f"{incident_rows.STEP_SELECT} WHERE incident IN ({marks}) ORDER BY incident, step",
                chunk,
            ):
                steps.setdefault(row[0], []).append(incident_rows.step_from_row(row))
        return [incident_rows.incident_from_row(row, steps.get(row[0], ())) for row in found]

    async def rollouts(self) -> list[RolloutRecord]:
        """Every rollout, oldest first."""
        found = await self._query(f"{rollout_rows.ROLLOUT_SELECT} ORDER BY created, id")
        return [rollout_rows.rollout_from_row(row) for row in found]

    async def rollout_targets(self, rollout: str) -> list[Target]:
        found = await self._query(
            f"{rollout_rows.TARGET_SELECT} WHERE rollout = ? ORDER BY wave, env", (rollout,)
        )
        return [rollout_rows.target_from_row(row) for row in found]

    async def previous_deployment(self, env: str, workflow: str, before: float) -> str:
        """The newest deployment of ``workflow`` (by name) that ran or succeeded on
        ``env`` before ``before`` (not a dry run), or "": what a rollback restores."""
        found = await self._query(
            "SELECT id FROM deployments WHERE env = ? AND workflow = ? AND dry_run = 0"
            " AND state IN ('running', 'succeeded', 'restarting') AND created < ?"
            " ORDER BY created DESC, id DESC LIMIT 1",
            (env, workflow, before),
        )
        return str(found[0][0]) if found else ""

    async def stream_heads(self) -> list[tuple[str, str, int]]:
        """(env, src, highest seq) of every event stream in the log."""
        found = await self._query("SELECT env, src, MAX(seq) FROM oplog GROUP BY env, src")
        return [(row[0], row[1], row[2]) for row in found]

    async def last_seq(self, src: str) -> int:
        """The highest sequence number stored for the event stream ``src`` (0: none)."""
        found = await self._query("SELECT MAX(seq) FROM oplog WHERE src = ?", (src,))
        return int(found[0][0] or 0) if found else 0

    async def counts_by_env(self, table: str, above: int) -> dict[str, int]:
        """The rows of each environment in the history ``table``, for those with more
        than ``above``."""
        found = await self._query(
            f"SELECT env, COUNT(*) FROM {table} GROUP BY env HAVING COUNT(*) > ?", (above,)
        )
        return {str(row[0]): int(row[1]) for row in found}

    async def _query(self, query: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._db.execute_fetchall(query, tuple(args)))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {self.path}: {exc}") from exc

    async def _of_env(self, select: str, env: str | None) -> list[sqlite3.Row]:
        """``select``'s rows in the order they were stored: all, or one environment's."""
        if env is None:
            return await self._query(f"{select} ORDER BY id")
        return await self._query(f"{select} WHERE env = ? ORDER BY id", (env,))


def _create_private(path: Path) -> None:
    """A new database is its owner's alone (0600 in a 0700 directory made for it): it holds
    the operations log and step output. SQLite gives its -wal and -shm files the same mode."""
    if str(path) == ":memory:":
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


@contextlib.asynccontextmanager
async def open_store(
    path: Path, *, queue_size: int = 10_000, linger: float = 0.25
) -> AsyncIterator[Store]:
    """Open (creating or migrating) the database and run its writer until the block ends;
    on the way out everything submitted is committed before the database is closed."""
    try:
        _create_private(path)
        db = await aiosqlite.connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        await prepare(db, path)
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


def _parts(items: Sequence[Judgement | Writes]) -> Iterator[Sequence[Judgement | Writes]]:
    """``items`` cut after each one that forgets an environment: its rows go after what
    came before it and before what comes after (an agent that came straight back)."""
    start = 0
    for end, item in enumerate(items, 1):
        if isinstance(item, Writes) and item.forgotten:
            yield items[start:end]
            start = end
    if start < len(items):
        yield items[start:]


def _is_urgent(item: Judgement | Writes) -> bool:
    if isinstance(item, Writes):
        return item.urgent
    return bool(item.views or item.alerts or item.transitions)
