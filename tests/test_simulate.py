"""The fleet simulator speaks the real protocol: births, wills, clean stops, pings, reconnects,
and its command line."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.simulator.fleet import ConnectPacer, Fleet
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import Received, open_probe
from tests.support.procs import Proc, start_proc

ONLINE_FIELDS = frozenset(
    (
        "status",
        "env",
        "bdseq",
        "seq",
        "interval",
        "boot",
        "cpu",
        "mem",
        "disk",
        "ver",
        "up",
    )
)


def on_topic(topic: str) -> Callable[[Received], bool]:
    return lambda message: message.topic == topic


def status_of(message: Received) -> dict[str, object]:
    data: dict[str, object] = json.loads(message.payload)
    return data


def test_connect_pacer_spreads_slots_at_the_rate() -> None:
    pacer = ConnectPacer(rate=4)
    assert [pacer.reserve(10.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert pacer.reserve(10.5) == 0.25  # the slot at 10.75
    assert pacer.reserve(20.0) == 0.0  # idle slots are not saved up


def test_fleet_refuses_ids_outside_the_contract() -> None:
    with pytest.raises(ValueError, match="invalid environment id"):
        Fleet(BrokerUrl.parse("mqtt://127.0.0.1:1"), prefix="Not_Valid")


async def test_every_agent_publishes_a_retained_online_with_the_contract_fields(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    beats: list[tuple[str, int, float]] = []

    def record(env: str, seq: int, published: float) -> None:
        beats.append((env, seq, published))

    fleet = Fleet(url, root, count=30, interval=5, prefix="sim-t", on_heartbeat=record)
    async with fleet:
        await fleet.start()
        assert fleet.online == 30
        # A late subscriber gets every agent's online status, retained, with an expiry.
        async with open_probe(broker.url, root.all_status()) as probe:
            for agent in fleet.agents:
                topic = root.status(agent.env)
                message = await probe.wait_for(on_topic(topic), what=topic)
                assert message.retain
                status = status_of(message)
                assert {k: status[k] for k in ("status", "env", "bdseq", "interval", "boot")} == {
                    "status": "online",
                    "env": agent.env,
                    "bdseq": agent.bdseq,
                    "interval": 5.0,
                    "boot": fleet.boot,
                }
                assert isinstance(status["seq"], int)
                assert set(status) <= ONLINE_FIELDS
                assert len(message.payload) <= 160
                assert message.properties is not None
                props = message.properties.json()  # type: ignore[no-untyped-call]
                assert 14 <= props["MessageExpiryInterval"] <= 15  # ceil(3 x 5 s), less its age
    assert [agent.env for agent in fleet.agents][:2] == ["sim-t-00000", "sim-t-00001"]
    assert {env for env, seq, _ in beats if seq == 0} == {a.env for a in fleet.agents}


async def test_kill_yields_the_will_and_stop_a_clean_offline(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    async with open_probe(broker.url, root.all_status()) as probe:
        async with Fleet(url, root, count=20, interval=30) as fleet:
            await fleet.start()
            killed, stopped = fleet.agents[3], fleet.agents[7]
            mark = probe.mark()
            await killed.kill()
            will = await probe.wait_json(root.status(killed.env), after=mark, status="offline")
            assert will == {
                "status": "offline",
                "env": killed.env,
                "bdseq": killed.bdseq,
                "reason": "connection-lost",
            }
            await stopped.stop()
            goodbye = await probe.wait_json(root.status(stopped.env), after=mark, status="offline")
            assert goodbye["reason"] == "shutdown"
            assert goodbye["bdseq"] == stopped.bdseq
            assert fleet.online == 18
            mark = probe.mark()
        # Leaving the fleet stops everyone else cleanly; the killed one stays as it was.
        for agent in fleet.agents:
            if agent in (killed, stopped):
                continue
            offline = await probe.wait_json(root.status(agent.env), after=mark, status="offline")
            assert offline["reason"] == "shutdown"
        after_exit = probe.messages[mark:]
        assert [m for m in after_exit if m.topic == root.status(killed.env)] == []


async def test_a_ping_gets_a_pong_and_garbage_a_rejection(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    async with Fleet(url, root, count=3, interval=30) as fleet:
        await fleet.start()
        env = fleet.agents[1].env
        async with open_probe(broker.url, root.all_events()) as probe:
            await probe.publish(root.cmd(env), b'{"type":"ping","id":"p-1"}')
            pong = await probe.wait_json(root.events(env), type="pong")
            assert pong == {"type": "pong", "env": env, "seq": 1, "cmd": "p-1"}
            await probe.publish(root.cmd(env), b"not json")
            rejected = await probe.wait_json(root.events(env), type="rejected")
            assert rejected["seq"] == 2
            assert "not-json" in str(rejected["reason"])
        assert fleet.stats.events == 2


async def test_freeze_holds_heartbeats_back_and_thaw_resumes_them(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    fleet = Fleet(url, root, count=2, interval=0.5)
    async with open_probe(broker.url, root.all_status()) as probe, fleet:
        await fleet.start()
        frozen, control = fleet.agents
        frozen.freeze()
        seq_at_freeze = frozen.seq
        mark = probe.mark()
        for _ in range(4):  # a few of the control agent's heartbeats
            await probe.wait_json(root.status(control.env), after=mark, status="online")
            mark = probe.mark()
        # At most one heartbeat was already on its way when freeze() was called.
        assert frozen.seq <= seq_at_freeze + 1
        frozen.thaw()
        beat = await probe.wait_json(
            root.status(frozen.env), after=mark, status="online", seq=frozen.seq
        )
        assert beat["bdseq"] == frozen.bdseq


@pytest.mark.slow
async def test_agents_reconnect_with_a_new_bdseq_after_the_broker_restarts(
    private_broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(private_broker.url)
    async with Fleet(url, root, count=5, interval=30) as fleet:
        await fleet.start()
        first = {agent.env: agent.bdseq for agent in fleet.agents}
        private_broker.stop()
        private_broker.start()
        async with open_probe(private_broker.url, root.all_status()) as probe:
            for agent in fleet.agents:
                online = await probe.wait_json(
                    root.status(agent.env), status="online", bdseq=first[agent.env] + 1, timeout=30
                )
                assert online["seq"] == 0
        assert fleet.stats.failures >= 5


# --- the command line ---------------------------------------------------------------------------
def simulate_args(broker: MosquittoProcess, root: TopicRoot, *extra: str) -> list[str]:
    return ["--broker", broker.url, "--topic-root", str(root), "--prefix", "cli", *extra]


@pytest.mark.slow
async def test_the_command_runs_for_its_duration_and_exits_0(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    async with open_probe(broker.url, root.all_status()) as probe:
        args = simulate_args(broker, root, "--count", "5", "--duration", "1")
        proc = await start_proc("edgeplane.edge_agent.simulator", args, tmp_path / "sim.log")
        procs.append(proc)
        assert await proc.wait(30) == 0
        assert "5/5 simulated agents online (cli-00000..cli-00004)" in proc.output()
        for i in range(5):
            offline = await probe.wait_json(root.status(f"cli-{i:05d}"), status="offline")
            assert offline["reason"] == "shutdown"


@pytest.mark.slow
async def test_sigterm_stops_every_agent_cleanly(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    async with open_probe(broker.url, root.all_status()) as probe:
        args = simulate_args(broker, root, "--count", "3")
        proc = await start_proc("edgeplane.edge_agent.simulator", args, tmp_path / "sim.log")
        procs.append(proc)
        for i in range(3):
            await probe.wait_json(root.status(f"cli-{i:05d}"), status="online", timeout=20)
        proc.signal(signal.SIGTERM)
        assert await proc.wait(30) == 0
        for i in range(3):
            offline = await probe.wait_json(root.status(f"cli-{i:05d}"), status="offline")
            assert offline["reason"] == "shutdown"


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--count", "0"], "--count: expected a positive whole number"),
        (["--count", "1000000"], "--count: 1000000 agents need"),
        (["--prefix", "Bad_Prefix"], "--prefix: invalid environment id"),
        (["--heartbeat-interval", "-1"], "--heartbeat-interval: expected a positive number"),
        (["--broker", "http://x:1"], "--broker: invalid broker URL"),
    ],
)
async def test_a_bad_flag_is_one_clear_line_and_exit_2(
    flags: list[str], complaint: str, procs: list[Proc], tmp_path: Path
) -> None:
    proc = await start_proc("edgeplane.edge_agent.simulator", flags, tmp_path / "sim.log")
    procs.append(proc)
    assert await proc.wait(30) == 2
    assert complaint in proc.output()
