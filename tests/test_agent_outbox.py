"""The agent's event outbox: durable, ordered, deduplicating; and, end to end, events that
survive a broker outage and a ``kill -9`` of the agent, delivered once each."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_agent.errors import EventInvalid, OutboxError
from edge_agent.outbox import SEEN_KEEP, SEEN_TTL, Outbox
from shared.clock import ManualClock
from shared.codec import EVENT
from shared.messages import Ack, CommandRejected, Pong

ENV = "dev-lab-outbox"


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
    outbox = Outbox(tmp_path, ENV, clock=clock)
    outbox.remember("old")
    clock.advance(SEEN_TTL + 1)
    for i in range(SEEN_KEEP + 100):
        outbox.remember(f"c{i}")
        clock.advance(0.001)
    assert not outbox.seen("old"), "older than the TTL"
    assert not outbox.seen("c0"), "beyond the newest SEEN_KEEP"
    assert outbox.seen(f"c{SEEN_KEEP + 99}")
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        (count,) = db.execute("SELECT count(*) FROM seen").fetchone()
    assert count <= SEEN_KEEP + 100


def test_the_outbox_files_are_private(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ENV)
    outbox.emit(Pong)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db")]
    assert {p.name for p in files} >= {"outbox.db", "outbox.db-wal"}
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in files)
