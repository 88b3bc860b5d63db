"""The brokers ``edgeplane up`` starts: a private mosquitto with the development config, and
the embedded rumqttd of the ``iotcore`` package."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgeplane.controller.broker.embedded import EmbeddedBroker, render_config
from edgeplane.controller.broker.mosquitto import MosquittoProcess, packaged_mosquitto_config
from edgeplane.controller.broker.process import free_port
from edgeplane.controller.errors import BrokerStartError
from edgeplane.shared.topics import TopicRoot
from tests.support.probe import open_probe

REPO = Path(__file__).resolve().parent.parent
DEV_CONFIG = REPO / "mosquitto" / "edgeplane.conf"


# --- the development config ---------------------------------------------------------------
def test_the_wheel_ships_the_same_development_config() -> None:
    assert packaged_mosquitto_config().read_text() == DEV_CONFIG.read_text()


def test_every_setting_of_the_development_config_is_explained() -> None:
    paragraphs = DEV_CONFIG.read_text().split("\n\n")
    for paragraph in paragraphs:
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if any(not line.startswith("#") for line in lines):
            assert lines[0].startswith("#"), f"setting without a comment:\n{paragraph}"


def test_the_development_config_leaves_listeners_and_data_dir_to_the_launcher() -> None:
    settings = [
        line.split()[0]
        for line in DEV_CONFIG.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "listener" not in settings
    assert "persistence_location" not in settings
    assert "persistence" in settings
    assert "max_queued_messages" in settings


@pytest.fixture
def dev_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    process = MosquittoProcess(DEV_CONFIG, tmp_path / "mosquitto", websockets_port=free_port())
    process.start()
    yield process
    process.stop()


def test_the_config_runs_as_root_only_with_user_root(tmp_path: Path) -> None:
    process = MosquittoProcess(DEV_CONFIG, tmp_path / "data")
    lines = process.write_config().read_text().splitlines()
    assert ("user root" in lines) == (os.geteuid() == 0)
    assert f"listener {process.port} 127.0.0.1" in lines
    assert f"persistence_location {tmp_path / 'data'}/" in lines


async def test_a_retained_message_survives_a_restart_of_the_development_broker(
    dev_broker: MosquittoProcess, root: TopicRoot
) -> None:
    topic = root.view("kept")
    async with open_probe(dev_broker.url) as probe:
        await probe.publish(topic, b'{"kept": 1}', retain=True)
    dev_broker.stop()
    assert not dev_broker.running
    dev_broker.start()
    async with open_probe(dev_broker.url, topic) as probe:
        assert await probe.wait_json(topic, kept=1) == {"kept": 1}


@pytest.mark.slow
async def test_a_wildcard_subscriber_gets_thousands_of_retained_statuses(
    dev_broker: MosquittoProcess, root: TopicRoot
) -> None:
    count = 3000  # three times what mosquitto's default queue limit lets through
    async with open_probe(dev_broker.url) as probe:
        for n in range(count):
            await probe.client.publish(root.status(f"env-{n}"), b"{}", qos=0, retain=True)
        # A QoS 1 round trip after the QoS 0 burst: every earlier publish has been handled.
        await probe.publish(root.view("sentinel"), b"{}")
    async with open_probe(dev_broker.url, root.all_status()) as probe:
        await probe.wait_for(
            lambda _: len(probe.messages) >= count, timeout=30, what=f"{count} statuses"
        )
        assert len({m.topic for m in probe.messages}) == count


async def test_browsers_reach_the_broker_over_websockets(
    dev_broker: MosquittoProcess, root: TopicRoot
) -> None:
    assert dev_broker.websockets_port is not None
    topic = root.view("ws")
    async with open_probe(dev_broker.url, topic) as probe:
        async with aiomqtt.Client(
            "127.0.0.1",
            dev_broker.websockets_port,
            transport="websockets",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as browser:
            await browser.publish(topic, b'{"via": "ws"}', qos=1)
        await probe.wait_json(topic, via="ws")


def test_a_taken_port_is_a_clear_error(broker: MosquittoProcess, tmp_path: Path) -> None:
    second = MosquittoProcess(DEV_CONFIG, tmp_path / "data", port=broker.port)
    with pytest.raises(BrokerStartError, match=f"127.0.0.1:{broker.port} is already in use"):
        second.start()
    assert not second.running


def test_a_bad_config_fails_with_what_mosquitto_said(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("no_such_option 1\n")
    process = MosquittoProcess(bad, tmp_path / "data")
    with pytest.raises(BrokerStartError, match="no_such_option"):
        process.start()


# --- the embedded broker -------------------------------------------------------------------
def test_the_embedded_config_listens_on_loopback_only_with_mqtt5() -> None:
    config = tomllib.loads(render_config(host="127.0.0.1", port=18830, v311_port=18831))
    assert config["v5"]["1"]["listen"] == "127.0.0.1:18830"
    assert config["v4"]["1"]["listen"] == "127.0.0.1:18831"
    for listener in (config["v5"]["1"], config["v4"]["1"]):
        assert listener["connections"]["max_payload_size"] == 1024 * 1024
    assert "v4" not in tomllib.loads(render_config(host="127.0.0.1", port=18830))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    process = EmbeddedBroker(
        tmp_path_factory.mktemp("embedded"), port=free_port(), v311_port=free_port()
    )
    process.start()
    yield process
    process.stop()


_DYING_CLIENT = """
import asyncio, sys, aiomqtt
port, topic = int(sys.argv[1]), sys.argv[2]
async def main() -> None:
    will = aiomqtt.Will(topic, b'{"status": "offline"}', qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier=sys.argv[3], will=will,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, b'{"status": "online"}', qos=1, retain=True)
        print("online", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


@pytest.mark.embedded
async def test_embedded_broker_keeps_retained_and_sends_the_will_of_a_killed_client(
    embedded: EmbeddedBroker, root: TopicRoot
) -> None:
    topic = root.status("dying")
    client = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", _DYING_CLIENT, str(embedded.port), topic, "dying"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), 15)
        assert line == b"online\n"
        async with open_probe(embedded.url, topic) as probe:
            online = await probe.wait_json(topic, status="online")
            assert online == {"status": "online"}
            assert probe.messages[0].retain
            client.send_signal(signal.SIGKILL)
            await probe.wait_json(topic, status="offline")
    finally:
        if client.returncode is None:
            client.kill()
        await client.wait()
    # A late subscriber gets the will as the retained state.
    async with open_probe(embedded.url, topic) as late:
        await late.wait_json(topic, status="offline")
        assert late.messages[-1].retain


@pytest.mark.embedded
async def test_embedded_broker_delivers_qos1_and_large_payloads_over_mqtt5(
    embedded: EmbeddedBroker, root: TopicRoot
) -> None:
    topic = root.events("big")
    payload = b"x" * (512 * 1024)  # far over rumqttd's 20 KiB default
    async with open_probe(embedded.url, topic) as probe:
        await probe.publish(topic, payload, qos=1)
        got = await probe.wait_for(lambda m: m.topic == topic, what="the large payload")
    assert got.payload == payload


@pytest.mark.embedded
async def test_embedded_broker_speaks_mqtt311_on_its_second_listener(
    embedded: EmbeddedBroker, root: TopicRoot
) -> None:
    assert embedded.v311_port is not None
    topic = root.view("old-tool")
    async with open_probe(embedded.url, topic) as probe:
        async with aiomqtt.Client(
            "127.0.0.1",
            embedded.v311_port,
            identifier=f"v311-{uuid.uuid4().hex[:6]}",
            protocol=aiomqtt.ProtocolVersion.V311,
        ) as old:
            await old.publish(topic, b'{"v": 4}', qos=1)
        await probe.wait_json(topic, v=4)


@pytest.mark.embedded
def test_embedded_broker_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = EmbeddedBroker(tmp_path, port=port)
        with pytest.raises(BrokerStartError, match=f"127.0.0.1:{port} is already in use"):
            broker.start()
    assert not broker.running


@pytest.mark.embedded
def test_embedded_broker_stops_and_frees_its_port(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", broker.port))  # free again


@pytest.mark.embedded
def test_embedded_broker_exits_when_its_parent_dies(tmp_path: Path) -> None:
    # The parent prints once the broker listens, then dies without stopping it.
    script = (
        "import sys; from pathlib import Path; "
        "from edgeplane.controller.broker.embedded import EmbeddedBroker; "
        "b = EmbeddedBroker(Path(sys.argv[1])); b.start(); print(b.pid, b.port, flush=True); "
        "import os; os._exit(0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid, _port = (int(x) for x in out.stdout.split())
    try:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # an orphan: there is no exit of it to wait on
        # (Not: its port is closed. Another process may hold it by now.)
        assert not _alive(pid), "the embedded broker outlived its parent"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """The process runs (an orphan's zombie, not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
