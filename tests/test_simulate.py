"""The fleet simulator speaks the real protocol: births, wills, clean stops, pings, reconnects,
and its command line."""

from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.heartbeat import HeartbeatBuilder
from edgeplane.edge_agent.metrics import Sample
from edgeplane.edge_agent.simulator.fleet import ConnectPacer, Fleet
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import encode
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import Received, open_probe
from tests.support.procs import Proc, start_proc

REPO = Path(__file__).resolve().parent.parent

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


async def test_heartbeats_are_the_agents_own_messages(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    """Byte for byte what the agent's HeartbeatBuilder makes of the same facts (``up``
    aside: seconds since the start), so a benchmark measures the real protocol."""
    url = BrokerUrl.parse(broker.url)
    async with Fleet(url, root, count=1, interval=5, prefix="sim-hb") as fleet:
        await fleet.start()
        (agent,) = fleet.agents
        async with open_probe(broker.url, root.all_status()) as probe:
            message = await probe.wait_for(on_topic(root.status(agent.env)), what="online")
    status = status_of(message)
    facts = Sample(cpu=float(status["cpu"]), mem=float(status["mem"]), disk=float(status["disk"]))  # type: ignore[arg-type]
    builder = HeartbeatBuilder(agent.env, 5, ManualClock(), lambda: facts, boot=fleet.boot)
    builder.new_connection(agent.bdseq)
    expected = encode(builder.online())

    def without_up(payload: bytes) -> bytes:
        return re.sub(rb',"up":\d+', b"", payload)

    assert without_up(message.payload) == expected
    assert re.fullmatch(r"[0-9a-f]{6}", fleet.boot)  # a boot id as the agent makes them


async def test_a_restarted_agent_continues_its_bdseq(
    broker: MosquittoProcess, root: TopicRoot
) -> None:
    url = BrokerUrl.parse(broker.url)
    fleet = Fleet(url, root, count=3, interval=30, prefix="sim-rs")
    async with open_probe(broker.url, root.all_status()) as probe, fleet:
        await fleet.start()
        with pytest.raises(RuntimeError, match="still running"):
            fleet.restart(1)
        old = fleet.agents[1]
        status = root.status(old.env)
        await probe.wait_json(status, status="online", bdseq=old.bdseq)
        await old.kill()
        await probe.wait_json(status, status="offline", bdseq=old.bdseq)
        mark = probe.mark()
        agent = fleet.restart(1)
        assert fleet.agents[1] is agent
        assert agent.env == old.env
        online = await probe.wait_json(status, after=mark, status="online")
        assert (online["bdseq"], online["seq"]) == (old.bdseq + 1, 0)
        await fleet.start()  # returns: the restarted agent is online again
        assert fleet.online == 3


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


# --- installed without the [sim] extra ----------------------------------------------------------
def simulator_imports(*blocked: str) -> subprocess.CompletedProcess[str]:
    """Import every simulator module in a fresh interpreter in which ``blocked`` modules
    cannot be imported; print the top-level modules that importing loaded."""
    code = """
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # as if it were not installed
before = set(sys.modules)
import edgeplane.edge_agent.simulator as package
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not info.name.endswith(".__main__"):
        importlib.import_module(info.name)
print(" ".join(sorted({name.partition(".")[0] for name in set(sys.modules) - before})))
"""
    return subprocess.run(
        [sys.executable, "-c", code, *blocked],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_sim_extra_is_what_the_simulator_imports_beyond_the_agents_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extra = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["sim"]
    }
    result = simulator_imports()
    assert result.returncode == 0, result.stderr
    third_party = set(result.stdout.split()) - set(sys.stdlib_module_names) - {"edgeplane"}
    owners = importlib.metadata.packages_distributions()
    imported = {
        canonicalize_name(d) for module in third_party for d in owners.get(module, [module])
    }
    assert extra <= imported - base, "the [sim] extra lists what the simulator does not import"
    undeclared = sorted(
        module
        for module in third_party
        if not {canonicalize_name(d) for d in owners.get(module, [module])} & (base | extra)
    )
    # What else gets imported is only used when present (e.g. msgspec's typing_extensions).
    without = simulator_imports(*undeclared)
    assert without.returncode == 0, f"the simulator needs {undeclared}: {without.stderr}"


@pytest.mark.parametrize("argv", [["simulate", "--count", "3"], ["simulate", "--help"]])
def test_simulate_without_the_sim_extra_says_which_to_install(argv: list[str]) -> None:
    code = """
import sys
sys.modules["structlog"] = None  # the [sim] extra is not installed
from edgeplane.edge_agent.cli import main
sys.exit(main(sys.argv[1:]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "edge-agent: the fleet simulator is not part of this installation (no structlog); "
        "install it with: pip install 'edgeplane[sim]'"
    ]
    assert result.stdout == ""
