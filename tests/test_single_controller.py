"""One active controller per broker and topic root: a second one refuses to start (and
changes nothing), a dead one's birth does not block a restart, two started at once leave
one, and the running controller's retained status stays right (put back when overwritten,
its counts right from the end of the sync)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.daemon.rivals import BOOT_FILE, OWN_PING_TIMEOUT, PING_TIMEOUT
from edgeplane.controller.errors import AnotherController
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import write_key_file
from tests.support.controller import heartbeat, start_controller, will
from tests.support.probe import Probe, Received, open_probe
from tests.support.procs import Proc, start_proc
from tests.support.site import SiteBroker
from tests.support.site_system import is_online

pytestmark = pytest.mark.slow

REFUSED = AnotherController.EXIT_STATUS
HOST = socket.gethostname()


@asynccontextmanager
async def watching(broker: MosquittoProcess, root: TopicRoot) -> AsyncIterator[Probe]:
    async with open_probe(
        broker.url, root.all_views(), root.all_alerts(), root.controller_status()
    ) as probe:
        yield probe


async def run_controller(
    broker: MosquittoProcess, root: TopicRoot, db: Path, log: Path, procs: list[Proc]
) -> Proc:
    """``edgeplane controller run`` started, not waited for (its default log level)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    if not (db.parent / "command-key").exists():
        write_key_file(db.parent / "command-key")
    args = ["controller", "run", "--broker", broker.url, "--db", str(db)]
    proc = await start_proc("edgeplane.controller", [*args, "--topic-root", str(root)], log)
    procs.append(proc)
    return proc


def copy_of_state(source: Path, target: Path) -> Path:
    """The database (WAL and all) and what lies beside it, as a backup copied live."""
    target.mkdir(parents=True)
    for pattern in ("controller.db*", BOOT_FILE, "events-session-id", "command-key*"):
        for path in source.glob(pattern):
            shutil.copy2(path, target / path.name)
    return target / "controller.db"


def refusal(proc: Proc) -> str:
    lines = [line for line in proc.output().splitlines() if line.startswith("edgeplane: ")]
    assert len(lines) == 1, proc.output()
    return lines[0]


def not_of(probe: Probe, root: TopicRoot, after: int, boot: str, env: str) -> list[str]:
    """Messages since ``after`` that neither the running controller's online status
    (``boot``) nor ``env``'s view explain."""
    unexplained = []
    for message in probe.messages[after:]:
        if message.topic == root.view(env):
            continue
        if message.topic == root.controller_status():
            status = json.loads(message.payload or b"{}")
            if status.get("boot") == boot and status.get("status") == "online":
                continue
        unexplained.append(f"{message.topic} {message.payload[:200]!r}")
    return unexplained


async def synchronised(probe: Probe, root: TopicRoot, boot: str) -> None:
    """Until the controller of ``boot`` has published its status after the sync (its third:
    after the births of the sync's two rounds)."""
    seen = 0

    def third(message: Received) -> bool:
        nonlocal seen
        if message.topic != root.controller_status():
            return False
        status = json.loads(message.payload or b"{}")
        if status.get("boot") == boot and status.get("status") == "online":
            seen += 1
        return seen >= 3

    await probe.wait_for(third, what=f"the status of {boot} after the sync")


@pytest.mark.parametrize("state", ["its own", "a copy of the first's"])
async def test_a_second_controller_refuses_naming_the_first_and_changes_nothing(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc], state: str
) -> None:
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-1")
        await probe.wait_json(root.view("edge-1"), status="online")
        await probe.wait_json(root.view("default-cloud"))  # the last of its start
        if state == "its own":
            db = tmp_path / "second" / "controller.db"
        else:  # same boot recorded: the check is a restart's, and still refuses
            db = copy_of_state(tmp_path, tmp_path / "second")
        mark = probe.mark()
        second = await run_controller(broker, root, db, tmp_path / "second.log", procs)
        assert await second.wait(timeout=20) == REFUSED
        line = refusal(second)
        assert "another controller is active" in line
        assert f"boot {first.boot}" in line
        assert f"host {HOST}" in line
        assert "running since" in line
        assert len(second.output().strip().splitlines()) == 1  # one clear line, nothing else
        # The first goes on; nothing but its own work was published meanwhile.
        await heartbeat(probe, root, "edge-2")
        await probe.wait_json(root.view("edge-2"), after=mark, status="online")
        assert not_of(probe, root, mark, first.boot, "edge-2") == []
    async with open_probe(broker.url, root.controller_status(), root.view("edge-1")) as late:
        await late.wait_json(root.controller_status(), status="online", boot=first.boot)
        await late.wait_json(root.view("edge-1"), status="online")
    assert first.proc.process.returncode is None


async def test_a_restart_beside_its_frozen_predecessor_starts_within_the_short_timeout(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """Killed without a will yet (a frozen process, a host gone): its birth is retained as
    online; the restart with the same database asks it, hears nothing within a second and
    starts. The old will, when it fires at last, is put right."""
    async with watching(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        await synchronised(probe, root, first.boot)
        first.proc.freeze()
        started = time.monotonic()
        second = await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        took = time.monotonic() - started
        assert second.boot != first.boot
        assert took < OWN_PING_TIMEOUT + 10  # the start itself, on a busy machine
        output = second.proc.output()
        assert f"did not answer within {OWN_PING_TIMEOUT:g} s" in output
        assert '"own_last_boot": true' in output
        mark = probe.mark()
        first.proc.signal(signal.SIGKILL)  # still frozen: its socket closes, the will fires
        await probe.wait_json(root.controller_status(), after=mark, status="offline",
                              boot=first.boot)  # fmt: skip
        back = await probe.wait_json(
            root.controller_status(), after=mark, status="online", boot=second.boot, timeout=5
        )
        assert back["host"] == HOST
        assert second.proc.process.returncode is None


async def test_a_dead_controllers_stale_birth_does_not_block_a_start(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    stale = {"status": "online", "boot": "0badc0ffee0ddead", "since": 1.0, "host": "gone"}
    async with watching(broker, root) as probe:
        await probe.publish(root.controller_status(), json.dumps(stale), retain=True)
        started = time.monotonic()
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        assert time.monotonic() - started < PING_TIMEOUT + 10
        output = controller.proc.output()
        assert f"did not answer within {PING_TIMEOUT:g} s" in output
        assert "0badc0ffee0ddead" in output
        # Its birth, delivered again at a reconnect, is no rival: the controller stays.
        await heartbeat(probe, root, "edge-s")
        await probe.wait_json(root.view("edge-s"), status="online")
        assert controller.proc.process.returncode is None


@pytest.mark.parametrize(
    "stray",
    [
        b'{"status":"offline","boot":"5ca1ab1e5ca1ab1e","reason":"connection-lost"}',
        b"",  # cleared
        b"not a status",
    ],
    ids=["another-boot's-will", "cleared", "garbage"],
)
async def test_a_stray_status_over_the_running_controllers_is_put_right_at_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc], stray: bytes
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await heartbeat(probe, root, "edge-1")
        await probe.wait_json(root.view("edge-1"), status="online")
        # synchronised, its counts published: from here on only the stray makes it publish
        await synchronised(probe, root, controller.boot)
        await probe.wait_json(root.controller_status(), boot=controller.boot, online=1)
        mark = probe.mark()
        await probe.publish(root.controller_status(), stray, retain=True)
        started = time.monotonic()
        await probe.wait_json(
            root.controller_status(), after=mark, status="online", boot=controller.boot,
            timeout=5,
        )  # fmt: skip
        assert time.monotonic() - started < 3
    async with open_probe(broker.url, root.controller_status()) as late:
        found = await late.wait_for(lambda m: m.topic == root.controller_status())
        assert found.retain
        assert json.loads(found.payload)["boot"] == controller.boot
        assert json.loads(found.payload)["status"] == "online"
    assert '"controller status overwritten; put right"' in controller.proc.output()


async def test_the_status_counts_right_once_synchronised_and_follows_changes(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        for env in ("on-1", "on-2", "on-3"):
            await heartbeat(probe, root, env)
        await will(probe, root, "gone-1")
        # the default --stats-interval (60 s): the counts must not wait for it
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        status = await probe.wait_json(
            root.controller_status(), status="online", boot=controller.boot, envs=4, online=3
        )
        assert status["host"] == HOST
        assert status["at"] >= status["since"]
        assert status["reason"] == ""
        mark = probe.mark()
        started = time.monotonic()
        burst = [f"burst-{number}" for number in range(200)]
        for env in burst:
            await heartbeat(probe, root, env)
        await probe.wait_json(
            root.controller_status(), after=mark, boot=controller.boot, envs=204, online=203
        )
        seconds = time.monotonic() - started
        statuses = [m for m in probe.messages[mark:] if m.topic == root.controller_status()]
        assert len(statuses) <= seconds + 2  # at most one a second: no storm

        assert await controller.proc.terminate() == 0
        goodbye = await probe.wait_json(root.controller_status(), status="offline")
        assert goodbye["reason"] == "shutdown"
        assert goodbye["host"] == HOST
        assert goodbye["envs"] == 204


async def test_two_controllers_started_at_once_leave_one(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        starts = [
            run_controller(broker, root, tmp_path / name / "c.db", tmp_path / f"{name}.log", procs)
            for name in ("a", "b")
        ]
        pair = await asyncio.gather(*starts)
        exits = {asyncio.create_task(proc.wait(timeout=40)): proc for proc in pair}
        done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        loser = exits[done.pop()]
        winner = next(proc for proc in pair if proc is not loser)
        assert loser.process.returncode == REFUSED
        match = re.search(r"boot ([0-9a-f]{16})", refusal(loser))
        assert match is not None
        boot = match.group(1)
        await heartbeat(probe, root, "edge-1")
        await probe.wait_json(root.view("edge-1"), status="online")
    async with open_probe(broker.url, root.controller_status()) as late:
        await late.wait_json(root.controller_status(), status="online", boot=boot, timeout=5)
    assert winner.process.returncode is None
    for task in exits:
        task.cancel()
    assert await winner.terminate() == 0


async def test_a_running_controller_gives_way_to_one_that_started_before_it(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """The birth of a controller that started first (both passed the start's check at the
    same moment): the later one stops cleanly, names it, exits non-zero, and leaves the
    topic to it (no goodbye over its birth)."""
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await synchronised(probe, root, controller.boot)
        first = {"status": "online", "boot": "0123456789abcdef", "since": controller.since - 1,
                 "host": "plant-ctl-1"}  # fmt: skip
        mark = probe.mark()
        await probe.publish(root.controller_status(), json.dumps(first), retain=True)
        assert await controller.proc.wait(timeout=20) == REFUSED
        line = refusal(controller.proc)
        assert "boot 0123456789abcdef on host plant-ctl-1" in line
        assert "started first" in line
        statuses = [m for m in probe.messages[mark:] if m.topic == root.controller_status()]
        assert [json.loads(m.payload)["boot"] for m in statuses] == ["0123456789abcdef"]
    async with open_probe(broker.url, root.controller_status()) as late:
        await late.wait_json(root.controller_status(), boot="0123456789abcdef")


async def test_a_running_controller_stays_beside_one_that_started_after_it(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with watching(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await synchronised(probe, root, controller.boot)
        later = {"status": "online", "boot": "fedcba9876543210", "since": controller.since + 1}
        mark = probe.mark()
        await probe.publish(root.controller_status(), json.dumps(later), retain=True)
        await probe.wait_json(
            root.controller_status(), after=mark, status="online", boot=controller.boot
        )
        assert controller.proc.process.returncode is None


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[SiteBroker]:
    broker = SiteBroker.create(tmp_path / "site", TopicRoot("single/edgeplane/v1"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_under_broker_init_a_second_controller_refuses(
    site: SiteBroker, tmp_path: Path, procs: list[Proc]
) -> None:
    config = site.result.layout.controller_toml
    with site.client(site.admin) as watcher:
        watcher.subscribe(site.root.controller_status())
        first = await start_proc(
            "edgeplane.controller", ["controller", "run", "--config", str(config)],
            tmp_path / "first.log",
        )  # fmt: skip
        procs.append(first)
        birth = await asyncio.to_thread(watcher.wait_for, is_online, 20.0)
        boot = json.loads(birth[-1].payload)["boot"]
        args = ["controller", "run", "--config", str(config), "--db", str(tmp_path / "2.db")]
        second = await start_proc("edgeplane.controller", args, tmp_path / "second.log")
        procs.append(second)
        assert await second.wait(timeout=30) == REFUSED
        line = refusal(second)
        assert "another controller is active on" in line  # asked, before it started
        assert f"boot {boot}" in line
    assert first.process.returncode is None
