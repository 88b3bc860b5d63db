"""The incidents' rows (the incidents migration): stored with their timeline, read back by
filter, restored when open, and deleted with a forgotten id's history."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from edgeplane.controller.core.incidents import IncidentBook
from edgeplane.controller.core.presence import Transition
from edgeplane.controller.core.records import Forgotten, Writes
from edgeplane.controller.daemon.store import open_store
from edgeplane.shared.clock import ManualClock


def numbered_book() -> IncidentBook:
    numbers = itertools.count(1)
    return IncidentBook(ManualClock(100.0), new_id=lambda: f"i-{next(numbers):010x}")


def offline(env: str, at: float) -> Transition:
    return Transition(env, "online", "offline", "connection-lost", at)


async def test_incidents_are_stored_with_their_timeline_and_read_back(tmp_path: Path) -> None:
    book = numbered_book()
    opened = book.on_transition(offline("edge-a", 10.0))[0].incident
    other = book.on_transition(offline("edge-b", 20.0))[0].incident
    acked = book.acknowledge(opened.id, "on it", "alice")
    assert acked is not None
    resolved = book.resolve(other.id, "fixed", "bob")
    assert resolved is not None
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        await store.submit(Writes(incidents=[opened, other, acked.incident, resolved.incident]))
        await store.flush()
        assert await store.incident(opened.id) == acked.incident
        assert await store.open_incidents() == [acked.incident]
        assert [i.id for i in await store.incidents()] == [other.id, opened.id]  # newest first
        assert await store.incidents(env="edge-b") == [resolved.incident]
        assert await store.incidents(kind="flapping") == []
        assert await store.incidents(since=101.0) == []
        assert await store.incident("i-nope") is None
    async with open_store(db) as store:  # and after a restart
        restored = IncidentBook(ManualClock(), await store.open_incidents())
    assert restored.open_count("edge-a") == 1
    assert restored.open_count("edge-b") == 0


async def test_a_forgotten_ids_incidents_go_with_its_history(tmp_path: Path) -> None:
    book = numbered_book()
    gone = book.on_transition(offline("ghost", 1.0))[0].incident
    kept = book.on_transition(offline("edge-a", 2.0))[0].incident
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        await store.submit(Writes(incidents=[gone, kept]))
        await store.submit(Writes(forgotten=[Forgotten("ghost", history=True)]))
        await store.flush()
        assert [i.id for i in await store.incidents()] == [kept.id]
    with sqlite3.connect(db) as conn:
        steps = conn.execute("SELECT incident FROM incident_steps").fetchall()
    assert steps == [(kept.id,)]
