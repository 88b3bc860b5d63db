"""Schema version 3: environment records, inventories, deployments and the operations log;
the migration from version 2, and the in-memory dedupe of event streams."""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from pathlib import Path

from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.oplog import WINDOW, SeenEvents
from edgeplane.controller.core.presence import EnvRecord, Judgement, Transition
from edgeplane.controller.core.records import Forgotten, LogEntry, ReportedInventory, Writes
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.daemon.schema import MIGRATIONS, SCHEMA_VERSION
from edgeplane.controller.daemon.store import open_store
from edgeplane.shared.messages import Accepted, Event, Platform, Succeeded
from edgeplane.shared.workflow import Step, Workflow

FLOW = Workflow(name="inspect", version="1.0", steps=[Step(name="s", run=["true"])])


def make_v2(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute(
            "INSERT INTO envs (env, status, since, reason, last_seen, bdseq, seq, boot,"
            " interval) VALUES ('old-env', 'online', 5.0, 'heartbeat', 6.0, 1, 2, 'b', 10.0)"
        )
        conn.execute(
            "INSERT INTO transitions (env, from_status, to_status, reason, at)"
            " VALUES ('old-env', 'unknown', 'online', 'heartbeat', 5.0)"
        )
        conn.execute("PRAGMA user_version = 2")


async def test_a_version_2_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    make_v2(db)
    async with open_store(db) as store:
        assert [(r.env, r.status, r.seq) for r in await store.envs()] == [("old-env", "online", 2)]
        assert len(await store.transitions("old-env")) == 1
        assert await store.records() == []
        assert await store.events() == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"records", "inventory", "deployments", "oplog"} <= tables


def deployment(dep: str, state: str = "sent", created: float = 10.0) -> Deployment:
    return Deployment(
        id=dep, env="edge-a", workflow=FLOW, state=state, created=created,  # type: ignore[arg-type]
        updated=created, cmd=f"c-{dep}", expires=99.0, dry_run=True, when_online=True,
    )  # fmt: skip


def accepted(seq: int, src: str = "s1", dep: str = "d-1") -> Event:
    return Accepted(env="edge-a", seq=seq, src=src, dep=dep, workflow="inspect", version="1")


async def test_rows_written_through_the_queue_are_read_back(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    record = Environment("edge-a", "acme", "prod", "plant", "vision", {"line": "4"}, 1.0)
    platform = Platform(os="linux", arch="x86_64", gpu=True)
    async with open_store(db) as store:
        writes = Writes(
            records=[record],
            inventory=[ReportedInventory("edge-a", {"detector": ["2.1"]}, platform, 3.0)],
            deployments=[deployment("d-1"), deployment("d-2", "succeeded", 11.0)],
            urgent=True,
        )
        await store.wait_committed(await store.submit(writes))
    async with open_store(db) as store:
        assert await store.records() == [record]
        inventories = await store.inventories()
        assert [(i.env, dict(i.models), i.platform) for i in inventories] == [
            ("edge-a", {"detector": ["2.1"]}, platform)
        ]
        assert await store.active_deployments() == [deployment("d-1")]
        assert [d.id for d in await store.deployments("edge-a")] == ["d-2", "d-1"]  # newest first
        assert await store.deployment("d-2") == deployment("d-2", "succeeded", 11.0)
        assert await store.deployment("nope") is None


async def test_an_event_received_twice_is_stored_once(tmp_path: Path) -> None:
    async with open_store(tmp_path / "c.db") as store:
        first = Writes(events=[LogEntry(accepted(1), 1.0), LogEntry(accepted(2), 2.0)])
        again = Writes(events=[LogEntry(accepted(2), 3.0), LogEntry(accepted(1, src="s2"), 4.0)])
        await store.submit(first)
        await store.submit(again)
        await store.flush()
        logged = await store.events()
        assert [(e.event.src, e.event.seq, e.at) for e in logged] == [
            ("s1", 1, 1.0), ("s1", 2, 2.0), ("s2", 1, 4.0),
        ]  # fmt: skip
        assert [e.id for e in logged] == sorted(e.id for e in logged)
        assert [e.event.seq for e in await store.events(after=logged[0].id, limit=1)] == [2]
        assert await store.events(env="edge-b") == []
        assert len(await store.events(dep="d-1")) == 3


async def test_restart_state_for_the_dedupe_and_the_controllers_own_stream(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path / "c.db") as store:
        entries = [LogEntry(accepted(seq), 1.0) for seq in range(1, 11)]
        own = Succeeded(env="edge-a", seq=7, src="controller")
        await store.submit(Writes(events=[*entries, LogEntry(own, 2.0)]))
        await store.flush()
        heads = await store.stream_heads()
        assert await store.last_seq("controller") == 7
        assert await store.last_seq("nobody") == 0
    assert sorted(heads) == [("edge-a", "controller", 7), ("edge-a", "s1", 10)]
    # a backlog re-sent after the restart: what is stored is a duplicate, the rest is new
    seen = SeenEvents(heads)
    assert [seen.first_time("edge-a", "s1", seq) for seq in (9, 10, 11, 3)] == [
        False, False, True, False,
    ]  # fmt: skip
    assert seen.duplicates == 3


def test_seen_events_takes_gaps_filled_late_but_each_once() -> None:
    seen = SeenEvents()
    assert [seen.first_time("e", "s", n) for n in (1, 2, 4, 3, 4, 2)] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert seen.first_time("e", "other", 1)
    assert seen.first_time("f", "s", 1)
    assert seen.duplicates == 2
    far = WINDOW + 10
    assert seen.first_time("e", "s", far)
    assert not seen.first_time("e", "s", 5)  # below the window: long stored


async def test_a_forgotten_ghost_leaves_no_row_and_what_came_after_it_stays(
    tmp_path: Path,
) -> None:
    def seen(env: str, status: str) -> Judgement:
        record = EnvRecord(env, status, since=5.0, bdseq=1)  # type: ignore[arg-type]
        transition = Transition(env, "unknown", status, "heartbeat", 5.0)  # type: ignore[arg-type]
        return Judgement(records=[record], transitions=[transition])

    def logged(env: str, seq: int) -> Writes:
        event = Accepted(env=env, seq=seq, src="s", dep="d", workflow="w", version="1")
        return Writes(events=[LogEntry(event, 1.0)])

    db = tmp_path / "c.db"
    async with open_store(db, linger=5.0) as store:
        for item in (seen("ghost", "offline"), logged("ghost", 1), seen("retired-a", "offline")):
            await store.submit(item)
        await store.submit(Writes(inventory=[ReportedInventory("ghost", {}, None, 1.0)]))
        # one batch: the forgets, then the ghost's agent straight back
        await store.submit(Writes(forgotten=[Forgotten("ghost", history=True)]))
        await store.submit(Writes(forgotten=[Forgotten("retired-a", history=False)]))
        await store.submit(seen("ghost", "online"))
        await store.flush()
        assert store.batches == 1
    async with open_store(db) as store:
        assert [(r.env, r.status) for r in await store.envs()] == [("ghost", "online")]
        assert [t.to_status for t in await store.transitions("ghost")] == ["online"]
        assert await store.events(env="ghost") == []
        assert await store.inventories() == []
        assert len(await store.transitions("retired-a")) == 1  # a retired one's history stays


def test_seen_events_agrees_with_remembering_every_number() -> None:
    """Re-sent, reordered and far-behind numbers, against a model that keeps them all."""
    rng = random.Random(9)
    seen, every, high = SeenEvents([("e", "s", 50)]), set(range(51)), 50
    for _ in range(20_000):
        seq = max(1, high + rng.choice((1, 1, 2, 40, -1, -3, -100, -WINDOW, -WINDOW - 5)))
        new = seq not in every and seq > high - WINDOW
        assert seen.first_time("e", "s", seq) is new, (seq, high)
        every.add(seq)
        high = max(high, seq)


def test_seen_events_stay_small_however_many_events_a_stream_brought() -> None:
    """What the dedupe holds for 500 agents' streams after 120 events each (a backlog
    worked off): a few hundred bytes a stream, not a record of every number."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        seen = SeenEvents()
        for seq in range(1, 121):
            for env in range(500):
                seen.first_time(f"edge-{env}", "outbox", seq)
        held = sum(
            stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        )
    finally:
        tracemalloc.stop()
    assert held < 500 * 600, f"{held / 500:.0f} bytes a stream"
