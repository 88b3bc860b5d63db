"""Schema version 8: what the deployment fold keeps (revivable deployments, what replaced
them, the last agent event folded in) and the operator commands; a controller restart
restores exactly what it had; the migration from version 7 folds again the deployments an
older controller left stopped that may have come back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.operations import CONTROLLER_SRC, Effects, Operations
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.daemon.schema import MIGRATIONS, SCHEMA_VERSION
from edgeplane.controller.daemon.store import Store, open_store
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Event,
    OnlineStatus,
    Preflight,
    Running,
    Started,
    StepStarted,
    Stopped,
)
from edgeplane.shared.rpc import DeployRequest, EnvCreate, EnvRestart
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Step, Workflow

ROOT = TopicRoot("t/edgeplane/v1")
ENV = "edge-a"
SERVICE = Workflow(
    name="camera", version="1.0", kind="service", steps=[Step(name="serve", run=["x"])]
)


async def restored(store: Store, clock: ManualClock, presence: Presence) -> Operations:
    """The operations as the service builds them from the store at its start."""
    return Operations(
        ROOT,
        clock,
        presence,
        command_ttl=120,
        records=await store.records(),
        inventories=await store.inventories(),
        deployments=await store.open_deployments(),
        issued=await store.issued_deployments(),
        commands=await store.open_commands(),
        seen=await store.stream_heads(),
        controller_seq=await store.last_seq(CONTROLLER_SRC),
    )


async def carried_out(store: Store, effects: Effects | None) -> None:
    assert effects is not None
    await store.wait_committed(await store.submit(effects.writes))


async def snapshot(store: Store, ops: Operations) -> Any:
    """Everything a user or the next event sees of the deployments."""
    await store.flush()
    listed = [d.info() for d in await store.deployments(ENV)]
    book = sorted(ops.book, key=lambda d: d.id)
    return msgspec.to_builtins([ops.env_info(ENV), listed]), book, ops.book.commands_of(ENV)


class Agent:
    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: type[Event], **fields: Any) -> Event:
        self.seq += 1
        return kind(env=ENV, seq=self.seq, src="a1f3", **fields)


async def test_a_restart_in_the_middle_of_env_restart_restores_the_same_state(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    clock = ManualClock(start=1000.0)
    presence = Presence(clock, FlapDetector(600, 6, 2), IdentityWatch(600, 300))
    presence.on_status(OnlineStatus(env=ENV, bdseq=1, seq=0, interval=10, boot="b"))
    agent = Agent()
    async with open_store(db) as store:
        ops = await restored(store, clock, presence)
        await carried_out(store, ops.create(EnvCreate(id=ENV, stage="dev", location="l",
                                                      purpose="p"))[1])  # fmt: skip
        info, effects = ops.deploy(DeployRequest(env=ENV, workflow=SERVICE))
        await carried_out(store, effects)
        ids = {"dep": info.id, "cmd": info.cmd}
        for event in (
            agent(Accepted, **ids, workflow="camera", version="1.0"),
            agent(Preflight, **ids, ok=True),
            agent(Started, **ids, workflow="camera", version="1.0"),
            agent(StepStarted, **ids, step="serve", index=0),
            agent(Running, **ids),
        ):
            await carried_out(store, ops.on_event(event))
        restart, effects = ops.restart(EnvRestart(id=ENV))
        await carried_out(store, effects)
        await carried_out(store, ops.on_event(agent(Stopped, **ids, reason="restart requested")))
        before = await snapshot(store, ops)
    assert before[0][0]["restarting"] == [info.id]
    assert [c["state"] for c in before[0][0]["commands"]] == ["pending"]

    async with open_store(db) as store:  # the controller again, on the same database
        ops = await restored(store, clock, presence)
        assert await snapshot(store, ops) == before
        await carried_out(store, ops.on_event(agent(Running, **ids)))
        ack = agent(Ack, cmd=restart["cmd"], op="restart", ok=True, detail="restarted: camera")
        await carried_out(store, ops.on_event(ack))
        after = await snapshot(store, ops)
    shown, listed = after[0]
    assert (shown["running"], shown["restarting"]) == ([info.id], [])
    assert [(c["op"], c["state"]) for c in shown["commands"]] == [("restart", "done")]
    assert [d["state"] for d in listed] == ["running"]

    async with open_store(db) as store:
        assert await snapshot(store, await restored(store, clock, presence)) == after


def make_v7(db: Path) -> None:
    """A version 7 database: a service that an older controller left ``stopped`` by a
    restart although its agent said ``running`` after it, and one stopped for good."""
    spec = msgspec.json.encode(SERVICE).decode()
    events: list[Event] = [
        Stopped(env=ENV, seq=1, src="s", dep="d-restarted", reason="restart requested"),
        Running(env=ENV, seq=2, src="s", dep="d-restarted"),
        Stopped(env=ENV, seq=3, src="s", dep="d-replaced", reason="replaced by d-x"),
    ]
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:7]:
            conn.executescript(script)
        conn.execute(
            "INSERT INTO records VALUES (?, 'default', 'dev', 'lab', 'test', '{}', 1.0, NULL)",
            (ENV,),
        )
        for dep, reason in (
            ("d-restarted", "restart requested"),
            ("d-replaced", "replaced by d-x"),
        ):
            conn.execute(
                "INSERT INTO deployments (id, env, workflow, version, kind, spec, state, reason,"
                " created, updated, cmd) VALUES (?, ?, 'camera', '1.0', 'service', ?, 'stopped',"
                " ?, 1.0, 2.0, ?)",
                (dep, ENV, spec, reason, f"c-{dep}"),
            )
        for event in events:
            body = msgspec.json.encode(event).decode()
            tag = type(event).__struct_config__.tag
            conn.execute(
                "INSERT INTO oplog (env, src, seq, type, dep, at, body)"
                " VALUES (?, 's', ?, ?, ?, ?, ?)",
                (ENV, event.seq, tag, event.dep, float(event.seq), body),
            )
        conn.execute("PRAGMA user_version = 7")


async def test_a_version_7_database_is_migrated_and_a_service_that_came_back_runs(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    make_v7(db)
    async with open_store(db) as store:
        [back] = await store.open_deployments()
        assert (back.id, back.state, back.last_seq) == ("d-restarted", "running", 2)
        assert (await store.deployment("d-replaced")).state == "stopped"  # type: ignore[union-attr]
        assert await store.open_commands() == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    async with open_store(db) as store:  # folded once: stored as it is now
        assert [(d.id, d.state) for d in await store.open_deployments()] == [
            ("d-restarted", "running")
        ]
        assert (await store.deployment("d-restarted")).last_seq == 2  # type: ignore[union-attr]
