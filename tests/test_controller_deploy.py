"""Deployments through a real controller process: the gate, the command on the wire, the
operations log fed by a fake agent (a probe that answers commands with events), the
--when-online queue and its TTL, retirement, and a deployment followed across a
controller restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import Accepted, Deploy, Event, Retire, Started, Succeeded
from edgeplane.shared.rpc import (
    DeploymentList,
    DeploymentShow,
    DeployRequest,
    EnvCreate,
    EnvRestart,
    EnvRetire,
    EnvShow,
    EventList,
)
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import ModelNeed, Requires, Step, Workflow
from tests.support.asking import ask, ask_ok, reply_topic
from tests.support.command_key import opened
from tests.support.controller import start_controller, will
from tests.support.probe import Probe, Received, open_probe
from tests.support.procs import Proc

FLOW = Workflow(
    name="vision-inspect",
    version="1.4.0",
    steps=[Step(name="inspect", run=["true"])],
    requires=Requires(models=[ModelNeed("defect-detector", ">=2.1,<3")]),
)


@asynccontextmanager
async def everything(broker: MosquittoProcess, root: TopicRoot) -> AsyncIterator[Probe]:
    async with open_probe(broker.url, root.everything()) as probe:
        yield probe


async def online(
    probe: Probe, root: TopicRoot, env: str, *, bdseq: int = 1, seq: int = 0, **fields: Any
) -> None:
    """A fake agent's heartbeat (retained, like the real one)."""
    status = {"status": "online", "env": env, "bdseq": bdseq, "seq": seq, "interval": 30,
              "boot": "boot-a", **fields}  # fmt: skip
    await probe.publish(root.status(env), json.dumps(status).encode(), retain=True)


async def create(probe: Probe, root: TopicRoot, env: str) -> None:
    await ask_ok(probe, root, EnvCreate(id=env, stage="dev", location="lab", purpose="test"))


def deploy(env: str, **options: Any) -> DeployRequest:
    return DeployRequest(env=env, workflow=FLOW, **options)


async def next_command(probe: Probe, root: TopicRoot, env: str, after: int) -> Received:
    return await probe.wait_for(
        lambda m: m.topic == root.cmd(env), after=after, what=f"a command for {env}"
    )


async def send(probe: Probe, root: TopicRoot, *events: Event) -> None:
    for event in events:
        await probe.publish(root.events(event.env), encode(event))


async def wait_state(
    probe: Probe, root: TopicRoot, dep: str, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Ask until the deployment is in ``state``: the controller takes events off the
    receive path, so the state is polled (with a deadline), not awaited."""
    shown: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while shown.get("state") != state:
                shown = await ask_ok(probe, root, DeploymentShow(id=dep))
                if shown["state"] != state:
                    await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"deployment {dep} never reached {state}: {shown}") from None
    return shown


def command_of(message: Received) -> Any:
    command = opened(message.payload)
    assert command.env == message.topic.split("/")[-2], "signed for the environment it is sent to"
    assert command.expires is not None
    return command


def agent_events(env: str, dep: str, cmd: str, src: str = "agent-1") -> list[Event]:
    common: dict[str, Any] = {"env": env, "src": src, "dep": dep, "cmd": cmd}
    return [
        Accepted(seq=1, workflow=FLOW.name, version=FLOW.version, **common),
        Started(seq=2, workflow=FLOW.name, version=FLOW.version, **common),
        Succeeded(seq=3, duration=0.5, **common),
    ]


@pytest.mark.slow
async def test_a_deployment_is_sent_followed_and_its_events_logged_once(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe, "--stats-interval", "0.3")
        await create(probe, root, "edge-a")
        await online(probe, root, "edge-a", models={"defect-detector": ["2.4.0"]},
                     platform={"os": "linux", "arch": "x86_64"})  # fmt: skip
        await probe.wait_json(root.view("edge-a"), status="online")
        mark = probe.mark()
        sent = await ask_ok(probe, root, deploy("edge-a"))
        assert sent["state"] == "sent"
        assert sent["id"].startswith("d-")
        assert (sent["workflow"], sent["version"]) == ("vision-inspect", "1.4.0")

        message = await next_command(probe, root, "edge-a", mark)
        command = command_of(message)
        assert isinstance(command, Deploy)
        assert (command.dep, command.id, command.workflow) == (sent["id"], sent["cmd"], FLOW)
        assert command.expires is not None
        assert getattr(message.properties, "MessageExpiryInterval", None) == 300
        info = await ask_ok(probe, root, EnvShow(id="edge-a"))
        assert info["models"] == {"defect-detector": ["2.4.0"]}
        assert info["platform"]["arch"] == "x86_64"

        events = agent_events("edge-a", sent["id"], command.id)
        await send(probe, root, events[0], events[1])
        running = await wait_state(probe, root, sent["id"], "running")
        assert (await ask_ok(probe, root, EnvShow(id="edge-a")))["running"] == [sent["id"]]
        await send(probe, root, events[0], events[1], events[2], events[2])  # a re-sent backlog
        done = await wait_state(probe, root, sent["id"], "succeeded")
        assert done["updated"] >= running["updated"]
        assert [(e["event"]["type"], e["event"]["seq"]) for e in done["events"]] == [
            ("accepted", 1), ("started", 2), ("succeeded", 3),
        ]  # fmt: skip
        await probe.wait_json(root.controller_status(), after=mark, duplicates=3)

        logged = await ask_ok(probe, root, EventList(env="edge-a"))
        assert [e["event"]["seq"] for e in logged] == [1, 2, 3]
        later = await ask_ok(probe, root, EventList(env="edge-a", after=logged[0]["id"]))
        assert [e["event"]["seq"] for e in later] == [2, 3]
        listed = await ask_ok(probe, root, DeploymentList(env="edge-a"))
        assert [(d["id"], d["state"]) for d in listed] == [(sent["id"], "succeeded")]


@pytest.mark.slow
async def test_every_gate_refusal_names_its_cause(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(
            broker, root, tmp_path, procs, probe,
            "--flap-window", "60", "--flap-high", "4", "--flap-low", "1",
        )  # fmt: skip
        for env in ("edge-old", "edge-gone", "edge-flappy", "edge-retired"):
            await create(probe, root, env)
        await online(probe, root, "edge-old", models={"defect-detector": ["1.0"]})
        await online(probe, root, "edge-gone")
        await online(probe, root, "edge-stray")  # no record
        for env in ("edge-old", "edge-gone", "edge-stray"):
            await probe.wait_json(root.view(env), status="online")
        await will(probe, root, "edge-gone")
        await probe.wait_json(root.view("edge-gone"), status="offline")
        for bdseq in range(3):
            await online(probe, root, "edge-flappy", bdseq=bdseq)
            await will(probe, root, "edge-flappy", bdseq=bdseq)
        await probe.wait_json(root.alerts("edge-flappy"), state="raised")
        await ask_ok(probe, root, EnvRetire(id="edge-retired"))

        expected = {
            "ghost": ("not-found", "no environment 'ghost'; create it with: edgeplane env create"),
            "edge-stray": ("not-found", "'edge-stray' is not registered"),
            "edge-retired": ("retired", "environment 'edge-retired' was retired at"),
            "edge-flappy": ("flapping", "environment 'edge-flappy' is flapping"),
            "default-cloud": ("offline", "'default-cloud' has never been online"),
            "edge-gone": ("offline", "environment 'edge-gone' is offline since 20"),
            "edge-old": ("missing-model",
                         "model defect-detector >=2.1,<3 is not on edge-old "
                         "(has: defect-detector 1.0)"),
        }  # fmt: skip
        mark = probe.mark()
        for env, (code, sentence) in expected.items():
            reply = await ask(probe, root, deploy(env))
            assert (reply.ok, reply.code) == (False, code), (env, reply)
            assert sentence in reply.error, (env, reply.error)
        gone = await ask(probe, root, deploy("edge-gone"))
        assert "(last heartbeat 20" in gone.error
        assert gone.error.endswith("; add --when-online to queue it")
        assert not [m for m in probe.messages[mark:] if m.topic.endswith("/cmd")]
        assert await ask_ok(probe, root, DeploymentList()) == []


@pytest.mark.slow
async def test_when_online_queues_until_the_next_online_or_expires_at_its_ttl(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        await start_controller(broker, root, tmp_path, procs, probe)
        for env in ("edge-late", "edge-never"):
            await create(probe, root, env)
        first = await ask_ok(probe, root, deploy("edge-late", when_online=True))
        second = await ask_ok(probe, root, deploy("edge-late", when_online=True, dry_run=True))
        doomed = await ask_ok(probe, root, deploy("edge-never", when_online=True, ttl=1.0))
        assert [d["state"] for d in (first, second, doomed)] == ["queued"] * 3
        assert doomed["expires"] == pytest.approx(doomed["created"] + 1.0)

        mark = probe.mark()
        await online(probe, root, "edge-late", models={"defect-detector": ["2.1"]})
        # both go out, the oldest first; the dry run keeps its flag
        await probe.wait_for(
            lambda m: (
                len([x for x in probe.messages[mark:] if x.topic == root.cmd("edge-late")]) >= 2
            ),
            after=mark,
            what="two commands",
        )
        sent = [m for m in probe.messages[mark:] if m.topic == root.cmd("edge-late")]
        deploys = [command_of(m) for m in sent]
        assert [(c.dep, c.dry_run) for c in deploys if isinstance(c, Deploy)] == [
            (first["id"], False), (second["id"], True),
        ]  # fmt: skip
        assert (await wait_state(probe, root, first["id"], "sent"))["cmd"] == deploys[0].id

        expired = await probe.wait_json(
            root.events("edge-never"), type="expired", dep=doomed["id"], timeout=10
        )
        assert expired["src"] == "controller"
        assert "did not come online" in expired["reason"]
        shown = await wait_state(probe, root, doomed["id"], "expired")
        assert [e["event"]["type"] for e in shown["events"]] == ["expired"]
        assert not [m for m in probe.messages if m.topic == root.cmd("edge-never")]


@pytest.mark.slow
async def test_retire_clears_the_view_tells_the_agent_and_keeps_the_history(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        controller = await start_controller(broker, root, tmp_path, procs, probe)
        await create(probe, root, "edge-r")
        await online(probe, root, "edge-r", models={"defect-detector": ["2.2"]})
        await probe.wait_json(root.view("edge-r"), status="online")
        sent = await ask_ok(probe, root, deploy("edge-r"))
        await send(probe, root, *agent_events("edge-r", sent["id"], sent["cmd"]))
        await wait_state(probe, root, sent["id"], "succeeded")
        restart = await ask_ok(probe, root, EnvRestart(id="edge-r"))
        assert restart["cmd"].startswith("c-")

        mark = probe.mark()
        retired = await ask_ok(probe, root, EnvRetire(id="edge-r"))
        assert (retired["status"], retired["retired"] is not None) == ("retired", True)
        await probe.wait_for(
            lambda m: m.topic == root.view("edge-r") and m.payload == b"", after=mark,
            what="the cleared view",
        )  # fmt: skip
        command = command_of(await next_command(probe, root, "edge-r", mark))
        assert isinstance(command, Retire)
        refused = await ask(probe, root, deploy("edge-r"))
        assert (refused.ok, refused.code) == (False, "retired")

        # its heartbeats no longer make a view; a new connection gets the retire again
        mark = probe.mark()
        await will(probe, root, "edge-r")
        await online(probe, root, "edge-r", bdseq=2)
        again = command_of(await next_command(probe, root, "edge-r", mark))
        assert isinstance(again, Retire)
        assert not [m for m in probe.messages[mark:] if m.topic == root.view("edge-r")]
        history = await ask_ok(probe, root, EventList(env="edge-r"))
        assert [e["event"]["type"] for e in history] == ["accepted", "started", "succeeded"]
        assert await controller.proc.terminate() == 0

    # after a restart the view stays cleared (the reply comes once the views are synced)
    topics = (root.view("edge-r"), root.controller_status(), reply_topic(root))
    async with open_probe(broker.url, *topics) as late:
        await start_controller(broker, root, tmp_path, procs, late, db=controller.db)
        shown = await ask_ok(late, root, EnvShow(id="edge-r"))
        assert shown["status"] == "retired"
        assert not [m for m in late.messages if m.topic == root.view("edge-r") and m.payload]


@pytest.mark.slow
async def test_a_deployment_in_flight_is_followed_across_a_controller_restart(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with everything(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe)
        await create(probe, root, "edge-f")
        await create(probe, root, "edge-q")
        await online(probe, root, "edge-f", models={"defect-detector": ["2.9"]})
        await probe.wait_json(root.view("edge-f"), status="online")
        sent = await ask_ok(probe, root, deploy("edge-f"))
        queued = await ask_ok(probe, root, deploy("edge-q", when_online=True, dry_run=True))
        accepted, started, succeeded = agent_events("edge-f", sent["id"], sent["cmd"])
        await send(probe, root, accepted)
        await wait_state(probe, root, sent["id"], "accepted")

        await first.proc.kill()
        await send(probe, root, started, succeeded)  # while no controller runs
        mark = probe.mark()
        await start_controller(broker, root, tmp_path, procs, probe, db=first.db)
        done = await wait_state(probe, root, sent["id"], "succeeded")
        assert [e["event"]["seq"] for e in done["events"]] == [1, 2, 3]
        # the queued one survived too, and goes out when its environment comes online
        await online(probe, root, "edge-q")
        command = command_of(await next_command(probe, root, "edge-q", mark))
        assert isinstance(command, Deploy)
        assert (command.dep, command.dry_run) == (queued["id"], True)


@pytest.mark.slow
async def test_force_with_a_reason_deploys_to_a_flapping_environment_recorded_for_good(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    flags = ("--flap-window", "60", "--flap-high", "4", "--flap-low", "1")
    async with everything(broker, root) as probe:
        first = await start_controller(broker, root, tmp_path, procs, probe, *flags)
        await create(probe, root, "edge-flappy")
        for bdseq in range(3):
            await online(probe, root, "edge-flappy", bdseq=bdseq)
            await will(probe, root, "edge-flappy", bdseq=bdseq)
        await probe.wait_json(root.alerts("edge-flappy"), state="raised")
        # flapping and offline: --force is no way past offline
        offline = await ask(probe, root, deploy("edge-flappy", force=True, reason="urgent"))
        assert (offline.ok, offline.code) == (False, "offline")
        mark = probe.mark()
        await online(probe, root, "edge-flappy", bdseq=3, models={"defect-detector": ["2.2"]})
        await probe.wait_json(root.view("edge-flappy"), after=mark, status="online", flapping=True)

        refused = await ask(probe, root, deploy("edge-flappy"))
        assert (refused.ok, refused.code) == (False, "flapping")
        no_reason = await ask(probe, root, deploy("edge-flappy", force=True))
        assert (no_reason.ok, no_reason.code) == (False, "invalid")
        assert "a reason is required" in no_reason.error

        mark = probe.mark()
        sent = await ask_ok(
            probe, root, deploy("edge-flappy", force=True, reason="camera driver hotfix")
        )
        assert (sent["state"], sent["forced"]) == ("sent", "flapping: camera driver hotfix")
        command = command_of(await next_command(probe, root, "edge-flappy", mark))
        assert isinstance(command, Deploy)
        assert command.dep == sent["id"]
        own = await probe.wait_json(root.events("edge-flappy"), after=mark, type="overridden")
        assert (own["src"], own["dep"], own["check"], own["reason"]) == (
            "controller", sent["id"], "flapping", "camera driver hotfix"
        )  # fmt: skip
        shown = await ask_ok(probe, root, DeploymentShow(id=sent["id"]))
        assert shown["forced"] == "flapping: camera driver hotfix"
        assert [e["event"]["type"] for e in shown["events"]] == ["overridden"]

        # the record keeps it across a restart of the controller (the store's column)
        assert await first.proc.terminate() == 0
        await start_controller(broker, root, tmp_path, procs, probe, *flags, db=first.db)
        again = await ask_ok(probe, root, DeploymentShow(id=sent["id"]))
        assert again["forced"] == "flapping: camera driver hotfix"
