"""Retention: the pure rule, and pruning on a real SQLite file through the store (what is
kept: open deployments' events, each stream's newest event, the flap window)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.incidents import Incident, IncidentStepRecord
from edgeplane.controller.core.oplog import SeenEvents
from edgeplane.controller.core.presence import EnvRecord, Judgement, Transition
from edgeplane.controller.core.records import LogEntry, Writes
from edgeplane.controller.core.retention import PruneStep, Retention, parse_age
from edgeplane.controller.daemon.retention import BATCH, Pruner
from edgeplane.controller.daemon.settings import load_settings
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.messages import CommandRejected, Running
from edgeplane.shared.rpc import DeploymentState
from edgeplane.shared.workflow import Step, Workflow

DAY = 86_400.0
NOW = 100 * DAY


# --- the pure rule ------------------------------------------------------------------------
def test_ages_parse_with_units_and_off() -> None:
    assert parse_age("30d") == 30 * DAY
    assert parse_age("12h") == 12 * 3600
    assert parse_age("90m") == 90 * 60
    assert parse_age("45s") == parse_age("45") == 45
    assert parse_age("2w") == 14 * DAY
    assert parse_age("1.5h") == 5400
    assert parse_age("off") is None
    assert parse_age("0") is None
    for bad in ("", "-1d", "30 days", "d", "1y", "inf"):
        with pytest.raises(ValueError, match="duration"):
            parse_age(bad)


def test_retention_settings_validated_with_off_and_zero() -> None:
    settings = load_settings({}, environ={})
    assert (settings.retention, settings.retention_per_env) == (30 * DAY, 10_000)
    settings = load_settings({"retention": "off", "retention_per_env": "0"}, environ={})
    assert (settings.retention, settings.retention_per_env) == (None, None)
    settings = load_settings({}, environ={"EDGEPLANE_RETENTION": "7d",
                                          "EDGEPLANE_RETENTION_PER_ENV": "off"})  # fmt: skip
    assert (settings.retention, settings.retention_per_env) == (7 * DAY, None)
    with pytest.raises(SettingsError, match="--retention:"):
        load_settings({"retention": "soon"}, environ={})
    with pytest.raises(SettingsError, match="--retention-per-env"):
        load_settings({"retention_per_env": "-5"}, environ={})


def test_the_plan_has_an_age_step_per_table_and_a_count_step_per_env_over() -> None:
    retention = Retention(max_age=10 * DAY, per_env=100)
    counts = {"oplog": {"b": 101, "a": 500, "c": 100}}
    steps = retention.plan(NOW, counts, ["oplog", "alerts"])
    assert steps == [
        PruneStep("oplog", before=NOW - 10 * DAY),
        PruneStep("oplog", env="a", keep_newest=100),
        PruneStep("oplog", env="b", keep_newest=100),
        PruneStep("alerts", before=NOW - 10 * DAY),
    ]
    assert Retention(None, 100).plan(NOW, {}, ["oplog"]) == []
    assert Retention(5.0, None).plan(NOW, counts, ["oplog"]) == [PruneStep("oplog", before=NOW - 5)]
    assert not Retention(None, None).enabled
    assert Retention(protect=600).recent(NOW) == NOW - 600


# --- the store, on a real file ------------------------------------------------------------
def rejected(env: str, seq: int, src: str = "agent") -> CommandRejected:
    return CommandRejected(env=env, seq=seq, src=src, reason="bad command payload")


async def log_events(store: Store, entries: list[LogEntry]) -> None:
    await store.wait_committed(await store.submit(Writes(events=entries, urgent=True)))


FLOW = Workflow(name="svc", version="1.0", steps=[Step(name="s", run=["x"])])


async def add_deployment(store: Store, dep: str, env: str, state: DeploymentState) -> None:
    deployment = Deployment(
        id=dep, env=env, workflow=FLOW, state=state, created=1.0, updated=1.0, cmd=f"c-{dep}"
    )
    writes = Writes(deployments=[deployment], urgent=True)
    await store.wait_committed(await store.submit(writes))


def oplog(db: Path, env: str) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute(
            "SELECT src, seq, dep FROM oplog WHERE env = ? ORDER BY id", (env,)
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in found]


async def test_a_flood_of_rejected_events_is_cut_to_the_newest_per_env(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        flood = [LogEntry(rejected("noisy", seq), NOW - 60 + seq / 1000) for seq in range(5000)]
        await log_events(store, flood)
        await log_events(store, [LogEntry(rejected("quiet", seq), NOW) for seq in range(10)])
        pruner = Pruner(store, Retention(max_age=30 * DAY, per_env=300), ManualClock(NOW))
        pruned = await pruner.prune_once()
        heads = await store.stream_heads()
    assert pruned["oplog"] == 4700
    assert [seq for _, seq, _ in oplog(db, "noisy")] == list(range(4700, 5000))  # the newest
    assert len(oplog(db, "quiet")) == 10  # nothing else lost
    assert sorted(heads) == [("noisy", "agent", 4999), ("quiet", "agent", 9)]


async def test_age_pruning_keeps_open_deployments_stream_heads_and_the_flap_window(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    old = NOW - 40 * DAY
    async with open_store(db) as store:
        await add_deployment(store, "d-open", "e1", "running")
        await add_deployment(store, "d-done", "e1", "succeeded")
        entries = [
            LogEntry(Running(env="e1", seq=1, src="agent", dep="d-open"), old),
            LogEntry(Running(env="e1", seq=2, src="agent", dep="d-done"), old),
            LogEntry(rejected("e1", 3), old),
            LogEntry(rejected("e1", 4), old),  # the head of e1's agent stream
            LogEntry(rejected("e1", 7, src="controller"), old),  # the controller's head
            LogEntry(rejected("e2", 1), NOW - DAY),  # young
        ]
        await log_events(store, entries)
        transitions = [Transition("e1", "online", "offline", "will", at) for at in
                       (old, NOW - 300, NOW - 10)]  # fmt: skip
        alerts = [AlertEdge("e1", "flapping", "raised", old, ""),
                  AlertEdge("e1", "flapping", "cleared", NOW - 5, "")]  # fmt: skip
        judged = Judgement(transitions=transitions, alerts=alerts)
        await store.wait_committed(await store.submit(judged))
        before_restart = (await store.open_deployments(), await store.stream_heads())
        retention = Retention(max_age=30 * DAY, per_env=None, protect=600)
        pruned = await Pruner(store, retention, ManualClock(NOW)).prune_once()
        assert pruned == {"oplog": 2, "transitions": 1, "alerts": 1, "incidents": 0}
        kept_transitions = [t.at for t in await store.transitions("e1")]
        kept_alerts = [a.state for a in await store.alerts("e1")]
    assert oplog(db, "e1") == [("agent", 1, "d-open"), ("agent", 4, ""), ("controller", 7, "")]
    assert len(oplog(db, "e2")) == 1
    assert kept_transitions == [NOW - 300, NOW - 10]
    assert kept_alerts == ["cleared"]
    # a restart finds the same state: open deployments, dedupe heads, the flap window
    async with open_store(db) as store:
        assert (await store.open_deployments(), await store.stream_heads()) == before_restart
        _, recent = await store.load(transitions_since=NOW - 600)
        assert recent == {"e1": [NOW - 300, NOW - 10]}
        assert await store.last_seq("controller") == 7
        seen = SeenEvents(await store.stream_heads())
    assert not seen.first_time("e1", "agent", 3)  # pruned, and still never taken again
    assert not seen.first_time("e1", "agent", 4)
    assert seen.first_time("e1", "agent", 5)


async def test_resolved_incidents_go_with_their_timelines_and_open_ones_stay(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    old = NOW - 40 * DAY
    steps = (IncidentStepRecord("opened", old), IncidentStepRecord("resolved", old + 60))
    incidents = [
        Incident("i-old", "e1", "offline", "critical", "resolved", old, old + 60, "", 1, steps),
        Incident("i-open", "e1", "disk-pressure", "warning", "open", old, old, "", 1, steps[:1]),
        Incident("i-new", "e1", "offline", "critical", "resolved", NOW - DAY, NOW - DAY, ""),
    ]
    async with open_store(db) as store:
        await store.wait_committed(await store.submit(Writes(incidents=incidents)))
        alerts = [AlertEdge("e1", "disk-pressure", "raised", old, "disk 97 %"),
                  AlertEdge("e1", "flapping", "raised", old, ""),
                  AlertEdge("e1", "flapping", "cleared", old + 1, "")]  # fmt: skip
        await store.wait_committed(await store.submit(Judgement(alerts=alerts)))
        retention = Retention(max_age=30 * DAY, per_env=None, protect=600)
        pruned = await Pruner(store, retention, ManualClock(NOW)).prune_once()
        assert pruned == {"oplog": 0, "transitions": 0, "alerts": 1, "incidents": 1}
        assert [i.id for i in await store.open_incidents()] == ["i-open"]
        assert await store.incident("i-old") is None
        assert await store.incident("i-new") is not None
        # the raised disk-pressure edge is the latest of its kind: the episode is restored
        kept = [(a.kind, a.state) for a in await store.alerts("e1")]
    assert sorted(kept) == [("disk-pressure", "raised"), ("flapping", "cleared")]
    with sqlite3.connect(db) as conn:
        left = conn.execute("SELECT DISTINCT incident FROM incident_steps ORDER BY 1").fetchall()
    assert left == [("i-open",)]


async def test_pruning_goes_in_bounded_batches_between_the_writers_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.db"
    async with open_store(db) as store:
        old = [LogEntry(rejected("e1", seq), NOW - 40 * DAY) for seq in range(3 * BATCH + 10)]
        await log_events(store, [*old, LogEntry(rejected("e1", 10**6), NOW)])
        sizes: list[int] = []
        delete_batch = store.delete_batch

        async def counted(sql: str, params: Mapping[str, Any]) -> int:
            sizes.append(await delete_batch(sql, params))
            return sizes[-1]

        monkeypatch.setattr(store, "delete_batch", counted)
        pruner = Pruner(store, Retention(max_age=30 * DAY, per_env=None), ManualClock(NOW))

        async def keep_writing() -> int:
            written = 0
            for n in range(200):
                record = EnvRecord(f"hb-{n % 5}", "online", NOW, "heartbeat", NOW, 1, n, "b", 10.0)
                await store.submit(Judgement(records=[record]))
                written += 1
                await asyncio.sleep(0)
            await store.flush()
            return written

        pruned, written = await asyncio.gather(pruner.prune_once(), keep_writing())
    assert pruned["oplog"] == 3 * BATCH + 10
    assert written == 200
    assert max(sizes) == BATCH  # bounded: each DELETE a transaction of its own
    assert sum(sizes) == 3 * BATCH + 10
    assert oplog(db, "e1") == [("agent", 10**6, "")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM envs").fetchone()[0] == 5


def test_the_settings_file_takes_the_webhook_and_retention(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text(
        'notify_url = "https://hooks.example.com/edgeplane"\nnotify_tries = 3\n'
        'retention = "7d"\nretention_per_env = 0\n'
    )
    settings = load_settings({"config": str(config)}, environ={})
    assert settings.notify_url == "https://hooks.example.com/edgeplane"
    assert settings.notify_tries == 3
    assert (settings.retention, settings.retention_per_env) == (7 * DAY, None)
    config.write_text("retention = 3600\n")  # a TOML number: seconds
    assert load_settings({"config": str(config)}, environ={}).retention == 3600
