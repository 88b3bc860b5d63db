"""The controller's database: batched writes, restore after restart, schema versions."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.key_rotation import AgentTrust, KeyRotation
from edgeplane.controller.core.presence import EnvRecord, Judgement, Transition
from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.schema import SCHEMA_VERSION
from edgeplane.controller.daemon.store import open_store
from edgeplane.controller.errors import StoreError


def record(env: str, status: str = "online", seq: int = 0, **fields: object) -> EnvRecord:
    base = EnvRecord(env, status, since=100.0, reason="heartbeat", last_seen=100.0 + seq,  # type: ignore[arg-type]
                     bdseq=1, seq=seq, boot="b", interval=10.0)  # fmt: skip
    for name, value in fields.items():
        setattr(base, name, value)
    return base


def heartbeat(env: str, seq: int) -> Judgement:
    return Judgement(records=[record(env, seq=seq)])


async def test_everything_submitted_is_committed_and_rows_coalesce(tmp_path: Path) -> None:
    db = tmp_path / "state" / "controller.db"
    async with open_store(db) as store:
        numbers = [await store.submit(heartbeat(f"env-{n % 10}", n)) for n in range(500)]
        await store.wait_committed(numbers[-1])
        assert store.committed >= 500
        # many judgements, few transactions: the writer takes what is queued at once
        assert store.batches < 500
        envs = await store.envs()
    assert [r.env for r in envs] == [f"env-{n}" for n in range(10)]
    assert envs[3].seq == 493  # the last state of each environment wins
    assert envs[3].last_seen == 593.0


async def test_closing_commits_what_is_still_queued(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    transition = Transition("a", "online", "offline", "shutdown", 5.0, False)
    async with open_store(db) as store:
        for n in range(100):
            await store.submit(heartbeat("a", n))
        await store.submit(Judgement(records=[record("a", "offline")], transitions=[transition]))
    async with open_store(db) as store:
        assert await store.transitions() == [transition]
        envs = await store.envs()
    assert [(r.env, r.status) for r in envs] == [("a", "offline")]


async def test_restart_restores_records_transitions_and_alerts(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    went = Transition("a", "online", "offline", "heartbeat-timeout", 50.0)
    came = Transition("a", "offline", "online", "heartbeat", 60.0, during_downtime=True)
    first = Transition("b", "unknown", "online", "heartbeat", 70.0)
    edge = AlertEdge("a", "flapping", "raised", 60.0, "6 transitions in 600 s")
    async with open_store(db) as store:
        await store.submit(
            Judgement(
                records=[record("a", flapping=True, conflict=True), record("b")],
                transitions=[went, came, first],
                alerts=[edge],
            )
        )
    async with open_store(db) as store:
        records, recent = await store.load(transitions_since=55.0)
        assert await store.alerts("a") == [edge]
        assert await store.transitions("a") == [went, came]
    assert records == [record("a", flapping=True, conflict=True), record("b")]
    assert recent == {"a": [60.0]}  # only online/offline changes, inside the window


async def test_a_full_queue_makes_submit_wait(tmp_path: Path) -> None:
    """While the writer lingers over plain heartbeats, a queue of 2 takes two submits
    besides the one the writer holds; every other submit waits until there is room."""
    async with open_store(tmp_path / "c.db", queue_size=2, linger=30.0) as store:
        submits = [asyncio.create_task(store.submit(heartbeat("a", n))) for n in range(20)]
        returned, waiting = await asyncio.wait(submits, timeout=0.5)
        assert (len(returned), len(waiting)) == (3, 17)
        store._linger = 0.0  # from now on the writer takes what is queued at once
        await store.flush()  # ends the wait of the writer's first batch
        numbers = await asyncio.gather(*submits)
        await store.flush()
        assert store.committed == 20
    assert sorted(numbers) == list(range(1, 21))


async def test_new_database_gets_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with open_store(db):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"envs", "transitions", "alerts", "transitions_by_time"} <= indexes


async def test_an_older_schema_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        await store.submit(heartbeat("kept", 1))
    with sqlite3.connect(db) as conn:  # back to version 1
        conn.execute("DROP INDEX transitions_by_time")
        conn.execute("DROP INDEX alerts_by_env")
        tables = ("records", "inventory", "deployments", "oplog", "credentials")  # 3, 4
        for table in (
            *tables,
            "key_rotation",
            "key_agents",
            "commands",
            "rollouts",
            "rollout_targets",
            "incident_steps",
            "incidents",
        ):  # 5, 8, 9, incidents
            conn.execute(f"DROP TABLE {table}")
        for column in ("missed_pct", "reconnects_1h"):  # the link figures' migration
            conn.execute(f"ALTER TABLE envs DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 1")
    async with open_store(db) as store:
        assert [r.env for r in await store.envs()] == ["kept"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_key_rotation_is_kept_and_a_new_one_forgets_the_agents_of_the_last(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    first = KeyRotation("old", "new", "TkVX", "finished", 1.0, 2.0)
    second = KeyRotation("new", "newer", "TkVXRVI=", "rolling", 3.0)
    async with open_store(db) as store:
        await store.submit(Writes(key_rotation=[first], key_agents=[AgentTrust("a", "done")]))
        await store.flush()
        assert await store.key_rotation() == (first, [AgentTrust("a", "done")])
        await store.submit(Writes(key_rotation=[second], key_agents=[AgentTrust("b", "trust")]))
    async with open_store(db) as store:
        assert await store.key_rotation() == (second, [AgentTrust("b", "trust")])


async def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this controller"):
        async with open_store(db):
            pass


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"c\.db"):
        async with open_store(db):
            pass


async def test_heartbeats_gather_but_a_transition_is_committed_at_once(tmp_path: Path) -> None:
    async with open_store(tmp_path / "c.db", linger=30.0) as store:
        await store.submit(heartbeat("a", 1))
        await store.submit(heartbeat("a", 2))
        for _ in range(20):  # let the writer take them and start waiting
            await asyncio.sleep(0)
        assert store.committed == 0  # plain heartbeats wait for company
        went = Transition("a", "online", "offline", "shutdown", 5.0)
        number = await store.submit(Judgement(records=[record("a", "offline")], transitions=[went]))
        await asyncio.wait_for(store.wait_committed(number), 5.0)
        assert store.batches == 1
        assert await store.transitions("a") == [went]


async def test_a_new_database_is_its_owners_alone(tmp_path: Path) -> None:
    db = tmp_path / "new" / "state" / "controller.db"
    async with open_store(db) as store:
        await store.flush()
        files = sorted(db.parent.iterdir())  # the database and SQLite's -wal and -shm
        assert [p.name for p in files][:1] == ["controller.db"]
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
