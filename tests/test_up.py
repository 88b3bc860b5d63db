"""``edgeplane up`` as a user runs it: a real process that finds, is given or starts a broker,
then runs the controller and the default cloud agent until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeplane.controller.broker.choice import BrokerPlan, choose_broker
from edgeplane.controller.broker.mosquitto import MosquittoProcess, packaged_mosquitto_config
from edgeplane.controller.broker.process import free_port, port_open
from edgeplane.controller.broker.stack import DEFAULT_ENV_ID, NO_AUTH_WARNING
from edgeplane.controller.broker.state_dir import default_state_dir
from edgeplane.controller.errors import BrokerStartError
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe
from tests.support.procs import Proc, start_piped_proc, start_proc
from tests.support.sockets import LOOPBACK, listening


# --- choosing the broker (pure) ------------------------------------------------------------
def _choose(**overrides: Any) -> BrokerPlan:
    options: dict[str, Any] = {
        "given": None,
        "kind": "auto",
        "port": 1883,
        "port_in_use": False,
        "mosquitto_found": True,
        "embedded_found": True,
    }
    options.update(overrides)
    return choose_broker(**options)


def test_a_given_broker_wins_over_everything() -> None:
    plan = _choose(given="mqtt://broker.example:1883", port_in_use=True)
    assert plan == BrokerPlan("given", "mqtt://broker.example:1883")


def test_a_broker_already_on_the_port_is_used() -> None:
    assert _choose(port_in_use=True) == BrokerPlan("existing", "mqtt://127.0.0.1:1883")


def test_mosquitto_is_preferred_to_the_embedded_broker() -> None:
    assert _choose().plan == "mosquitto"
    assert _choose(mosquitto_found=False).plan == "embedded"
    assert _choose(kind="embedded").plan == "embedded"


def test_a_forced_kind_never_takes_over_a_taken_port() -> None:
    with pytest.raises(BrokerStartError, match=r"127\.0\.0\.1:1884: the port is in use"):
        _choose(kind="embedded", port=1884, port_in_use=True)


def test_no_broker_at_all_says_what_is_missing() -> None:
    with pytest.raises(BrokerStartError, match="mosquitto is not installed"):
        _choose(mosquitto_found=False, embedded_found=False)
    with pytest.raises(BrokerStartError, match="no mosquitto"):
        _choose(kind="mosquitto", mosquitto_found=False)
    with pytest.raises(BrokerStartError, match="embedded: the iotcore package is missing"):
        _choose(kind="embedded", embedded_found=False)


def test_the_default_state_dir_follows_xdg() -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/edgeplane")
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "edgeplane"


# --- flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "70000"], "--port"),
        (["--topic-root", "a/#"], "--topic-root"),
        (["--broker", "http://x:1"], "broker URL"),
        (["--broker-kind", "rabbit"], "--broker-kind"),
    ],
)
async def test_a_bad_flag_exits_2_naming_it(
    flags: list[str], named: str, tmp_path: Path, procs: list[Proc]
) -> None:
    proc = await start_proc(
        "edgeplane.controller", ["up", "--state-dir", str(tmp_path), *flags], tmp_path / "up.log"
    )
    procs.append(proc)
    assert await proc.wait(30) == 2
    assert named in proc.output()
    assert not (tmp_path / "up.json").exists()


# --- up as a process ---------------------------------------------------------------------------
async def _until(
    what: str, check: Callable[[], bool], proc: Proc, timeout: float = 30, *, alive: bool = True
) -> None:
    """Wait for ``check`` (a file or a line ``up`` writes), failing early if ``up`` exits
    while it should be ``alive``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if (alive and proc.process.returncode is not None) or loop.time() > deadline:
            raise AssertionError(f"no {what}; output of up:\n{proc.output()[-4000:]}")
        await asyncio.sleep(0.05)


def _status(state_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state_dir / "up.json").read_text())
    return data


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan whose reaper has not got to it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """If a test fails with ``up`` killed, kill the children its up.json names too."""
    yield
    status_file = tmp_path / "state" / "up.json"
    if not status_file.exists():
        return
    for key, pid in json.loads(status_file.read_text()).items():
        if key.endswith("_pid") and key != "pid" and isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _start_up(
    tmp_path: Path, root: TopicRoot, *flags: str, log: str = "up.log"
) -> tuple[Proc, Path]:
    """Start ``edgeplane up`` and wait for its banner (printed once everything runs)."""
    state_dir = tmp_path / "state"
    proc = await start_proc(
        "edgeplane.controller",
        [
            *("up", "--state-dir", str(state_dir), "--topic-root", str(root)),
            *("--heartbeat-interval", "2", "--log-format", "json", *flags),
        ],
        tmp_path / log,
    )
    await _until("banner", lambda: "edgeplane is up" in proc.output(), proc)
    return proc, state_dir


@pytest.mark.slow
@pytest.mark.embedded
async def test_up_on_the_embedded_broker_runs_controller_and_agent_and_stops_cleanly(
    tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    port = free_port()
    proc, state_dir = await _start_up(
        tmp_path, root, "--broker-kind", "embedded", "--port", str(port)
    )
    procs.append(proc)
    status = _status(state_dir)
    assert status["broker"] == f"mqtt://127.0.0.1:{port}"
    assert status["broker_kind"] == "embedded"
    async with open_probe(
        status["broker"], root.controller_status(), root.view(DEFAULT_ENV_ID)
    ) as probe:
        await probe.wait_json(root.controller_status(), timeout=30, status="online")
        await probe.wait_json(root.view(DEFAULT_ENV_ID), timeout=30, status="online")
        assert "the embedded broker" in proc.output()
        assert f"-p {port} -t '{root}/view/#'" in proc.output()

        # A second `up` on the same state directory is refused, and changes nothing.
        second = await start_proc(
            "edgeplane.controller", ["up", "--state-dir", str(state_dir)], tmp_path / "second.log"
        )
        procs.append(second)
        assert await second.wait(30) == 1
        assert "another `edgeplane up` is running" in second.output()

        pids = [status[k] for k in ("broker_pid", "controller_pid", "agent_pid")]
        assert await proc.terminate(30) == 0
    assert all(_gone(pid) for pid in pids), proc.output()[-3000:]
    assert not port_open("127.0.0.1", port)
    assert not (state_dir / "up.json").exists()


@pytest.mark.slow
@pytest.mark.embedded
async def test_up_restarts_a_child_that_dies(
    tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    proc, state_dir = await _start_up(
        tmp_path, root, "--broker-kind", "embedded", "--port", str(free_port())
    )
    procs.append(proc)
    first = _status(state_dir)
    status_topic = root.status(DEFAULT_ENV_ID)
    async with open_probe(first["broker"], status_topic) as probe:
        online = await probe.wait_json(status_topic, timeout=30, status="online")
        os.kill(first["agent_pid"], signal.SIGKILL)
        await _until(
            "restart notice", lambda: "was killed by SIGKILL unexpectedly" in proc.output(), proc
        )
        # A new agent process: a new boot id, online again.
        await probe.wait_for(
            lambda m: (
                m.topic == status_topic
                and json.loads(m.payload).get("status") == "online"
                and json.loads(m.payload).get("boot") != online["boot"]
            ),
            timeout=30,
            what="the restarted agent online",
        )
    assert _status(state_dir)["agent_pid"] != first["agent_pid"]
    assert await proc.terminate(30) == 0


@pytest.mark.slow
async def test_up_uses_the_broker_it_is_given(
    broker: MosquittoProcess, tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    async with open_probe(broker.url, root.controller_status(), root.view(DEFAULT_ENV_ID)) as probe:
        proc, state_dir = await _start_up(tmp_path, root, "--broker", broker.url)
        procs.append(proc)
        assert _status(state_dir)["broker_kind"] == "given"
        await probe.wait_json(root.controller_status(), timeout=30, status="online")
        await probe.wait_json(root.view(DEFAULT_ENV_ID), timeout=30, status="online")
        assert "given with --broker" in proc.output()
        assert await proc.terminate(30) == 0
        await probe.wait_json(root.controller_status(), timeout=30, status="offline")
    assert broker.running  # not ours to stop


@pytest.mark.slow
async def test_up_uses_a_broker_already_listening_on_its_port_and_says_so(
    broker: MosquittoProcess, tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    async with open_probe(broker.url, root.view(DEFAULT_ENV_ID)) as probe:
        proc, state_dir = await _start_up(tmp_path, root, "--port", str(broker.port))
        procs.append(proc)
        assert _status(state_dir)["broker_kind"] == "existing"
        assert f"a broker is already listening on {broker.url}: using it" in proc.output()
        await probe.wait_json(root.view(DEFAULT_ENV_ID), timeout=30, status="online")
        assert await proc.terminate(30) == 0
    assert broker.running


@pytest.mark.slow
@pytest.mark.embedded
async def test_up_after_a_killed_up_stops_what_the_killed_one_left_running(
    tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    port = free_port()
    first, state_dir = await _start_up(
        tmp_path, root, "--broker-kind", "embedded", "--port", str(port)
    )
    procs.append(first)
    earlier = _status(state_dir)
    await first.kill()  # SIGKILL: no chance to stop its children
    await _until(
        "the embedded broker exiting",
        lambda: not port_open("127.0.0.1", port),
        first,
        alive=False,
    )
    assert not _gone(earlier["agent_pid"])
    second, _ = await _start_up(
        tmp_path, root, "--broker-kind", "embedded", "--port", str(port), log="second.log"
    )
    procs.append(second)
    output = second.output()
    assert f"stopping the agent (pid {earlier['agent_pid']}) left running" in output
    assert f"stopping the controller (pid {earlier['controller_pid']}) left running" in output
    assert _gone(earlier["agent_pid"])
    assert _gone(earlier["controller_pid"])
    assert await second.terminate(30) == 0


@pytest.mark.slow
async def test_up_with_mosquitto_restarts_a_dead_broker_and_stops_on_ctrl_c(
    tmp_path: Path, root: TopicRoot, procs: list[Proc]
) -> None:
    port, ws_port = free_port(), free_port()
    proc, state_dir = await _start_up(
        tmp_path, root, "--broker-kind", "mosquitto", "--port", str(port), "--ws-port", str(ws_port)
    )
    procs.append(proc)
    first = _status(state_dir)
    assert first["broker_kind"] == "mosquitto"
    assert f"MQTT over WebSockets at ws://127.0.0.1:{ws_port}/" in proc.output()
    assert f"edgeplane up: {NO_AUTH_WARNING}\n" in proc.output()
    sockets = listening(first["broker_pid"])
    assert {listened for _, listened in sockets} == {port, ws_port}
    assert {address for address, _ in sockets} <= LOOPBACK, sockets
    view, status_topic = root.view(DEFAULT_ENV_ID), root.status(DEFAULT_ENV_ID)
    async with open_probe(first["broker"], view, status_topic) as probe:
        await probe.wait_json(view, timeout=30, status="online")
        before = await probe.wait_json(status_topic, timeout=30, status="online")
    os.kill(first["broker_pid"], signal.SIGKILL)
    await _until(
        "a restarted broker",
        lambda: _status(state_dir)["broker_pid"] not in (None, first["broker_pid"]),
        proc,
    )
    assert "the broker exited unexpectedly" in proc.output()
    async with open_probe(first["broker"], view, status_topic) as probe:
        # The agent reconnects by itself (a new connection: a new bdseq); the view is online.
        await probe.wait_for(
            lambda m: (
                m.topic == status_topic
                and json.loads(m.payload).get("bdseq") not in (None, before["bdseq"])
            ),
            timeout=30,
            what="the agent back on the restarted broker",
        )
        await probe.wait_json(view, timeout=30, status="online")
    second = _status(state_dir)
    proc.signal(signal.SIGINT)  # what Ctrl-C sends
    assert await proc.wait(30) == 0
    pids = [second[k] for k in ("broker_pid", "controller_pid", "agent_pid")]
    assert all(_gone(pid) for pid in pids)
    assert not port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", ws_port)
    assert (state_dir / "mosquitto" / "mosquitto.db").exists()  # saved on the clean stop


# --- stopped through a broken pipe -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("own_broker", "signum"),
    [(False, signal.SIGINT), (True, signal.SIGINT), (True, signal.SIGHUP)],
    ids=["given broker, Ctrl-C", "its own mosquitto, Ctrl-C", "its own mosquitto, SSH closed"],
)
async def test_up_piped_into_a_tee_that_dies_still_stops_everything_cleanly(
    own_broker: bool,
    signum: signal.Signals,
    broker: MosquittoProcess,
    tmp_path: Path,
    root: TopicRoot,
    procs: list[Proc],
) -> None:
    """``edgeplane up 2>&1 | tee log``, then Ctrl-C (or the terminal closed): the signal
    reaches up's whole process group, so tee is gone when up and its children write their
    last lines. The agent's and the controller's goodbyes still reach the broker (the agent
    stops first, the broker last) and persist in a broker up started."""
    state_dir, port = tmp_path / "state", free_port()
    where = ["--broker-kind", "mosquitto", "--port", str(port), "--ws-port", "0"]
    up = await start_piped_proc(
        "edgeplane.controller",
        [
            *("up", "--state-dir", str(state_dir), "--topic-root", str(root)),
            *("--heartbeat-interval", "2", "--log-format", "json"),
            *(where if own_broker else ["--broker", broker.url]),
        ],
        tmp_path / "up.log",
        new_session=True,
    )
    procs.append(up)
    await up.read_until("edgeplane is up")
    url = _status(state_dir)["broker"]
    agent_status, controller_status = root.status(DEFAULT_ENV_ID), root.controller_status()
    async with open_probe(url, agent_status, controller_status) as probe:
        online = await probe.wait_json(agent_status, timeout=30, status="online")
        await probe.wait_json(controller_status, timeout=30, status="online")
    up.close_reader()  # tee, ended by the Ctrl-C
    os.killpg(up.pid, signum)
    assert await up.wait(30) == 0
    if own_broker:  # stopped with up: its persisted retained messages, read again
        again = MosquittoProcess(packaged_mosquitto_config(), state_dir / "mosquitto", port=port)
        with again:
            agent, controller = await _retained(again.url, agent_status, controller_status)
    else:
        agent, controller = await _retained(broker.url, agent_status, controller_status)
    assert agent == {
        "status": "offline",
        "env": DEFAULT_ENV_ID,
        "bdseq": online["bdseq"],
        "reason": "shutdown",
    }
    assert (controller["status"], controller["reason"]) == ("offline", "shutdown")


async def _retained(url: str, *topics: str) -> list[dict[str, Any]]:
    async with open_probe(url, *topics) as probe:
        return [await probe.wait_json(topic) for topic in topics]
