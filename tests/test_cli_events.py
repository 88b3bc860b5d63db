"""``edgeplane events`` (the operations log, paged) and ``events --follow`` (then live, each
event once, until SIGINT/SIGTERM), plus the readable line of every event type."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.cli.events import event_line
from edgeplane.controller.operator.event_text import check_line, describe
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import (
    Ack,
    Check,
    CommandRejected,
    Event,
    Failed,
    Pong,
    Preflight,
    ServiceRestarted,
    StepFinished,
    Succeeded,
)
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.system import System, open_system

PY = sys.executable
at: dict[str, Any] = {"env": "edge-a", "seq": 1}


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            StepFinished(step="fetch", index=0, exit_code=0, duration=1.25, ok=True, **at),
            "step 1 fetch finished: exit 0 after 1.2 s",
        ),
        (
            StepFinished(
                step="fetch", index=2, exit_code=None, duration=60, ok=False, timed_out=True, **at
            ),
            "step 3 fetch FAILED: timed out after 60.0 s",
        ),
        (Preflight(ok=True, **at), "preflight passed: nothing required"),
        (
            Preflight(
                ok=False,
                checks=[
                    Check(kind="secret", name="T", ok=False, detail="absent"),
                    Check(kind="model", name="m", ok=True),
                ],
                **at,
            ),
            "preflight FAILED: 1 of 2 checks: secret T: absent",
        ),
        (
            Failed(reason="step 'x' exited with code 3", step="x", **at),
            "failed: step 'x' exited with code 3",
        ),
        (Failed(reason="could not start", step="x", **at), "failed (step x): could not start"),
        (
            ServiceRestarted(step="serve", restarts=2, exit_code=1, **at),
            "service step serve restarted after exit 1 (restart 2)",
        ),
        (Ack(op="update", ok=False, detail="bad log_level", **at), "update FAILED: bad log_level"),
        (CommandRejected(reason="unknown workflow", **at), "rejected: unknown workflow"),
        (Succeeded(duration=3.04, **at), "succeeded in 3.0 s"),
    ],
)
def test_each_event_reads_as_one_line(event: Event, line: str) -> None:
    assert describe(event) == line
    logged = event_line(0.0, event)
    assert logged.endswith(f"  edge-a  -  {line}")
    assert "\n" not in logged


def test_a_check_line_says_ok_or_failed_with_its_detail_and_time() -> None:
    assert check_line(Check(kind="bucket", name="out", ok=False, detail="read-only", ms=3.4)) == (
        "FAILED  bucket out: read-only (3 ms)"
    )
    assert check_line(Check(kind="model", name="m", ok=True)) == "ok      model m (0 ms)"


# --- through real processes ------------------------------------------------------------------
def quick_job(system: System, name: str) -> Path:
    return system.workflow(
        name, {"name": name, "version": "1.0.0", "steps": [{"name": "only", "run": [PY, "-c", ""]}]}
    )


@pytest.mark.slow
async def test_events_lists_the_log_oldest_first_as_text_and_json(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        first = await system.deploy(quick_job(system, "one"), "edge-a", "--wait")
        assert first.code == 0, str(first)
        second = await system.deploy(quick_job(system, "two"), "edge-a", "--wait")
        assert second.code == 0, str(second)
        dep_one, dep_two = first.stdout.split()[1], second.stdout.split()[1]

        logged = (await system.cli("events", "--env", "edge-a", "--json")).json()
        assert [entry["id"] for entry in logged] == sorted(entry["id"] for entry in logged)
        by_dep = [entry["event"]["dep"] for entry in logged if entry["event"]["dep"]]
        assert by_dep.index(dep_one) < by_dep.index(dep_two)
        published = system.events("edge-a")
        assert sorted((e["src"], e["seq"]) for e in published) == sorted(
            (entry["event"]["src"], entry["event"]["seq"]) for entry in logged
        )

        text = await system.cli("events", "--env", "edge-a", "--dep", dep_two)
        assert text.code == 0, str(text)
        lines = text.stdout.splitlines()
        assert [line.split("  ")[1:3] for line in lines] == [["edge-a", dep_two]] * len(lines)
        assert lines[0].endswith("accepted two 1.0.0")
        assert lines[-1].split("  ")[-1].startswith("succeeded in ")

        nothing = await system.cli("events", "--env", "default-cloud")  # no agent yet
        assert (nothing.code, nothing.stdout) == (0, "no events\n")
        unknown = await system.cli("events", "--env", "edge-zz")
        assert (unknown.code, unknown.stdout) == (1, ""), str(unknown)
        assert unknown.stderr.startswith("edgeplane: no environment 'edge-zz'")
        no_dep = await system.cli("events", "--dep", "d-0000000000")
        assert (no_dep.code, no_dep.stdout) == (1, ""), str(no_dep)
        assert no_dep.stderr.strip() == "edgeplane: no deployment 'd-0000000000'"


@pytest.mark.slow
async def test_events_pages_through_a_long_log(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-p")
        for seq in range(1, 451):
            await system.probe.publish(
                root.events("edge-p"), encode(Pong(env="edge-p", seq=seq, src="s"))
            )
        deadline = time.monotonic() + 30
        while True:
            logged = (await system.cli("events", "--env", "edge-p", "--json")).json()
            if len(logged) == 450 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)  # polling a query: the log has no push for "stored"
        assert [entry["event"]["seq"] for entry in logged] == list(range(1, 451))
        # into a reader that stops after one line (`| head -1`): a quiet exit, no traceback
        argv = [PY, "-m", "edgeplane.controller", "events", "--env", "edge-p"]
        argv += ["--broker", system.broker.url, "--topic-root", str(root)]
        reader, writer = os.pipe()
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=writer, stderr=asyncio.subprocess.PIPE
        )
        os.close(writer)
        with os.fdopen(reader, "rb") as head:
            assert head.readline()  # the first line, then the pipe is closed
        assert process.stderr is not None
        err = await asyncio.wait_for(process.stderr.read(), 30)
        assert await asyncio.wait_for(process.wait(), 30) == 141
        assert err == b""


@asynccontextmanager
async def follower(system: System, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    argv = [PY, "-m", "edgeplane.controller", "events", "--follow", *args]
    argv += ["--broker", system.broker.url, "--topic-root", str(system.root)]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_until(
    process: asyncio.subprocess.Process, done: str, timeout: float = 30
) -> list[str]:
    """Lines of stdout up to and including the first one containing ``done``."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while not lines or done not in lines[-1]:
            line = await process.stdout.readline()
            assert line, f"stdout closed; had {lines}"
            lines.append(line.decode())
    return lines


@pytest.mark.slow
async def test_follow_prints_the_log_then_new_events_once_and_stops_cleanly_on_sigterm(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        before = await system.deploy(quick_job(system, "before"), "edge-a", "--wait")
        dep_before = before.stdout.split()[1]
        async with follower(system, "--env", "edge-a", "--json") as process:
            listed = await read_until(process, '"type":"succeeded"')
            assert all(json.loads(line)["id"] is not None for line in listed)
            after = await system.deploy(quick_job(system, "after"), "edge-a", "--wait")
            dep_after = after.stdout.split()[1]
            live = await read_until(process, '"type":"succeeded"')
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        entries = [json.loads(line) for line in [*listed, *live]]
        keys = [(e["event"]["src"], e["event"]["seq"]) for e in entries]
        assert len(keys) == len(set(keys)), "an event printed twice"
        assert {e["event"]["dep"] for e in entries} - {""} == {dep_before, dep_after}
        assert [e["event"]["type"] for e in entries if e["event"]["dep"] == dep_after] == [
            "accepted",
            "preflight",
            "started",
            "step-started",
            "step-finished",
            "succeeded",
        ]


@pytest.mark.slow
async def test_follow_of_every_environment_stops_with_exit_0_on_ctrl_c(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-x")
        async with follower(system) as process:
            # a live event of any environment shows up as a readable line
            marker = f"marker-{time.monotonic_ns()}"
            ack = Ack(env="edge-x", seq=1, src="probe", op="update", ok=True, detail=marker)
            printed: list[str] = []
            while not printed:
                await system.probe.publish(root.events("edge-x"), encode(ack))
                try:
                    printed = await read_until(process, marker, timeout=2)
                except TimeoutError:
                    continue  # published before the follower subscribed: publish again
            assert printed[-1].rstrip().endswith(f"  edge-x  -  update done: {marker}")
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 15) == 0


async def publish_until_printed(
    system: System, process: asyncio.subprocess.Process, event: Ack
) -> list[str]:
    """Publish ``event`` until the follower prints it (it may not be subscribed yet; the
    same event again is the same (env, src, seq), printed once)."""
    assert event.detail
    while True:
        await system.probe.publish(system.root.events(event.env), encode(event))
        try:
            return await read_until(process, event.detail, timeout=2)
        except TimeoutError:
            continue


@pytest.mark.slow
async def test_follow_connects_again_after_a_broker_restart(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(private_broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-r")
        before = Ack(env="edge-r", seq=1, src="probe", op="update", ok=True, detail="before")
        after = Ack(env="edge-r", seq=2, src="probe", op="update", ok=True, detail="after")
        async with follower(system, "--env", "edge-r", "--json") as process:
            printed = await publish_until_printed(system, process, before)
            await system.stop_broker()
            await system.start_broker()
            printed += await publish_until_printed(system, process, after)
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 15)
        assert process.returncode == 0, err
        details = [json.loads(line)["event"]["detail"] for line in printed]
        assert details == ["before", "after"]  # each once, the log read again deduplicated
        assert b"; trying again" in err
