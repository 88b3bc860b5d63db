"""Schema version 11: the dry run a deployment waits for (``after_dep``, deploy
--validate-first) and the one that validated it (``validation``); the latest dry runs a
restarted controller finds, so a critical workflow validated before the restart stays
validated, and a waiting deployment is released when its dry run passes."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import msgspec

from edgeplane.controller.core.deployments import PREFLIGHT_PASSED, Deployment
from edgeplane.controller.core.records import Writes
from edgeplane.controller.daemon.schema import MIGRATIONS, SCHEMA_VERSION
from edgeplane.controller.daemon.store import open_store
from edgeplane.shared.workflow import Step, Workflow

ENV = "edge-a"
FLOW = Workflow(name="interlock", version="2.0", steps=[Step(name="s", run=["x"])], critical=True)


def deployment(dep: str, **fields: object) -> Deployment:
    base = Deployment(
        id=dep, env=ENV, workflow=FLOW, state="sent", created=1.0, updated=1.0, cmd=f"c-{dep}"
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


async def test_a_version_10_database_gains_the_columns_with_empty_defaults(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    spec = msgspec.json.encode(FLOW).decode()
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:10]:
            conn.executescript(script)
        conn.execute(
            "INSERT INTO deployments (id, env, workflow, version, kind, spec, state, reason,"
            " created, updated, dry_run) VALUES ('d-old', ?, 'interlock', '2.0', 'job', ?,"
            " 'checked', ?, 1.0, 2.0, 1)",
            (ENV, spec, PREFLIGHT_PASSED),
        )
        conn.execute("PRAGMA user_version = 10")
    async with open_store(db) as store:
        old = await store.deployment("d-old")
        assert old is not None
        assert (old.after, old.validation) == ("", "")
        assert old.passed
        assert [d.id for d in await store.dry_runs()] == ["d-old"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 11


async def test_the_latest_dry_run_of_each_version_and_those_awaited_are_restored(
    tmp_path: Path,
) -> None:
    older = deployment("d-1", dry_run=True, state="checked", reason="preflight failed", updated=5.0)
    newer = deployment("d-2", dry_run=True, state="checked", reason=PREFLIGHT_PASSED, updated=9.0)
    other = deployment(
        "d-3", dry_run=True, state="rejected", reason="bad", updated=7.0,
        workflow=msgspec.structs.replace(FLOW, version="1.9"),
    )  # fmt: skip
    awaited = deployment("d-4", dry_run=True, state="checked", reason="x", updated=1.0)
    in_flight = deployment("d-5", dry_run=True, state="sent")
    waiting = deployment("d-6", state="queued", cmd="", after="d-4")
    validated = deployment("d-7", state="succeeded", validation="d-2")
    writes = Writes(deployments=[older, newer, other, awaited, in_flight, waiting, validated])
    async with open_store(tmp_path / "controller.db") as store:
        await store.wait_committed(await store.submit(writes))
        found = {d.id for d in await store.dry_runs()}
        assert found == {"d-2", "d-3", "d-4"}  # d-4 only because d-6 waits for it
        again = await store.deployment("d-6")
        assert again is not None
        assert again.waiting
        assert again.after == "d-4"
        assert [d.id for d in await store.open_deployments() if d.waiting] == ["d-6"]
        shown = await store.deployment("d-7")
        assert shown is not None
        assert shown.info().validation == "d-2"
