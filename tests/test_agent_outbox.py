"""The agent's event outbox: durable, ordered, deduplicating; and, end to end, events that
survive a broker outage and a ``kill -9`` of the agent, delivered once each."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.errors import EventInvalid, OutboxError
from edgeplane.edge_agent.outbox import SEEN_TTL, Outbox
from edgeplane.edge_agent.session import MessageIn
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import EVENT
from edgeplane.shared.messages import Ack, CommandRejected, Deploy, Pong
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import start_agent, wait_online
from tests.support.command_key import signed
from tests.support.execution import py, workflow
from tests.support.logs import capture_logs
from tests.support.probe import open_probe
from tests.support.procs import Proc
from tests.support.scripted_agent import CMD, ROOT, STATUS, make_agent
from tests.support.scripted_agent import ENV as LOOP_ENV

ENV = "dev-lab-outbox"
EVENTS = ROOT.events(LOOP_ENV)


def test_events_are_numbered_stored_and_pending_in_order_until_acknowledged(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    wakes: list[int] = []
    outbox = Outbox(tmp_path, ENV, clock=clock, on_emit=lambda: wakes.append(1))
    first = outbox.emit(Pong, cmd="c1")
    second = outbox.emit(Ack, cmd="c2", op="update", ok=True)
    assert (first.seq, second.seq) == (1, 2)
    assert first.env == ENV
    assert first.src == second.src != ""
    assert first.ts == clock.time()
    assert len(wakes) == 2, "every event wakes the loop"
    pending = outbox.pending()
    assert [seq for seq, _ in pending] == [1, 2]
    assert EVENT.decode(pending[1][1]) == second
    outbox.acked(1)
    assert [seq for seq, _ in outbox.pending()] == [2]
    assert len(outbox) == 1
    assert outbox.pending(after=2) == []


def test_seq_and_src_survive_a_reopen_and_are_never_reused(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)
    for i in range(3):
        outbox.emit(Pong, cmd=f"c{i}")
    src = outbox.src
    for seq in (1, 2, 3):
        outbox.acked(seq)
    outbox.close()

    reopened = Outbox(tmp_path, ENV)
    assert reopened.src == src
    assert reopened.emit(Pong, cmd="after").seq == 4, "acknowledged seqs are not reused"
    assert [seq for seq, _ in reopened.pending()] == [4]


def test_a_fresh_state_dir_is_a_new_stream(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert Outbox(tmp_path / "a", ENV).src != Outbox(tmp_path / "b", ENV).src


def test_an_outbox_of_another_environment_is_refused_by_name(tmp_path: Path) -> None:
    Outbox(tmp_path, ENV).close()
    with pytest.raises(OutboxError, match="belongs to environment 'dev-lab-outbox'"):
        Outbox(tmp_path, "dev-other")


def test_a_corrupt_outbox_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"outbox\.db"):
        Outbox(tmp_path, ENV)


def test_an_event_the_controller_could_not_read_is_refused_not_stored(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)
    with pytest.raises(EventInvalid, match="reason"):
        outbox.emit(CommandRejected, reason="x" * 300)
    assert outbox.pending() == []
    assert outbox.emit(Pong).seq == 1, "the refused event took no seq"


def test_emit_is_safe_from_many_threads(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)

    def emit_many() -> None:
        for _ in range(50):
            outbox.emit(Pong)

    threads = [threading.Thread(target=emit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [seq for seq, _ in outbox.pending(limit=1000)]
    assert seqs == list(range(1, 201))
    assert [json.loads(p)["seq"] for _, p in outbox.pending(limit=1000)] == seqs


def test_over_the_cap_the_outbox_complains_loudly_and_drops_nothing(tmp_path: Path) -> None:
    clock = ManualClock()
    outbox = Outbox(tmp_path, ENV, clock=clock, cap=5)
    with capture_logs() as logs:
        for _ in range(20):
            outbox.emit(Pong)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1, "once a minute at most"
    assert "over its cap of 5" in errors[0]["event"]
    assert "nothing is dropped" in errors[0]["event"]
    assert len(outbox.pending()) == 20


def test_commands_are_remembered_across_a_reopen(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)
    assert not outbox.seen("cmd-1")
    outbox.remember("cmd-1")
    assert outbox.seen("cmd-1")
    outbox.close()
    assert Outbox(tmp_path, ENV).seen("cmd-1")


def test_remembered_commands_are_bounded_by_count_and_age(tmp_path: Path) -> None:
    clock = ManualClock()
    outbox = Outbox(tmp_path, ENV, clock=clock, seen_keep=150)
    outbox.remember("old")
    clock.advance(SEEN_TTL + 1)
    for i in range(300):
        outbox.remember(f"c{i}")
        clock.advance(0.001)
    assert not outbox.seen("old"), "older than the TTL"
    assert not outbox.seen("c0"), "beyond the newest 150"
    assert outbox.seen("c299")
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        (count,) = db.execute("SELECT count(*) FROM seen").fetchone()
    assert count < 300, "pruned every 100 commands"


def test_the_outbox_files_are_private(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)
    outbox.emit(Pong)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db")]
    assert {p.name for p in files} >= {"outbox.db", "outbox.db-wal"}
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in files)


# --- the agent's loop publishing from the outbox (scripted broker, manual clock) --------------


def test_backlog_goes_out_after_online_in_order_and_again_after_a_lost_connection(
    tmp_path: Path,
) -> None:
    before = Outbox(tmp_path, LOOP_ENV)
    for i in range(3):
        before.emit(Pong, cmd=f"before-{i}")
    before.close()
    agent, broker, _ = make_agent(tmp_path)
    broker.answer_publish = False  # no PUBACKs on the first connection
    broker.at(5, broker.drop)
    broker.at(5, lambda: setattr(broker, "answer_publish", True))
    broker.at(20, agent.request_stop)
    assert agent.run() == 0

    published = [
        (d["topic"], (d["payload"] or {}).get("status") or d["payload"]["cmd"])
        for _, a, d in broker.record
        if a == "publish"
    ]
    events = [(EVENTS, f"before-{i}") for i in range(3)]
    first_online = published.index((STATUS, "online"))
    assert published[first_online + 1 : first_online + 4] == events, "after online, in order"
    second_online = published.index((STATUS, "online"), first_online + 4)
    assert published[second_online + 1 : second_online + 4] == events, "again: not acknowledged"
    assert published.count(events[0]) == 2, "acknowledged the second time: not sent a third"
    assert Outbox(tmp_path, LOOP_ENV).pending() == [], "acknowledged events are forgotten"


def test_events_emitted_while_offline_wait_for_the_next_connection(tmp_path: Path) -> None:
    agent, broker, _ = make_agent(tmp_path)
    broker.refuse_connect = True
    ping = signed({"type": "ping", "id": "p1"}, LOOP_ENV)
    broker.at(3, lambda: broker.pending.append(MessageIn(CMD, ping, False)))
    broker.at(4, lambda: setattr(broker, "refuse_connect", False))
    broker.at(40, agent.request_stop)
    agent.run()
    pongs = [t for t, p in broker.published(EVENTS) if p["type"] == "pong"]
    onlines = [t for t, p in broker.published() if p["status"] == "online"]
    assert len(pongs) == 1
    assert pongs[0] >= onlines[0], "not before the online message"


# --- end to end: a real agent, a broker that goes away, a kill -9 ----------------------------


async def outbox_rows(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    return [json.loads(payload) for (payload,) in rows]


async def wait_outbox(state: Path, done: Callable[[list[dict[str, Any]]], bool]) -> None:
    """Poll the agent's outbox (read-only) until ``done`` says it holds what we wait for."""
    async with asyncio.timeout(20):
        while not done(await outbox_rows(state)):  # noqa: ASYNC110 - a file has no event
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_events_of_a_broker_outage_survive_kill_9_and_arrive_once_in_order(
    private_broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-outbox-e2e"
    status, events = root.status(env), root.events(env)
    state, gate = tmp_path / "state", tmp_path / "gate"
    steps = [
        py("wait", f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)")
    ]
    steps += [py(f"step-{i}", "print('done')") for i in range(3)]
    command = signed(Deploy(id="c-1", dep="d-1", workflow=workflow(*steps)), env)
    async with open_probe(private_broker.url, status, events) as probe:
        agent = await start_agent(procs, tmp_path, private_broker.url, root, env, state_dir=state)
        await wait_online(probe, status)
        await probe.publish(root.cmd(env), command)
        await probe.wait_json(events, type="step-started", index=0)
        await wait_outbox(state, lambda rows: rows == [])  # every PUBACK is in
        before = [json.loads(m.payload) for m in probe.on(events)]
    private_broker.stop()
    gate.touch()  # the steps go on while the broker is away
    await wait_outbox(state, lambda rows: any(r["type"] == "succeeded" for r in rows))
    await agent.kill()
    private_broker.start()
    async with open_probe(private_broker.url, events) as probe:
        await start_agent(
            procs, tmp_path, private_broker.url, root, env, state_dir=state, name="again"
        )
        await probe.wait_json(events, type="succeeded", cmd="c-1", timeout=30)
        after = [json.loads(m.payload) for m in probe.on(events)]
    await wait_outbox(state, lambda rows: rows == [])

    delivered = before + after
    seqs = [event["seq"] for event in delivered]
    assert seqs == list(range(1, len(seqs) + 1)), "in order, none lost, none twice"
    assert [event["type"] for event in delivered] == [
        "accepted",
        "preflight",
        "started",
        "step-started",
        *["step-finished", "step-started"] * 3,
        "step-finished",
        "succeeded",
    ]
    assert len({event["src"] for event in delivered}) == 1, "one stream, across the restart"
    assert len(after) >= 7, "the outage's events came after the restart"
