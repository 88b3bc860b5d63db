"""The operations log's incidents end to end: a real controller, real agents, the broker
and the operator CLI. An agent killed with SIGKILL opens an ``offline`` incident that its
return resolves; a clean stop opens none; ``incidents ack`` and ``resolve`` through the
CLI; ``events --env`` shows the transitions beside the events; a late subscriber sees the
retained alert state; an unknown environment or id is a one-line error.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.controller import heartbeat, will
from tests.support.procs import Proc
from tests.support.system import System, open_system, retained_now

pytestmark = pytest.mark.slow


async def incidents(system: System, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await system.cli_json("incidents", *args)
    return found


async def kill_and_wait_offline(system: System, env: str, proc: Proc) -> None:
    after = system.probe.mark()
    proc.signal(signal.SIGKILL)
    await system.probe.wait_json(system.root.view(env), after=after, status="offline", timeout=20)


async def test_a_killed_agent_opens_offline_and_its_return_resolves_it(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-kill")
        assert await incidents(system, "--env", "edge-kill") == []
        await kill_and_wait_offline(system, "edge-kill", agent.proc)

        (incident,) = await incidents(system, "--env", "edge-kill", "--open")
        assert (incident["kind"], incident["severity"], incident["state"]) == (
            "offline",
            "critical",
            "open",
        )
        assert "connection-lost" in incident["detail"]
        status = await system.cli_json("status")
        (row,) = [r for r in status if r["env"] == "edge-kill"]
        assert row["open_incidents"] == 1
        shown = await system.cli("env", "show", "edge-kill")
        assert re.search(
            rf"^incident: +{incident['id']} offline \(critical, open\)", shown.stdout, re.M
        ), shown

        acked = await system.cli("incidents", "ack", incident["id"], "--note", "looking")
        assert acked.code == 0, str(acked)
        assert re.search(r"^state: +acknowledged$", acked.stdout, re.M), str(acked)

        after = system.probe.mark()
        await system.start_agent("edge-kill")
        await system.probe.wait_json(
            root.view("edge-kill"), after=after, status="online", open_incidents=0
        )
        (resolved,) = await incidents(system, "--env", "edge-kill")
        assert resolved["id"] == incident["id"]
        assert resolved["state"] == "resolved"
        assert [(s["state"], s["note"]) for s in resolved["timeline"]] == [
            ("opened", "went offline unexpectedly (connection-lost)"),
            ("acknowledged", "looking"),
            ("resolved", "came back"),
        ]
        text = await system.cli("incidents", "show", incident["id"])
        assert text.code == 0, str(text)
        assert "timeline:" in text.stdout
        assert "came back" in text.stdout
        assert await incidents(system, "--open") == []


async def test_a_clean_stop_opens_no_incident(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-clean")
        after = system.probe.mark()
        await agent.proc.terminate()
        await system.probe.wait_json(root.view("edge-clean"), after=after, status="offline")
        assert await incidents(system, "--env", "edge-clean") == []


async def test_an_operator_resolves_an_incident_and_a_resolved_one_is_refused(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-res")
        await kill_and_wait_offline(system, "edge-res", agent.proc)
        (incident,) = await incidents(system, "--open")
        done = await system.cli("incidents", "resolve", incident["id"], "--note", "replaced")
        assert done.code == 0, str(done)
        assert await incidents(system, "--open") == []
        again = await system.cli("incidents", "resolve", incident["id"], "--note", "twice")
        assert again.code == 1, str(again)
        assert again.stderr.count("\n") == 1
        assert "resolved already" in again.stderr


async def test_unknown_environments_and_ids_are_errors(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        for args in (
            ("incidents", "--env", "nope"),
            ("incidents", "show", "i-0000000000"),
            ("incidents", "ack", "i-0000000000", "--note", "x"),
        ):
            result = await system.cli(*args)
            assert result.code == 1, str(result)
            assert result.stdout == ""
            assert result.stderr.count("\n") == 1, str(result)
            assert "nope" in result.stderr or "i-0000000000" in result.stderr
        usage = await system.cli("incidents", "--since", "soon")
        assert usage.code == 2, str(usage)
        assert "invalid duration" in usage.stderr
        kind = await system.cli("incidents", "--kind", "offlin")
        assert kind.code == 2, str(kind)
        assert "unknown kind 'offlin': one of command-refused," in kind.stderr


async def test_events_show_the_transitions_beside_the_events_in_time_order(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-ev")
        await kill_and_wait_offline(system, "edge-ev", agent.proc)
        after = system.probe.mark()
        await system.start_agent("edge-ev")
        await system.probe.wait_json(
            root.view("edge-ev"), after=after, status="online", open_incidents=0
        )

        entries = await system.cli_json("events", "--env", "edge-ev", "--timeline")
        transitions = [(e["to_status"], e["reason"]) for e in entries if e["entry"] == "transition"]
        assert transitions[-3:] == [
            ("online", "heartbeat"),
            ("offline", "connection-lost"),
            ("online", "heartbeat"),
        ]
        times = [e["at"] for e in entries]
        assert times == sorted(times)
        text = await system.cli("events", "--env", "edge-ev")
        lines = [line for line in text.stdout.splitlines() if "edge-ev  -  " in line]
        assert [line.split("  -  ")[1] for line in lines][-2:] == [
            "offline (connection-lost), was online",
            "online (heartbeat), was offline",
        ]
        # --json without --timeline: the event log as it was (this agent logged no events)
        for args in (("events",), ("events", "--env", "edge-ev")):
            logged = await system.cli_json(*args)
            assert all("entry" not in e and "event" in e for e in logged)


async def test_a_late_subscriber_sees_the_open_flapping_episode(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller("--flap-high", "3", "--flap-low", "0")
        after = system.probe.mark()
        for bdseq in (1, 2):
            await heartbeat(system.probe, root, "edge-flap", bdseq=bdseq, seq=0, interval=30)
            await will(system.probe, root, "edge-flap", bdseq=bdseq)
        await system.probe.wait_json(root.alerts("edge-flap"), after=after, state="raised")

        topic = root.alert_state("edge-flap", "flapping")
        held = await retained_now(broker, topic)
        assert json.loads(held[topic])["state"] == "raised"
        (flapping,) = await incidents(system, "--kind", "flapping", "--open")
        assert (flapping["env"], flapping["severity"]) == ("edge-flap", "warning")

        mark = system.probe.mark()
        forgotten = await system.cli("env", "forget", "edge-flap")
        assert forgotten.code == 0, str(forgotten)
        await system.probe.wait_for(
            lambda m: m.topic == topic and not m.payload, after=mark, what="alert state cleared"
        )
        assert topic not in await retained_now(broker, topic)
        assert await incidents(system, "--open") == []


async def test_open_incidents_survive_a_controller_restart_and_are_not_opened_twice(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online("edge-rs")
        await kill_and_wait_offline(system, "edge-rs", agent.proc)
        (before,) = await incidents(system, "--open")
        assert system.controller is not None
        await system.controller.terminate()
        await system.start_controller()
        assert [i["id"] for i in await incidents(system, "--open")] == [before["id"]]

        after = system.probe.mark()
        await system.start_agent("edge-rs")
        await system.probe.wait_json(
            root.view("edge-rs"), after=after, status="online", open_incidents=0
        )
        (only,) = await incidents(system, "--env", "edge-rs")
        assert (only["id"], only["state"], only["count"]) == (before["id"], "resolved", 1)


async def test_a_failing_preflight_opens_an_incident_a_later_success_resolves(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-pf", secrets={"TOKEN": "x"})
        step = {"name": "noop", "run": [sys.executable, "-c", "pass"], "timeout": 30}
        needs = system.workflow(
            "needs", {"name": "needs", "version": "1", "steps": [step],
                      "requires": {"secrets": ["TOKEN", "MISSING_TOKEN"]}},
        )  # fmt: skip
        failed = await system.deploy(needs, "edge-pf", "--wait")
        assert failed.code == 1, str(failed)
        (incident,) = await incidents(system, "--env", "edge-pf", "--open")
        assert incident["kind"] == "preflight-failed"
        assert "MISSING_TOKEN" in incident["detail"]

        fine = system.workflow("fine", {"name": "fine", "version": "1", "steps": [step]})
        done = await system.deploy(fine, "edge-pf", "--wait")
        assert done.code == 0, str(done)
        assert await incidents(system, "--env", "edge-pf", "--open") == []
        (resolved,) = await incidents(system, "--env", "edge-pf")
        assert resolved["timeline"][-1]["state"] == "resolved"


async def test_logins_the_broker_refused_open_an_incident_a_clean_login_resolves(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        told = {"status": "online", "env": "edge-pw", "bdseq": 1, "seq": 0, "interval": 30,
                "boot": "b", "refused": 2, "refused_reason": "Not authorized"}  # fmt: skip
        after = system.probe.mark()
        await system.probe.publish(root.status("edge-pw"), json.dumps(told).encode(), retain=True)
        await system.probe.wait_json(
            root.view("edge-pw"), after=after, status="online", open_incidents=1
        )
        (incident,) = await incidents(system, "--env", "edge-pw", "--open")
        assert (incident["kind"], incident["severity"]) == ("login-refused", "warning")
        assert incident["detail"] == (
            "the broker refused 2 login(s) before this connection: Not authorized"
        )
        # a later heartbeat of the same connection says nothing of logins: still open
        await heartbeat(system.probe, root, "edge-pw", bdseq=1, seq=1)
        after = system.probe.mark()
        await heartbeat(system.probe, root, "edge-pw", bdseq=2, seq=0)  # logged in at once
        await system.probe.wait_json(root.view("edge-pw"), after=after, open_incidents=0)
        (resolved,) = await incidents(system, "--env", "edge-pw")
        assert resolved["state"] == "resolved"
        assert resolved["timeline"][-1]["note"] == "a connection logged in at once"
