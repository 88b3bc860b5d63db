"""The edge agent's presence, end to end: real agent processes against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.codec import STATUS
from edgeplane.shared.messages import OnlineStatus
from edgeplane.shared.topics import TopicRoot
from tests.support.agent_procs import INTERVAL, start_agent, start_piped_agent, wait_online
from tests.support.command_key import signed
from tests.support.probe import Received, open_probe
from tests.support.procs import Proc


def is_online(topic: str, **fields: Any) -> Callable[[Received], bool]:
    def matches(message: Received) -> bool:
        if message.topic != topic or not message.payload:
            return False
        data = json.loads(message.payload)
        return bool(data.get("status") == "online") and all(
            data.get(k) == v for k, v in fields.items()
        )

    return matches


def rejected_for(topic: str, reason: str) -> Callable[[Received], bool]:
    def matches(message: Received) -> bool:
        if message.topic != topic:
            return False
        data = json.loads(message.payload)
        return data.get("type") == "rejected" and str(data.get("reason")).startswith(reason + ":")

    return matches


async def wait_output(proc: Proc, text: str, timeout: float = 15.0) -> str:
    """Poll the process's log until ``text`` appears in it."""
    async with asyncio.timeout(timeout):
        while text not in proc.output():  # noqa: ASYNC110 - a log file has no event to await
            await asyncio.sleep(0.05)
    return proc.output()


async def test_birth_is_a_retained_online_with_every_field_and_an_expiry(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-birth"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env)
        first = await wait_online(probe, topic, seq=0)
        later = await wait_online(probe, topic, seq=3)
    assert first["env"] == env
    assert first["bdseq"] >= 1
    assert first["interval"] == INTERVAL
    assert len(first["boot"]) == 6
    for data in (first, later):
        assert isinstance(STATUS.decode(json.dumps(data).encode()), OnlineStatus)
        assert {"cpu", "mem", "disk", "ver"} <= data.keys()
        assert all(0 <= data[k] <= 100 for k in ("cpu", "mem", "disk"))
    assert later["up"] >= 1
    assert (later["bdseq"], later["boot"]) == (first["bdseq"], first["boot"])

    async with open_probe(broker.url, topic) as late:
        retained = await late.wait_for(lambda m: m.topic == topic, timeout=5)
    assert retained.retain, "a late subscriber gets the online as a retained message"
    assert len(retained.payload) <= 160
    assert retained.properties is not None
    expiry = getattr(retained.properties, "MessageExpiryInterval", None)
    assert expiry is not None
    assert 0 <= expiry <= 2, "about three intervals of 0.5 s"


async def test_commands_are_subscribed_before_online_is_published(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-cmd-first"
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env)
        await probe.wait_for(is_online(root.status(env)), timeout=15, what="online")
        await probe.publish(root.cmd(env), signed({"type": "ping", "id": "first"}, env))
        pong = await probe.wait_json(root.events(env), type="pong", cmd="first")
    assert pong["env"] == env
    assert pong["seq"] >= 1


async def test_sigterm_publishes_a_retained_shutdown_and_exits_0(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-stop"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        online = await wait_online(probe, topic)
        assert await agent.terminate() == 0
        offline = await probe.wait_json(topic, status="offline")
    assert offline == {
        "status": "offline",
        "env": env,
        "bdseq": online["bdseq"],
        "reason": "shutdown",
    }
    async with open_probe(broker.url, topic) as late:
        retained = await late.wait_json(topic)
    assert retained == offline, "the shutdown stays retained, and no will follows it"


@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGHUP],
    ids=["SIGINT (Ctrl-C)", "SIGHUP (the terminal closed)"],
)
async def test_sigint_and_sighup_stop_cleanly_too(
    signum: signal.Signals,
    broker: MosquittoProcess,
    root: TopicRoot,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    env = "dev-lab-sigint"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        online = await wait_online(probe, topic)
        agent.signal(signum)
        assert await agent.wait() == 0
    async with open_probe(broker.url, topic) as late:
        retained = await late.wait_json(topic)
    assert retained == {
        "status": "offline",
        "env": env,
        "bdseq": online["bdseq"],
        "reason": "shutdown",
    }


async def test_an_agent_whose_output_pipe_closed_runs_on_and_stops_cleanly(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    """``edge-agent run 2>&1 | tee log`` with the tee gone: every log line after it fails
    with EPIPE, which neither stops the agent nor spoils its clean stop."""
    env = "dev-lab-closed-pipe"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_piped_agent(
            procs, tmp_path, broker.url, root, env, "--log-level", "debug"
        )
        await agent.read_until('"event": "online"')
        online = await wait_online(probe, topic)
        agent.close_reader()
        # Every heartbeat is logged at debug level: these were logged into the closed pipe.
        await wait_online(probe, topic, after=probe.mark(), seq=online["seq"] + 3)
        assert agent.process.returncode is None
        assert await agent.terminate() == 0
        offline = await probe.wait_json(topic, status="offline")
    assert offline == {
        "status": "offline",
        "env": env,
        "bdseq": online["bdseq"],
        "reason": "shutdown",
    }


async def test_kill_9_leaves_the_will_with_the_bdseq_of_the_last_online(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-kill"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        await wait_online(probe, topic, seq=1)
        await agent.kill()
        will = await probe.wait_json(topic, status="offline")
        last_online = [json.loads(m.payload) for m in probe.on(topic)][-2]
    assert last_online["status"] == "online"
    assert will == {
        "status": "offline",
        "env": env,
        "bdseq": last_online["bdseq"],
        "reason": "connection-lost",
    }


async def test_bdseq_and_boot_change_across_restarts(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-restart"
    topic = root.status(env)
    state = tmp_path / "state"
    seen: list[dict[str, Any]] = []
    async with open_probe(broker.url, topic) as probe:
        for round_ in range(3):
            mark = probe.mark()
            agent = await start_agent(
                procs, tmp_path, broker.url, root, env, state_dir=state, name=f"agent{round_}"
            )
            seen.append(await wait_online(probe, topic, after=mark, seq=0))
            assert await agent.terminate() == 0
    bdseqs = [s["bdseq"] for s in seen]
    assert bdseqs == sorted(set(bdseqs)), bdseqs
    assert len({s["boot"] for s in seen}) == 3
    assert (state / "bdseq").read_text().strip() == str(bdseqs[-1])


@pytest.mark.slow
async def test_broker_restart_reconnects_with_a_new_bdseq_and_republishes_online(
    private_broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-broker-restart"
    topic = root.status(env)
    async with open_probe(private_broker.url, topic) as probe:
        agent = await start_agent(procs, tmp_path, private_broker.url, root, env)
        before = await wait_online(probe, topic)
    private_broker.kill()  # nothing saved: the broker has lost the retained online
    private_broker.start()
    async with open_probe(private_broker.url, topic) as probe:
        after = await probe.wait_for(
            lambda m: m.topic == topic and json.loads(m.payload).get("bdseq", 0) > before["bdseq"],
            timeout=30,
            what="an online with a new bdseq",
        )
    data = json.loads(after.payload)
    assert data["status"] == "online"
    assert data["boot"] == before["boot"], "the same process reconnected"
    assert "connection" in agent.output()


async def test_offline_of_another_bdseq_on_its_topic_is_answered_with_online(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-reassert"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        await start_agent(procs, tmp_path, broker.url, root, env, "--heartbeat-interval", "30")
        online = await wait_online(probe, topic)
        stale = {
            "status": "offline",
            "env": env,
            "bdseq": online["bdseq"] + 1000,
            "reason": "connection-lost",
        }
        mark = probe.mark()
        await probe.publish(topic, json.dumps(stale).encode(), retain=True)
        again = await wait_online(probe, topic, after=mark, timeout=5)
    assert (again["bdseq"], again["seq"]) == (online["bdseq"], online["seq"] + 1)
    async with open_probe(broker.url, topic) as late:
        retained = await late.wait_json(topic)
    assert retained["status"] == "online", "the stale offline did not stay retained"


@pytest.mark.slow
async def test_duplicate_identity_logs_an_error_and_does_not_ping_pong(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    """Each agent takes its session back once, at once (saying who took it), then the
    one taken over again waits: the other is heard alone, on one connection."""
    env = "dev-lab-twins"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        first = await start_agent(procs, tmp_path, broker.url, root, env, name="first")
        first_online = await wait_online(probe, topic)
        mark = probe.mark()
        second = await start_agent(procs, tmp_path, broker.url, root, env, name="second")
        second_online = await probe.wait_for(
            lambda m: is_online(topic)(m) and json.loads(m.payload)["boot"] != first_online["boot"],
            after=mark,
            timeout=15,
            what="the second agent online",
        )
        second_boot = json.loads(second_online.payload)["boot"]
        back = await wait_online(probe, topic, after=mark, boot=first_online["boot"], seq=0)
        assert back["taken_over_by"] == second_boot
        log = await wait_output(first, "waiting before connecting again")
        lines = [x for x in log.splitlines() if "session taken over" in x]
        assert [json.loads(x)["level"] for x in lines] == ["error", "error"]
        assert env in lines[0]
        assert "at once" in lines[0]
        assert "session taken over" in await wait_output(second, "at once")
        # For several heartbeats, only the second agent is heard, on one connection.
        window_start = probe.mark()
        await wait_online(probe, topic, after=window_start, boot=second_boot, seq=10)
    window = [json.loads(m.payload) for m in probe.messages[window_start:] if m.topic == topic]
    assert {w["boot"] for w in window if w["status"] == "online"} == {second_boot}
    assert len({w["bdseq"] for w in window if w["status"] == "online"}) == 1
    assert first.process.returncode is None, "the taken-over agent waits, it does not exit"
    assert first.output().count("session taken over") == 2


async def test_garbage_and_oversized_commands_are_rejected_and_the_agent_carries_on(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-garbage"
    bad = {
        b"garbage": "not-json",
        b"": "empty",
        b'{"type":"ping","id":"x"}': "unsigned",
        signed(b'{"type":"ping"}'): "schema",
        signed(b'{"type":"self-destruct","id":"x"}'): "unknown-command",
        b'{"type":"ping","id":"' + b"x" * 100_000 + b'"}': "too-large",
        b"\x00\xff" * 10: "not-json",
    }
    async with open_probe(broker.url, root.status(env), root.events(env)) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        await probe.wait_for(is_online(root.status(env)), timeout=15, what="online")
        mark = probe.mark()
        for payload in bad:
            await probe.publish(root.cmd(env), payload)
        for reason in set(bad.values()):
            await probe.wait_for(
                rejected_for(root.events(env), reason), after=mark, what=f"a {reason} rejection"
            )
        await probe.publish(root.cmd(env), signed({"type": "ping", "id": "still-here"}, env))
        await probe.wait_json(root.events(env), after=mark, type="pong", cmd="still-here")
        heartbeat_mark = probe.mark()
        await wait_online(probe, root.status(env), after=heartbeat_mark)
        await wait_online(probe, root.status(env), after=probe.mark())
    assert agent.process.returncode is None
    assert "command rejected" in agent.output()


@pytest.mark.slow
async def test_keepalive_holds_a_connection_between_sparse_heartbeats(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-keepalive"
    topic = root.status(env)
    async with open_probe(broker.url, topic, root.events(env)) as probe:
        agent = await start_agent(
            procs, tmp_path, broker.url, root, env, "--heartbeat-interval", "60", "--keepalive", "1"
        )
        online = await wait_online(probe, topic)
        # mosquitto drops a client silent for 1.5 keepalives (checked every few seconds):
        # no will may come while the agent idles between heartbeats.
        with pytest.raises(AssertionError, match="timed out"):
            await probe.wait_json(topic, status="offline", timeout=9)
        await probe.publish(root.cmd(env), signed({"type": "ping", "id": "awake"}, env))
        await probe.wait_json(root.events(env), type="pong", cmd="awake")
    assert agent.output().count('"event": "connected"') == 1
    assert online["seq"] == 0


@pytest.mark.slow
async def test_a_frozen_agents_retained_online_expires_for_late_subscribers(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env = "dev-lab-expiry"
    topic = root.status(env)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_agent(procs, tmp_path, broker.url, root, env)
        await wait_online(probe, topic, seq=1)
    agent.freeze()  # its connection stays open: no will, just silence
    async with asyncio.timeout(15):
        while True:  # a late subscriber, again and again, until nothing is retained
            async with open_probe(broker.url, topic) as late:
                try:
                    await late.wait_for(lambda m: m.topic == topic, timeout=0.5)
                except AssertionError:
                    break
    agent.thaw()
    async with open_probe(broker.url, topic) as probe:
        back = await wait_online(probe, topic)
    assert back["seq"] > 1, "thawed, the same connection carries on"
