"""Rollouts in the controller's database: a rollout and its targets as written, read
back; a target is one row per rollout and environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeplane.controller.core.records import Writes
from edgeplane.controller.core.rollout import RolloutSettings, new_run
from edgeplane.controller.daemon.store import open_store
from edgeplane.shared.workflow import Step, Workflow

WORKFLOW = Workflow(name="app", version="2.0.0", steps=[Step(name="s", run=["true"])])


async def test_a_rollout_and_its_targets_are_read_back_as_written(tmp_path: Path) -> None:
    run = new_run(
        "r-1", WORKFLOW, {"ring": "a"}, RolloutSettings(waves=("1", "100%")), [["a"], ["b"]], 5.0
    )
    record, targets = run.changes()
    assert record is not None
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        await store.wait_committed(
            await store.submit(Writes(rollouts=[record], rollout_targets=targets))
        )
        sent = dataclasses.replace(targets[0], state="sent", dep="d-1")
        await store.wait_committed(await store.submit(Writes(rollout_targets=[sent])))
    async with open_store(db) as store:  # a restarted controller
        (stored,) = await store.rollouts()
        assert stored == record
        assert stored.workflow == WORKFLOW
        again = await store.rollout_targets("r-1")
    assert [(t.env, t.state, t.dep) for t in again] == [("a", "sent", "d-1"), ("b", "pending", "")]


async def test_the_previous_deployment_is_the_newest_that_ran(tmp_path: Path) -> None:
    from edgeplane.controller.core.deployments import Deployment

    def dep(dep_id: str, state: str, created: float, dry_run: bool = False) -> Deployment:
        return Deployment(dep_id, "a", WORKFLOW, state, created, created, "c", dry_run=dry_run)  # type: ignore[arg-type]

    async with open_store(tmp_path / "c.db") as store:
        writes = Writes(
            deployments=[
                dep("d-old", "succeeded", 1.0),
                dep("d-ran", "running", 2.0),
                dep("d-bad", "failed", 3.0),
                dep("d-dry", "checked", 4.0, dry_run=True),
            ]
        )
        await store.wait_committed(await store.submit(writes))
        assert await store.previous_deployment("a", "app", 10.0) == "d-ran"
        assert await store.previous_deployment("a", "app", 1.5) == "d-old"
        assert await store.previous_deployment("a", "other", 10.0) == ""
