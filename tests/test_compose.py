"""compose.yaml, checked without Docker: valid against the Compose Specification, with the
services, healthchecks and mounted files it promises, and a broker config that mosquitto
actually loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edgeplane.controller.broker.mosquitto import find_mosquitto
from edgeplane.controller.broker.process import free_port, port_open

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
COMPOSE = REPO / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_broken_compose_file() -> None:
    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"x": {"helthcheck": {"test": ["NONE"]}}}}, schema)


def test_broker_controller_and_agent_each_have_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"mosquitto", "controller", "agent"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        assert len(test) > 1, name
    for name in ("controller", "agent"):
        assert services[name]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_python_healthchecks_are_valid_python(compose: dict[str, Any]) -> None:
    for name in ("controller", "agent"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[1:3] == ["python", "-c"]
        compile(test[3], f"{name} healthcheck", "exec")


def test_controller_and_agent_run_the_contract_commands(compose: dict[str, Any]) -> None:
    controller = compose["services"]["controller"]["command"]
    agent = compose["services"]["agent"]["command"]
    assert controller[:3] == ["edgeplane", "controller", "run"]
    assert {"--broker", "--db"} <= set(controller)
    assert agent[:2] == ["edge-agent", "run"]
    assert {"--env-id", "--broker", "--state-dir", "--heartbeat-interval"} <= set(agent)


def _bind_mounts(compose: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts.append((source, target))
    return mounts


def test_every_mounted_file_and_the_dockerfile_exist(compose: dict[str, Any]) -> None:
    mounts = _bind_mounts(compose)
    assert ("./mosquitto/edgeplane.conf", "/mosquitto/config/conf.d/edgeplane.conf") in mounts
    for source, _ in mounts:
        assert (REPO / source).is_file(), source
    for service in compose["services"].values():
        if "build" in service:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_the_agent_image_installs_the_agent_alone(compose: dict[str, Any]) -> None:
    """One image per side: the agent's is `pip install edgeplane` (no extras), the
    controller's adds the [controller] extra its command needs."""
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = {
        line.split(" AS ")[1].strip(): line
        for line in dockerfile.splitlines()
        if line.startswith("FROM ") and " AS " in line
    }
    services = compose["services"]
    assert services["agent"]["build"]["target"] == "agent"
    assert services["controller"]["build"]["target"] == "controller"
    assert {"agent", "controller"} <= set(stages)
    agent_stage = dockerfile.split(stages["agent"])[1].split("FROM ")[0]
    controller_stage = dockerfile.split(stages["controller"])[1].split("FROM ")[0]
    assert "RUN pip install . " in agent_stage
    assert "pip install '.[controller]'" in controller_stage
    assert "COPY pyproject.toml README.md LICENSE ./" in dockerfile, "the build reads all three"


@pytest.mark.skipif(
    find_mosquitto() is None or shutil.which("mosquitto_sub") is None,
    reason="needs mosquitto and mosquitto_sub",
)
def test_the_container_broker_config_loads_in_mosquitto(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Lay the mounted files out as in the container (under tmp_path), on free ports."""
    mqtt_port, ws_port = free_port(), free_port()
    for source, target in _bind_mounts(compose):
        text = (REPO / source).read_text()
        text = text.replace("/mosquitto/", f"{tmp_path}/mosquitto/")
        text = text.replace("listener 1883", f"listener {mqtt_port} 127.0.0.1")
        text = text.replace("listener 9001", f"listener {ws_port} 127.0.0.1")
        destination = tmp_path / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if target.endswith("/mosquitto.conf") and os.geteuid() == 0:
            text += "\nuser root\n"  # keep the rights to tmp_path's data directory
        destination.write_text(text)
    (tmp_path / "mosquitto" / "data").mkdir()
    binary = find_mosquitto()
    assert binary is not None
    process = subprocess.Popen(
        [binary, "-c", str(tmp_path / "mosquitto/config/mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", mqtt_port):
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)
        probe = subprocess.run(
            [
                "mosquitto_sub",
                "-p",
                str(mqtt_port),
                "-t",
                "$SYS/broker/version",
                "-C",
                "1",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.startswith("mosquitto version 2")
        assert port_open("127.0.0.1", ws_port)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert b"Opening websockets listen socket" in output
