"""The controller as a real process against a real mosquitto, with agents impersonated
precisely by a probe publishing status messages (stale wills, garbage, restarts)."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import (
    alerts,
    heartbeat,
    start_controller,
    status_payload,
    stored_transitions,
    views,
    will,
    will_payload,
)
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc, start_proc


@asynccontextmanager
async def watching(broker: MosquittoProcess, root: TopicRoot) -> AsyncIterator[Probe]:
    async with open_probe(
        broker.url, root.all_views(), root.all_alerts(), root.controller_status()
    ) as probe:
        yield probe


@pytest.mark.slow
async def test_birth_views_and_clean_stop(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-1")
        view = await probe.wait_json(root.view("edge-1"), status="online")
        assert view["reason"] == "heartbeat"
        assert view["flapping"] is False
        await will(probe, root, "edge-1", reason="shutdown")
        await probe.wait_json(root.view("edge-1"), status="offline", reason="shutdown")

        assert await controller.proc.terminate() == 0
        goodbye = await probe.wait_json(root.controller_status(), status="offline")
        assert goodbye["boot"] == controller.boot
        assert goodbye["envs"] == 1
    # the views are retained: a late subscriber sees them
    async with open_probe(broker.url, root.view("edge-1")) as late:
        found = await late.wait_for(lambda m: m.topic == root.view("edge-1"))
        assert found.retain
        assert json.loads(found.payload)["status"] == "offline"
    assert stored_transitions(controller.db, "edge-1") == [
        ("unknown", "online", "heartbeat", 0),
        ("online", "offline", "shutdown", 0),
    ]


@pytest.mark.slow
async def test_will_with_current_bdseq_is_offline_and_a_stale_will_changes_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe, "--stats-interval", "0.3")
        await heartbeat(probe, root, "edge-1", bdseq=7)
        await probe.wait_json(root.view("edge-1"), status="online")
        mark = probe.mark()
        # a quick reconnect: the new connection's online comes before the old one's will
        await heartbeat(probe, root, "edge-1", bdseq=8)
        await will(probe, root, "edge-1", bdseq=7)
        await heartbeat(probe, root, "edge-2")  # processed after the stale will
        await probe.wait_json(root.view("edge-2"), status="online")
        stats = await probe.wait_json(root.controller_status(), after=mark, stale=1)
        assert stats["online"] == 2
        # the stale will changed nothing; the new connection counts as a reconnect
        shown = [
            (v["status"], v["reconnects_1h"]) for v in views(probe, root, "edge-1", after=mark)
        ]
        assert shown == [("online", 1)]

        await will(probe, root, "edge-1", bdseq=8)
        view = await probe.wait_json(root.view("edge-1"), status="offline")
        assert view["reason"] == "connection-lost"


@pytest.mark.slow
async def test_heartbeat_silence_is_offline_and_the_next_heartbeat_brings_it_back(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "quiet-1", interval=0.5)
        online = await probe.wait_json(root.view("quiet-1"), status="online")
        offline = await probe.wait_json(root.view("quiet-1"), status="offline")
        assert offline["reason"] == "heartbeat-timeout"
        assert offline["since"] - online["since"] >= 1.5  # over 3 x interval, own clock
        mark = probe.mark()
        await heartbeat(probe, root, "quiet-1", seq=1, interval=30)
        back = await probe.wait_json(root.view("quiet-1"), after=mark, status="online")
        assert back["since"] > offline["since"]
        assert await controller.proc.terminate() == 0
    assert [t[:3] for t in stored_transitions(controller.db, "quiet-1")] == [
        ("unknown", "online", "heartbeat"),
        ("online", "offline", "heartbeat-timeout"),
        ("offline", "online", "heartbeat"),
    ]


GARBAGE: list[tuple[str, bytes, str]] = [
    ("status", b"not json at all", "not-json"),
    ("status", b"", "empty"),
    ("status", b'{"status": "online", "env": "edge-g"}', "schema"),
    (
        "status",
        b'{"status": "online", "env": "edge-g", "bdseq": "x", "seq": 0, '
        b'"interval": 1, "boot": "b"}',
        "schema",
    ),
    ("status", b'{"status": "sideways", "env": "edge-g", "bdseq": 1}', "schema"),
    ("status", b"[1, 2, 3]", "schema"),
    ("status", status_payload("someone-else"), "env-mismatch"),
    ("status", b'{"status": "online", "pad": "' + b"x" * 2000 + b'"}', "too-large"),
    ("events", b"\xff\xfe garbage", "not-json"),
    ("events", b'{"type": "pong"}', "schema"),
]


@pytest.mark.slow
async def test_garbage_on_every_topic_is_dropped_counted_and_changes_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(
            broker, root, tmp_path, procs, probe, "--max-payload", "1024", "--stats-interval",
            "0.3",
        )  # fmt: skip
        await heartbeat(probe, root, "edge-g")
        await probe.wait_json(root.view("edge-g"), status="online")
        mark = probe.mark()
        for kind, payload, _ in GARBAGE:
            topic = f"{root}/env/edge-g/{kind}"
            await probe.publish(topic, payload)
        await probe.publish(f"{root}/env/Not_An_Id/status", status_payload("edge-g"))
        await probe.publish(f"{root}/env/edge-g/events", b"{}" * 600)  # over the limit
        await probe.publish(root.view("edge-x"), b'{"env": "edge-x", "status": 3}')
        await probe.publish(root.view("edge-x"), b'{"env": "other", "status": "online", '
                            b'"since": 1}')  # fmt: skip
        await probe.publish(root.controller_status(), b"<html>")
        # still judging: a will with the current bdseq is believed
        await probe.publish(root.status("edge-g"), will_payload("edge-g"), retain=True)
        await probe.wait_json(root.view("edge-g"), status="offline", reason="connection-lost")
        expected: dict[str, int] = {"bad-topic": 1}
        for _, _, reason in GARBAGE:
            expected[reason] = expected.get(reason, 0) + 1
        expected["too-large"] += 1
        expected["schema"] += 1
        expected["env-mismatch"] += 1
        expected["not-json"] += 1
        stats = await probe.wait_json(root.controller_status(), after=mark, dropped=expected)
        assert stats["status"] == "online"
        assert [v["status"] for v in views(probe, root, "edge-g", after=mark)] == ["offline"]
        assert controller.proc.process.returncode is None
        assert await controller.proc.terminate() == 0
    output = controller.proc.output()
    assert output.count('"bad input dropped"') == len(expected)  # once per reason a minute


@pytest.mark.slow
async def test_restart_after_kill_makes_no_false_transitions_and_records_the_downtime(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        for env in ("steady", "leaving", "arriving"):
            await heartbeat(probe, root, env, bdseq=3)
            await probe.wait_json(root.view(env), status="online")
        await will(probe, root, "arriving", bdseq=3, reason="shutdown")
        await probe.wait_json(root.view("arriving"), status="offline")

        await first.proc.kill()
        await will(probe, root, "leaving", bdseq=3)  # its agent dies while we are down
        await heartbeat(probe, root, "arriving", bdseq=4)  # and this one comes back
        mark = probe.mark()

        second = await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        assert second.boot != first.boot
        await probe.wait_json(root.view("leaving"), after=mark, status="offline")
        await probe.wait_json(root.view("arriving"), after=mark, status="online")
        # a live message after the birth: anything re-published would have come before it
        await heartbeat(probe, root, "newcomer")
        await probe.wait_json(root.view("newcomer"), status="online")
        assert views(probe, root, "steady", after=mark) == []
        assert len(views(probe, root, "leaving", after=mark)) == 1
        assert len(views(probe, root, "arriving", after=mark)) == 1
        assert alerts(probe, root) == []
        assert await second.proc.terminate() == 0
    assert stored_transitions(first.db, "steady") == [("unknown", "online", "heartbeat", 0)]
    assert stored_transitions(first.db, "leaving")[-1] == (
        "online", "offline", "connection-lost", 1,
    )  # fmt: skip
    assert stored_transitions(first.db, "arriving")[-1] == ("offline", "online", "heartbeat", 1)


@pytest.mark.slow
async def test_restart_republishes_views_the_broker_lost(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "kept")
        await heartbeat(probe, root, "lost")
        await probe.wait_json(root.view("kept"), status="online")
        await probe.wait_json(root.view("lost"), status="online")
        assert await first.proc.terminate() == 0
        await probe.publish(root.view("lost"), b"", retain=True)  # the broker lost it
        mark = probe.mark()
        await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        await probe.wait_json(root.view("lost"), after=mark, status="online")
        await heartbeat(probe, root, "later")
        await probe.wait_json(root.view("later"), status="online")
        assert views(probe, root, "kept", after=mark) == []


@pytest.mark.slow
async def test_flapping_is_raised_exactly_once_and_cleared(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(
            broker, root, tmp_path, procs, probe,
            "--flap-window", "4", "--flap-high", "4", "--flap-low", "1",
        )  # fmt: skip
        await heartbeat(probe, root, "flappy", bdseq=0)
        await probe.wait_json(root.view("flappy"), status="online")
        for bdseq in range(4):  # 8 transitions, in well under the window
            await will(probe, root, "flappy", bdseq=bdseq)
            await heartbeat(probe, root, "flappy", bdseq=bdseq + 1)
        raised = await probe.wait_json(root.alerts("flappy"), kind="flapping", state="raised")
        cleared = await probe.wait_json(
            root.alerts("flappy"), kind="flapping", state="cleared", timeout=15
        )
        assert cleared["ts"] > raised["ts"]
        assert [a["state"] for a in alerts(probe, root)] == ["raised", "cleared"]
        # the view said so too: not flapping, flapping, not flapping again (and online)
        shown = [(v["status"], v["flapping"]) for v in views(probe, root, "flappy")]
        assert shown[-1] == ("online", False)
        assert [f for f, _ in itertools.groupby(flag for _, flag in shown)] == [False, True, False]
        assert await controller.proc.terminate() == 0
    with sqlite3.connect(controller.db) as conn:
        stored = conn.execute("SELECT kind, state FROM alerts WHERE env = 'flappy'").fetchall()
    assert stored == [("flapping", "raised"), ("flapping", "cleared")]


@pytest.mark.slow
async def test_alternating_boots_raise_one_identity_conflict_cleared_when_it_stops(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe, "--identity-quiet", "2")
        for seq, boot in enumerate(["one", "two", "one", "two", "one", "two"]):
            await heartbeat(probe, root, "twin", bdseq=seq, seq=0, boot=boot)
        raised = await probe.wait_json(
            root.alerts("twin"), kind="identity-conflict", state="raised"
        )
        await probe.wait_json(
            root.alerts("twin"), kind="identity-conflict", state="cleared", timeout=15
        )
        assert raised["ts"] > 0
        assert [a["state"] for a in alerts(probe, root)] == ["raised", "cleared"]


@pytest.mark.slow
async def test_bad_settings_exit_2_with_one_line_naming_the_setting(
    broker: MosquittoProcess, tmp_path: Path, procs: list[Proc]
) -> None:
    cases = [
        (["--flap-high", "zero"], "--flap-high"),
        (["--flap-low", "6", "--flap-high", "6"], "--flap-low"),
        (["--broker", "http://x"], "--broker"),
        (["--max-payload", "-1"], "--max-payload"),
    ]
    for number, (flags, name) in enumerate(cases):
        args = ["controller", "run", "--db", str(tmp_path / "c.db"), *flags]
        proc = await start_proc("edgeplane.controller", args, tmp_path / f"bad-{number}.log")
        procs.append(proc)
        assert await proc.wait() == 2
        lines = proc.output().strip().splitlines()
        assert len(lines) == 1
        assert name in lines[0]
    config = tmp_path / "c.toml"
    config.write_text('flap_window = "soon"\n')
    proc = await start_proc(
        "edgeplane.controller", ["controller", "run", "--config", str(config)], tmp_path / "cfg.log"
    )
    procs.append(proc)
    assert await proc.wait() == 2
    assert "flap_window" in proc.output()


@pytest.mark.slow
async def test_controller_waits_out_a_broker_restart_and_publishes_birth_again(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(private_broker, root) as probe:
        controller = await start_controller(private_broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-r")
        await probe.wait_json(root.view("edge-r"), status="online")
    private_broker.stop()
    private_broker.start()
    async with watching(private_broker, root) as probe:
        mark = probe.mark()
        await probe.wait_json(
            root.controller_status(), after=mark, status="online", boot=controller.boot,
            timeout=40,
        )  # fmt: skip
        await wait_for_log(controller.proc, "retained state synchronised", count=2)
        await heartbeat(probe, root, "edge-s")
        await probe.wait_json(root.view("edge-s"), status="online")
        # judgement survived the reconnect: no new view of edge-r, only the retained one
        shown = [m for m in probe.messages if m.topic == root.view("edge-r")]
        assert [m.retain for m in shown] == [True]
        await will(probe, root, "edge-r")
        await probe.wait_json(root.view("edge-r"), status="offline", reason="connection-lost")
        controller.proc.signal(signal.SIGINT)
        assert await controller.proc.wait() == 0


@pytest.mark.slow
async def test_a_database_that_is_not_one_is_a_one_line_error(
    broker: MosquittoProcess, tmp_path: Path, procs: list[Proc]
) -> None:
    db = tmp_path / "controller.db"
    db.write_bytes(b"certainly not SQLite " * 200)
    args = ["controller", "run", "--broker", broker.url, "--db", str(db)]
    proc = await start_proc("edgeplane.controller", args, tmp_path / "bad-db.log")
    procs.append(proc)
    assert await proc.wait() == 1
    lines = proc.output().strip().splitlines()
    assert len(lines) == 1
    assert str(db) in lines[0]


async def wait_for_log(proc: Proc, event: str, *, count: int = 1, timeout: float = 30) -> None:
    """Wait until ``proc`` has logged ``event`` ``count`` times (its log is a file: poll)."""
    async with asyncio.timeout(timeout):
        while proc.output().count(f'"{event}"') < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_online_environment_without_a_retained_status_times_out_after_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "vanished", interval=1)
        await probe.wait_json(root.view("vanished"), status="online")
        await first.proc.kill()
        await probe.publish(root.status("vanished"), b"", retain=True)  # expired, say
        mark = probe.mark()
        second = await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        view = await probe.wait_json(root.view("vanished"), after=mark, status="offline")
        assert view["reason"] == "heartbeat-timeout"
        assert view["since"] - second.since >= 3.0  # a fresh 3 x interval from the restart
        assert await second.proc.terminate() == 0


@pytest.mark.slow
async def test_sigterm_while_the_broker_is_away_still_exits_cleanly(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(private_broker, root) as probe:
        controller = await start_controller(private_broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-t")
        await probe.wait_json(root.view("edge-t"), status="online")
    private_broker.stop()
    await wait_for_log(controller.proc, "broker connection lost; retrying")
    assert await controller.proc.terminate() == 0
    assert '"controller stopped"' in controller.proc.output()
    assert stored_transitions(controller.db, "edge-t") == [("unknown", "online", "heartbeat", 0)]
