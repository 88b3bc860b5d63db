"""The webhook through a real controller process: incidents reach it as JSON; a dead or slow
endpoint costs a counter and a log line, never a delayed view or a crash."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import heartbeat, start_controller, will
from tests.support.probe import Probe, open_probe
from tests.support.procs import Proc, start_proc
from tests.support.webhook import webhook

FLAPPY = ("--flap-window", "30", "--flap-high", "4", "--flap-low", "1")


@asynccontextmanager
async def watching(broker: MosquittoProcess, root: TopicRoot) -> AsyncIterator[Probe]:
    async with open_probe(
        broker.url, root.all_views(), root.all_alerts(), root.controller_status()
    ) as probe:
        yield probe


async def flap(probe: Probe, root: TopicRoot, env: str) -> None:
    await heartbeat(probe, root, env, bdseq=0)
    await probe.wait_json(root.view(env), status="online")
    for bdseq in range(3):
        await will(probe, root, env, bdseq=bdseq)
        await heartbeat(probe, root, env, bdseq=bdseq + 1)
    await probe.wait_json(root.alerts(env), kind="flapping", state="raised")


def opened(body: Any, kind: str, env: str) -> bool:
    incident = body.get("incident", {})
    return bool(
        body.get("edge") == "opened" and incident.get("kind") == kind and incident.get("env") == env
    )


def log_lines(proc: Proc, event: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in proc.output().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


@pytest.mark.slow
async def test_flapping_and_identity_conflict_incidents_reach_the_webhook_as_json(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with webhook(answers=[500]) as hook:  # the first try fails: delivered on the retry
        async with watching(broker, root) as probe:
            url = hook.url(login="ops:hook-secret")
            controller = await start_controller(
                broker, root, tmp_path, procs, probe, "--notify-url", url, *FLAPPY
            )
            await flap(probe, root, "flappy")
            for seq, boot in enumerate(["one", "two", "one", "two", "one", "two"]):
                await heartbeat(probe, root, "twin", bdseq=seq, seq=0, boot=boot)
            await probe.wait_json(root.alerts("twin"), kind="identity-conflict", state="raised")
            flapping = await hook.wait_body(lambda b: opened(b, "flapping", "flappy"))
            conflict = await hook.wait_body(lambda b: opened(b, "identity-conflict", "twin"))
            assert await controller.proc.terminate() == 0
            goodbye = await probe.wait_json(root.controller_status(), status="offline")
    assert flapping["type"] == "incident"
    assert flapping["incident"]["state"] == "open"
    assert flapping["incident"]["opened"] > 0
    assert "transitions" in flapping["incident"]["detail"]
    assert conflict["incident"]["severity"] == "critical"
    assert hook.tries >= 3  # one failed, then both delivered
    assert goodbye["notify_sent"] >= 2
    assert goodbye["notify_failed"] == 0
    assert "hook-secret" not in controller.proc.output()


@pytest.mark.slow
async def test_a_dead_webhook_is_counted_and_logged_and_presence_goes_on(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://ops:dead-secret@127.0.0.1:{port}/hook"  # nothing listens there
    async with watching(broker, root) as probe:
        controller = await start_controller(
            broker, root, tmp_path, procs, probe,
            "--notify-url", url, "--notify-tries", "2", "--stats-interval", "0.5", *FLAPPY,
        )  # fmt: skip
        await flap(probe, root, "flappy")
        # the controller keeps judging: a new environment's view comes at once
        await heartbeat(probe, root, "after")
        await probe.wait_json(root.view("after"), status="online", timeout=3)
        # the retained status counts the failure (operators and dashboards see it)
        await probe.wait_for(lambda m: _failed(m.topic, m.payload, root), timeout=15)
        assert await controller.proc.terminate() == 0
        goodbye = await probe.wait_json(root.controller_status(), status="offline")
    assert goodbye["notify_failed"] >= 1
    assert goodbye["notify_sent"] == 0
    [line] = log_lines(controller.proc, "webhook notice given up")[:1]
    assert line["url"] == f"http://127.0.0.1:{port}/hook"
    assert line["tries"] == 2
    assert "dead-secret" not in controller.proc.output()


def _failed(topic: str, payload: bytes, root: TopicRoot) -> bool:
    if topic != root.controller_status() or not payload:
        return False
    return int(json.loads(payload).get("notify_failed", 0)) >= 1


@pytest.mark.slow
async def test_a_slow_webhook_does_not_delay_the_views(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    with webhook(delay=4.0) as hook:
        async with watching(broker, root) as probe:
            controller = await start_controller(
                broker, root, tmp_path, procs, probe,
                "--notify-url", hook.url(), "--notify-timeout", "10", *FLAPPY,
            )  # fmt: skip
            await flap(probe, root, "flappy")
            await hook.wait_tries(1)  # the webhook sleeps on it now
            loop = asyncio.get_running_loop()
            started = loop.time()
            await heartbeat(probe, root, "meanwhile")
            await probe.wait_json(root.view("meanwhile"), status="online", timeout=3)
            assert loop.time() - started < 1.5
            assert not hook.received  # still asleep
            await hook.wait_received(1)
            assert await controller.proc.terminate() == 0


@pytest.mark.slow
async def test_a_bad_notify_url_is_a_one_line_error_and_exit_2(
    tmp_path: Path, procs: list[Proc]
) -> None:
    for number, url in enumerate(["ftp://u:bad-secret@host/x", "not a url", "http://:80/"]):
        args = ["controller", "run", "--db", str(tmp_path / "c.db"), "--notify-url", url]
        proc = await start_proc("edgeplane.controller", args, tmp_path / f"bad-{number}.log")
        procs.append(proc)
        assert await proc.wait() == 2
        lines = proc.output().strip().splitlines()
        assert len(lines) == 1
        assert "--notify-url" in lines[0]
        assert "bad-secret" not in lines[0]
