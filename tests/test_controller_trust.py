"""The controller trusts nothing it did not send: events of deployments it never sent (or
sent to another environment), a preflight that checks less than the workflow requires,
replies to topics that are not a requester's own, retained views written by someone else,
and text that would take over an operator's terminal. A real controller and
broker; the agents are impersonated by hand, as an attacker would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Check,
    CommandRejected,
    Deploy,
    Event,
    Expired,
    Failed,
    Pong,
    Preflight,
    Started,
    StepFinished,
    Succeeded,
)
from edgeplane.shared.rpc import EnvList
from edgeplane.shared.topics import TopicRoot
from tests.support.asking import ask
from tests.support.command_key import opened
from tests.support.probe import open_probe
from tests.support.procs import Proc
from tests.support.system import System, open_system

pytestmark = pytest.mark.slow


async def fake_online(system: System, env: str, **fields: Any) -> None:
    """A hand-written heartbeat, retained like an agent's, judged online."""
    mark = system.probe.mark()
    status = {"status": "online", "env": env, "bdseq": 1, "seq": 0, "interval": 30,
              "boot": "boot-a", **fields}  # fmt: skip
    await system.probe.publish(system.root.status(env), json.dumps(status).encode(), retain=True)
    await system.probe.wait_json(system.root.view(env), after=mark, status="online")


async def send(system: System, *events: Event) -> None:
    for event in events:
        await system.probe.publish(system.root.events(event.env), encode(event))


async def dropped(system: System, after: int, **counts: int) -> dict[str, Any]:
    """The controller's retained status once its ``dropped`` counters say ``counts``."""
    wanted = {reason.replace("_", "-"): count for reason, count in counts.items()}
    status: dict[str, Any] = await system.probe.wait_json(
        system.root.controller_status(), after=after, dropped=wanted
    )
    return status


async def next_deploy(system: System, env: str, after: int) -> Deploy:
    message = await system.probe.wait_for(
        lambda m: m.topic == system.root.cmd(env), after=after, what=f"a command for {env}"
    )
    command = opened(message.payload)
    assert isinstance(command, Deploy)
    return command


# --- 1. events of a deployment the controller never sent ----------------------------------------
async def test_events_of_a_deployment_never_sent_are_dropped_counted_and_never_shown(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller("--stats-interval", "0.3")
        await system.create_env("edge-a")
        await fake_online(system, "edge-a")
        deployments_before = (await system.cli("deployments", "list")).stdout
        events_before = (await system.cli("events", "--env", "edge-a")).stdout
        mark = system.probe.mark()
        forged: dict[str, Any] = {"env": "edge-a", "src": "agent-1", "dep": "d-made-up",
                                  "cmd": "c-made-up"}  # fmt: skip
        # a high seq of the agent's own stream: were it counted as seen, it would hide the
        # agent's real events that follow
        await send(
            system,
            Started(seq=1000, workflow="w", version="1", **forged),
            Succeeded(seq=1001, duration=0.1, **forged),
        )
        status = await dropped(system, mark, unknown_deployment=2)
        assert status["status"] == "online"
        assert (await system.cli("deployments", "list")).stdout == deployments_before
        assert (await system.cli("events", "--env", "edge-a")).stdout == events_before
        assert await system.logged_events("edge-a") == []

        # a real deployment: the agent's events count; one naming a command never sent, not
        plain = {"name": "plain", "version": "1", "steps": [{"name": "s", "run": ["true"]}]}
        workflow = system.workflow("plain", plain)
        mark = system.probe.mark()
        sent = await system.cli("deploy", str(workflow), "--env", "edge-a", "--json")
        assert sent.code == 0, str(sent)
        command = await next_deploy(system, "edge-a", mark)
        mine: dict[str, Any] = {"env": "edge-a", "src": "agent-1", "dep": command.dep}
        await send(system, Started(seq=5, workflow="w", version="1", cmd="c-made-up", **mine))
        await dropped(system, mark, unknown_deployment=3)
        await send(
            system,
            Accepted(seq=1, workflow="plain", version="1", cmd=command.id, **mine),
            Succeeded(seq=2, duration=0.1, cmd=command.id, **mine),
        )
        done = await system.wait_deployment(command.dep)
        assert done["state"] == "succeeded"
        logged = await system.logged_events("edge-a")
        assert [(e["type"], e["seq"]) for e in logged] == [("accepted", 1), ("succeeded", 2)]
        log = (tmp_path / "controller-0.log").read_text()
        assert "no deployment 'd-made-up' was sent to edge-a" in log


async def test_events_from_one_environment_naming_anothers_deployment_are_dropped(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller("--stats-interval", "0.3")
        for env in ("edge-a", "edge-b"):
            await system.create_env(env)
            await fake_online(system, env)
        plain = {"name": "plain", "version": "1", "steps": [{"name": "s", "run": ["true"]}]}
        mark = system.probe.mark()
        sent = await system.cli("deploy", str(system.workflow("plain", plain)), "--env", "edge-a")
        assert sent.code == 0, str(sent)
        deploy = await next_deploy(system, "edge-a", mark)
        restart = await system.cli_json("env", "restart", "edge-a", "--no-wait")
        mark = system.probe.mark()
        # B, on its own events topic, answering for A's deployment and A's commands
        by_b: dict[str, Any] = {"env": "edge-b", "src": "agent-b"}
        await send(
            system,
            CommandRejected(seq=1, dep=deploy.dep, cmd=deploy.id, reason="forged by B", **by_b),
            Expired(seq=2, dep=deploy.dep, reason="forged by B", **by_b),
            Ack(seq=3, cmd=restart["cmd"], op="restart", ok=True, detail="forged by B", **by_b),
            Pong(seq=4, cmd=deploy.id, **by_b),
        )
        await dropped(system, mark, unknown_deployment=4)
        shown = await system.cli("deployments", "show", deploy.dep)
        assert shown.code == 0, str(shown)
        assert "forged by B" not in shown.stdout
        assert (await system.show_deployment(deploy.dep))["state"] == "sent"
        assert await system.cli_json("events", "--env", "edge-b") == []  # none logged

        # A's own answers to what was sent to A count
        by_a: dict[str, Any] = {"env": "edge-a", "src": "agent-a"}
        await send(
            system,
            Ack(seq=1, cmd=restart["cmd"], op="restart", ok=True, **by_a),
            CommandRejected(seq=2, dep=deploy.dep, cmd=deploy.id, reason="not today", **by_a),
        )
        done = await system.wait_deployment(deploy.dep)
        assert (done["state"], done["reason"]) == ("rejected", "not today")
        logged = await system.logged_events("edge-a")
        assert [(e["type"], e["seq"]) for e in logged] == [("ack", 1), ("rejected", 2)]
        assert "rejected: not today" in (await system.cli("deployments", "show", deploy.dep)).stdout
        log = (tmp_path / "controller-0.log").read_text()
        assert f"no deployment '{deploy.dep}' was sent to edge-b" in log


# --- 2. a preflight must cover what the workflow requires ----------------------------------------
NEEDY = {
    "name": "vision-inspect",
    "version": "1.4.0",
    "requires": {
        "models": [{"name": "defect-detector", "version": ">=2.1,<3"}],
        "secrets": ["CAMERA_TOKEN"],
    },
    "steps": [{"name": "inspect", "run": ["true"]}],
}


async def impersonate(system: System, env: str, after: int) -> None:
    """Answer the next deploy as the impersonator did: "preflight passed: nothing required",
    then success."""
    command = await next_deploy(system, env, after)
    mine: dict[str, Any] = {"env": env, "src": "fake", "dep": command.dep, "cmd": command.id}
    await send(
        system,
        Accepted(seq=1, workflow="vision-inspect", version="1.4.0", **mine),
        Preflight(seq=2, ok=True, checks=[], **mine),
        Started(seq=3, workflow="vision-inspect", version="1.4.0", **mine),
        Succeeded(seq=4, duration=0.1, **mine),
    )


async def test_an_empty_preflight_fails_deploy_wait_naming_every_unchecked_requirement(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-a")
        await fake_online(system, "edge-a", models={"defect-detector": ["2.4.0"]})
        workflow = system.workflow("vision-inspect", NEEDY)
        mark = system.probe.mark()
        agent = asyncio.create_task(impersonate(system, "edge-a", mark))
        result = await system.deploy(workflow, "edge-a", "--wait")
        await agent
        assert result.code == 1, str(result)
        unchecked = "preflight did not check: model defect-detector, secret CAMERA_TOKEN"
        assert unchecked in result.stderr
        assert "succeeded" not in result.stderr
        dep = result.stdout.split()[1]
        shown = await system.wait_deployment(dep)
        assert (shown["state"], shown["reason"]) == ("failed", unchecked)
        # the controller told it on the events topic too, as its own event
        told = await system.wait_event("edge-a", "failed", after=mark, src="controller")
        assert told["reason"] == unchecked


# --- 3. replies only on a requester's own reply topic --------------------------------------------
async def test_a_request_whose_response_topic_is_not_a_reply_topic_is_dropped_and_unanswered(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    elsewhere = f"elsewhere-{str(root).replace('/', '-')}"
    relays = [
        root.view("edge-a"),  # a forged view
        root.cmd("edge-a"),  # a command to an agent
        f"{elsewhere}/anything",  # outside the tree
        f"{root}/controller/reply/Not_An_Id",
        f"{root}/controller/reply/a/b",
        f"{root}/controller/req",  # a loop
    ]
    async with (
        open_system(broker, root, tmp_path, procs) as system,
        open_probe(broker.url, f"{elsewhere}/#") as outside,
    ):
        await system.start_controller("--stats-interval", "0.3")
        mark = system.probe.mark()
        for topic in relays:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = topic
            properties.CorrelationData = b"relay"
            await system.probe.client.publish(
                root.requests(), encode(EnvList()), qos=1, properties=properties
            )
        await dropped(system, mark, bad_response_topic=len(relays))
        # the controller still answers a requester on its own topic ...
        reply = await ask(system.probe, root, EnvList())
        assert reply.ok
        # ... and published nothing on any of the others
        answered = [m for m in system.probe.messages[mark:] if m.topic in relays]
        assert [m.topic for m in answered if m.topic != root.requests()] == []
        assert [m.payload for m in answered] == [encode(EnvList())] * (len(relays) + 1)  # ours
        assert outside.messages == []


# --- 4. a view wiped or forged by hand comes back -----------------------------------------------
async def retained_view(broker: MosquittoProcess, root: TopicRoot, env: str) -> bytes:
    """What a dashboard connecting now is given for ``env``'s view."""
    async with open_probe(broker.url, root.all_views()) as fresh:
        await fresh.subscribe(f"{root}/test-barrier")
        await fresh.publish(f"{root}/test-barrier", b"x")
        await fresh.wait_for(lambda m: m.topic == f"{root}/test-barrier", what="the barrier")
        return b"".join(m.payload for m in fresh.messages if m.topic == root.view(env))


async def test_a_view_wiped_or_forged_by_hand_is_put_back_by_the_controller(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-a")
        await fake_online(system, "edge-a")
        ours = json.loads(system.probe.on(root.view("edge-a"))[-1].payload)
        probe = system.probe

        mark = probe.mark()
        await probe.publish(root.view("edge-a"), b"", retain=True)  # wiped
        back = await probe.wait_json(root.view("edge-a"), after=mark, status="online")
        assert (back["since"], back["registered"]) == (ours["since"], True)

        mark = probe.mark()
        forged = {**ours, "status": "offline", "reason": "connection-lost"}
        await probe.publish(root.view("edge-a"), json.dumps(forged).encode(), retain=True)
        # corrected at most once per 5 s per environment: this one may wait for its turn
        fixed = await probe.wait_json(root.view("edge-a"), after=mark, status="online")
        assert fixed["since"] == ours["since"]
        assert json.loads(await retained_view(broker, root, "edge-a"))["status"] == "online"

        # a view of an environment the controller does not know: cleared
        mark = probe.mark()
        await probe.publish(root.view("ghost"), b'{"env":"ghost","status":"online","since":1}',
                            retain=True)  # fmt: skip
        await probe.wait_for(
            lambda m: m.topic == root.view("ghost") and m.payload == b"",
            after=mark,
            what="the ghost view cleared",
        )
        assert await retained_view(broker, root, "ghost") == b""


# --- 5. what an environment writes reaches a terminal as text, never as control ------------------
HOSTILE = "\x1b[2J\x1b[31mgone\x00\n2026-01-01 00:00:00  edge-b  d-1  succeeded in 1.0 s\r\u202e"
FORGED_LINE = "2026-01-01 00:00:00  edge-b"


def assert_terminal_safe(result: Any) -> None:
    """Nothing in a command's output a terminal would obey, and no line made up by the
    environment."""
    for stream in (result.stdout, result.stderr):
        for char in ("\x1b", "\x00", "\r", "\u202e", "\x9b"):
            assert char not in stream, str(result)
        assert not any(line.startswith(FORGED_LINE) for line in stream.splitlines()), str(result)


async def hostile_agent(system: System, env: str, after: int, *, reject: bool) -> None:
    """Answer the next deploy with events full of control characters: a refusal, or a
    step that fails with such output."""
    command = await next_deploy(system, env, after)
    mine: dict[str, Any] = {"env": env, "src": "fake", "dep": command.dep, "cmd": command.id}
    if reject:
        await send(system, CommandRejected(seq=1, reason=HOSTILE, **mine))
        return
    check = Check(kind="secret", name="X\x1b]0;owned\x07", ok=True, detail=HOSTILE)
    stderr = f"first\n{HOSTILE}\nlast\x1b[0m"
    finished: dict[str, Any] = {"step": "s", "index": 0, "exit_code": 1, "duration": 0.1,
                                "ok": False}  # fmt: skip
    await send(
        system,
        Accepted(seq=11, workflow="plain\x1b[2J", version="1\n2", **mine),
        Preflight(seq=12, ok=True, checks=[check], **mine),
        StepFinished(seq=13, stderr=stderr, **finished, **mine),
        Failed(seq=14, step="s", reason=HOSTILE, **mine),
    )


async def test_control_characters_in_events_never_reach_the_operators_terminal(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-a")
        await fake_online(system, "edge-a", models={"m\x1b[2J": [HOSTILE]})
        plain = {"name": "plain", "version": "1", "steps": [{"name": "s", "run": ["true"]}]}
        workflow = system.workflow("plain", plain)
        mark = system.probe.mark()
        agent = asyncio.create_task(hostile_agent(system, "edge-a", mark, reject=False))
        waited = await system.deploy(workflow, "edge-a", "--wait")
        await agent
        assert waited.code == 1, str(waited)
        assert_terminal_safe(waited)
        assert "    stderr | 2026-01-01 00:00:00  edge-b" in waited.stdout  # indented, shown
        failed = waited.stdout.split()[1]
        mark = system.probe.mark()
        agent = asyncio.create_task(hostile_agent(system, "edge-a", mark, reject=True))
        sent = await system.cli("deploy", str(workflow), "--env", "edge-a")
        await agent
        rejected = sent.stdout.split()[1]
        assert (await system.wait_deployment(rejected))["state"] == "rejected"

        shown = await system.cli("deployments", "show", rejected)
        assert_terminal_safe(shown)
        assert "rejected: \\x1b[2J\\x1b[31mgone\\x00\\n2026-01-01" in shown.stdout
        for argv in (
            ("events", "--env", "edge-a"),
            ("deployments", "show", failed),
            ("deployments", "list"),
            ("env", "show", "edge-a"),
            ("env", "list"),
            ("status",),
        ):
            result = await system.cli(*argv)
            assert result.code == 0, str(result)
            assert_terminal_safe(result)
        # --json stays exact
        logged = await system.logged_events("edge-a")
        assert [e["reason"] for e in logged if e["type"] in ("failed", "rejected")] == [
            HOSTILE, HOSTILE,
        ]  # fmt: skip
