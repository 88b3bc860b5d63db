"""The controller database's schema: versioned with ``PRAGMA user_version``.

:data:`MIGRATIONS` takes a database from any older version to the current one
(:data:`SCHEMA_VERSION`), each in one transaction; a newer one is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import aiosqlite

from edgeplane.controller.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "prepare"]

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
    # version 4: each environment's broker credential generation and rotation under way
    # (the new password only as sealed to the agent's box key, never in clear)
    """
    CREATE TABLE credentials (
        env TEXT PRIMARY KEY,
        generation INTEGER NOT NULL DEFAULT 0,
        since REAL NOT NULL,
        box_key TEXT NOT NULL DEFAULT '',
        state TEXT,
        target INTEGER NOT NULL DEFAULT 0,
        started REAL,
        cause TEXT NOT NULL DEFAULT '',
        sealed TEXT NOT NULL DEFAULT '',
        sealed_to TEXT NOT NULL DEFAULT '',
        sent_bdseq INTEGER
    );
    """,
    # version 5: the latest rotation of the command key (one row) and each agent's part in
    # it (only key ids and the public key: the keys themselves are files)
    """
    CREATE TABLE key_rotation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        old TEXT NOT NULL,
        new TEXT NOT NULL,
        new_key TEXT NOT NULL,
        state TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL
    );
    CREATE TABLE key_agents (
        env TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        cmd TEXT NOT NULL DEFAULT '',
        sent_bdseq INTEGER,
        acked REAL
    );
    """,
    # version 6: the box key each connection reported beside the pinned one (box_key, the
    # first reported: rotation seals to it only; see core/rotation.py)
    """
    ALTER TABLE credentials ADD COLUMN reported_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE credentials ADD COLUMN reported_bdseq INTEGER;
    """,
    # version 7: the proof of possession of the pending new credential (a one-time value,
    # not the password: only the online reporting it ends the rotation; see core/rotation.py)
    """
    ALTER TABLE credentials ADD COLUMN proof TEXT NOT NULL DEFAULT '';
    """,
    # version 8: what the deployment fold keeps (core/deployments.py): whether a stopped
    # deployment may yet come back, what replaced it, the last agent event folded in; and
    # the operator commands sent to environments with what the agents answered. A stopped
    # service of an environment not retired, stopped by a restart or an agent stop, may come
    # back: it is revivable, and its logged events are folded again at the next start.
    """
    ALTER TABLE deployments ADD COLUMN revivable INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN replaced_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE deployments ADD COLUMN last_src TEXT NOT NULL DEFAULT '';
    ALTER TABLE deployments ADD COLUMN last_seq INTEGER NOT NULL DEFAULT -1;
    UPDATE deployments SET revivable = 1, last_seq = -2
        WHERE state = 'stopped' AND reason IN ('restart requested', 'agent stopping')
        AND env NOT IN (SELECT id FROM records WHERE retired IS NOT NULL);
    CREATE INDEX deployments_open ON deployments (revivable, state);
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        env TEXT NOT NULL,
        op TEXT NOT NULL,
        sent REAL NOT NULL,
        expires REAL NOT NULL,
        workflow TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        answered REAL
    );
    CREATE INDEX commands_by_env ON commands (env, state, answered);
    """,
    # version 9: rollouts (core/rollout.py) and their targets, one per rollout and
    # environment (a target's one deployment is in its row, written with that deployment)
    """
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX rollouts_by_state ON rollouts (state);
    CREATE TABLE rollout_targets (
        rollout TEXT NOT NULL,
        env TEXT NOT NULL,
        wave INTEGER NOT NULL,
        state TEXT NOT NULL,
        dep TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        PRIMARY KEY (rollout, env)
    );
    """,
    # version 10: the gate refusal a deployment was forced past, and the operator's reason
    # (deploy --force --reason)
    """
    ALTER TABLE deployments ADD COLUMN forced TEXT NOT NULL DEFAULT '';
    """,
    # version 11: critical workflows (core/critical.py): the dry run a deployment waits for
    # (deploy --validate-first) and the one that validated it; the latest dry runs of each
    # environment and workflow found at the start
    """
    ALTER TABLE deployments ADD COLUMN after_dep TEXT NOT NULL DEFAULT '';
    ALTER TABLE deployments ADD COLUMN validation TEXT NOT NULL DEFAULT '';
    CREATE INDEX deployments_dry_runs ON deployments (env, workflow, version, updated)
        WHERE dry_run = 1;
    CREATE INDEX deployments_waiting ON deployments (after_dep) WHERE after_dep != '';
    """,
    # version 12: whether a service's agent said it runs (not only that it started); the
    # services running before are taken as up
    """
    ALTER TABLE deployments ADD COLUMN up INTEGER NOT NULL DEFAULT 0;
    UPDATE deployments SET up = 1 WHERE kind = 'service' AND state = 'running';
    """,
    # version 13: the history tables found by time, for pruning by age
    """
    CREATE INDEX IF NOT EXISTS oplog_by_time ON oplog (at);
    CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (at);
    """,
    # version 14: the link figures last shown in each environment's
    # view (core/link_quality.py), so a restart re-publishes no view whose figures it kept
    """
    ALTER TABLE envs ADD COLUMN missed_pct REAL;
    ALTER TABLE envs ADD COLUMN reconnects_1h INTEGER;
    """,
    # version 15: the operations log's incidents: one per episode of a problem
    # of one environment, its latest state, and its timeline (controller/core/incidents.py)
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        env TEXT NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        opened REAL NOT NULL,
        updated REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        count INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX incidents_by_env ON incidents (env, opened);
    CREATE INDEX incidents_by_time ON incidents (opened);
    CREATE INDEX incidents_open ON incidents (state) WHERE state != 'resolved';
    CREATE TABLE incident_steps (
        incident TEXT NOT NULL,
        step INTEGER NOT NULL,
        state TEXT NOT NULL,
        at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        by TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (incident, step)
    );
    """,
    # version 16: an incident pruned (retention) or deleted takes its timeline with it
    """
    CREATE TRIGGER incident_gone AFTER DELETE ON incidents BEGIN
        DELETE FROM incident_steps WHERE incident = OLD.id;
    END;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


async def prepare(db: aiosqlite.Connection, path: Path) -> None:
    """WAL, the durability the controller needs, and the current schema."""
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
