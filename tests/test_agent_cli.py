"""``edge-agent`` as a user types it: settings from flags, environment and file, clear
refusals with exit status 2, the simulator's wiring, and a light import graph."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.command_key import PUBLIC_KEY
from tests.support.probe import open_probe
from tests.support.procs import Proc, start_proc


def edge_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeplane.edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refusal with exit status 2."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edge-agent: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--env-id", "dev-a", "--heartbeat-interval", "abc"],
            {},
            "edge-agent: --heartbeat-interval: expected a positive number, got 'abc'",
        ),
        (
            ["--env-id", "dev-a"],
            {"EDGEPLANE_HEARTBEAT_INTERVAL": "0"},
            "edge-agent: EDGEPLANE_HEARTBEAT_INTERVAL: expected a positive number, got '0'",
        ),
        (["--env-id", "Not Valid"], {}, "edge-agent: --env-id: invalid environment id"),
        ([], {}, "edge-agent: --env-id: required"),
        (["--env-id", "dev-a", "--broker", "tcp://x:1"], {}, "edge-agent: --broker: invalid"),
        (["--env-id", "dev-a", "--log-level", "loud"], {}, "edge-agent: --log-level: expected"),
        (["--env-id", "dev-a", "--bogus"], {}, "edge-agent: unrecognized arguments: --bogus"),
        (["--env-id"], {}, "edge-agent: argument --env-id: expected one argument"),
        (
            ["--env-id", "dev-a", "--config", "/nonexistent/agent.toml"],
            {},
            "edge-agent: --config: no such file",
        ),
        (
            ["--env-id", "dev-a"],
            {"EDGEPLANE_CONFIG": "/nonexistent/agent.toml"},
            "edge-agent: --config: no such file",
        ),
    ],
)
def test_bad_settings_and_flags_exit_2_with_one_line_naming_them(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    result = edge_agent("run", "--state-dir", str(tmp_path), *args, env=env)
    assert refused(result).startswith(expected)


def test_bad_config_file_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('env_id = "dev-a"\nkeepalive = -5\n')
    line = refused(edge_agent("run", "--config", str(config), "--state-dir", str(tmp_path)))
    assert f"{config}: keepalive: expected a positive whole number" in line
    config.write_text("this is not toml")
    assert "not valid TOML" in refused(edge_agent("run", "--config", str(config)))


def test_unusable_state_dir_exits_2_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = refused(edge_agent("run", "--env-id", "dev-a", "--state-dir", str(blocker / "state")))
    assert line.startswith("edge-agent: --state-dir: state directory")
    assert str(blocker / "state") in line


def test_unknown_command_exits_2() -> None:
    assert "invalid choice" in refused(edge_agent("fly"))


def test_help_lists_every_setting_with_its_variable() -> None:
    result = edge_agent("run", "--help")
    assert result.returncode == 0
    for flag, variable in [
        ("--env-id", "EDGEPLANE_ENV_ID"),
        ("--broker", "EDGEPLANE_BROKER"),
        ("--state-dir", "EDGEPLANE_STATE_DIR"),
        ("--heartbeat-interval", "EDGEPLANE_HEARTBEAT_INTERVAL"),
        ("--topic-root", "EDGEPLANE_TOPIC_ROOT"),
        ("--keepalive", "EDGEPLANE_KEEPALIVE"),
        ("--takeover-backoff", "EDGEPLANE_TAKEOVER_BACKOFF"),
        ("--log-format", "EDGEPLANE_LOG_FORMAT"),
        ("--log-level", "EDGEPLANE_LOG_LEVEL"),
        ("--config", "EDGEPLANE_CONFIG"),
    ]:
        assert flag in result.stdout
        assert variable in result.stdout


async def test_settings_reach_the_running_agent_flag_over_env_over_file(
    broker: MosquittoProcess, root: TopicRoot, procs: list[Proc], tmp_path: Path
) -> None:
    env_id = "dev-lab-layers"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'env_id = "{env_id}"\nbroker = "{broker.url}"\nheartbeat_interval = 9\n'
        f'topic_root = "{root.value}"\nstate_dir = "{tmp_path / "state"}"\n'
        'log_format = "json"\nlog_level = "debug"\n'
    )
    topic = root.status(env_id)
    async with open_probe(broker.url, topic) as probe:
        agent = await start_proc(
            "edgeplane.edge_agent",
            ["run", "--log-level", "info"],
            tmp_path / "agent.log",
            env={"EDGEPLANE_CONFIG": str(config), "EDGEPLANE_HEARTBEAT_INTERVAL": "0.7"},
        )
        procs.append(agent)
        online = await probe.wait_json(topic, status="online", timeout=15)
        assert await agent.terminate() == 0
    assert online["interval"] == 0.7, "the environment beats the file"
    assert (tmp_path / "state" / "bdseq").exists(), "the file beats the default"
    lines = [json.loads(line) for line in agent.output().splitlines() if line.startswith("{")]
    assert lines, "log_format from the file: JSON lines"
    assert all(line["level"] != "debug" for line in lines), "the flag beats the file"
    assert all(line["env"] == env_id for line in lines), "every line names the environment"


# What an agent never loads: the controller's dependencies, structlog (and asyncio, which
# structlog and the simulator's MQTT client need), the controller and the simulator.
NEVER_IN_THE_AGENT = ("aiomqtt", "aiosqlite", "structlog", "yaml", "asyncio")
NEVER_IN_THE_AGENT_PACKAGES = (
    "edgeplane.controller",
    "edgeplane.edge_agent.simulator",
    "edgeplane.edge_agent.doctor",
)


def test_the_agent_never_imports_what_it_does_not_need(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path
) -> None:
    """Run the real agent in a fresh interpreter until it is online and stops (a timer
    sends it SIGTERM), then look at what it imported."""
    code = f"""
import os, signal, sys
signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
signal.setitimer(signal.ITIMER_REAL, 3.0)
from edgeplane.edge_agent.cli import main
code = main(sys.argv[1:])
def unwanted(name):
    top = name.split(".")[0]
    packages = {NEVER_IN_THE_AGENT_PACKAGES!r}
    return top in {NEVER_IN_THE_AGENT!r} or any(
        name == p or name.startswith(p + ".") for p in packages
    )
bad = sorted(m for m in sys.modules if unwanted(m))
print("exit", code, "imported", ",".join(bad) or "-")
# an agent that ran nothing has not loaded the execution code (memory: see ondemand.py),
# and on Linux it reads its metrics without psutil (see metrics.py); what paho imports
# but never uses stays a stand-in (see lean.py)
# PyNaCl waits for the first command too (see commands.py)
later = ("edgeplane.edge_agent.execution.executor", "packaging", "psutil", "http.client", "nacl")
loaded = [m for m in later if m in sys.modules]
print("execution", ",".join(loaded) or "-")
"""
    args = ["run", "--env-id", "dev-lab-imports", "--broker", broker.url]
    args += ["--state-dir", str(tmp_path), "--topic-root", root.value, "--log-format", "json"]
    args += ["--command-key", PUBLIC_KEY]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert '"event": "online"' in result.stderr, result.stderr
    assert result.stdout.split() == ["exit", "0", "imported", "-", "execution", "-"], result.stdout


def test_simulate_is_wired_lazily() -> None:
    result = edge_agent("simulate", "--help")
    if importlib.util.find_spec("edgeplane.edge_agent.simulator.fleet") is None:
        assert result.returncode == 1
        assert "simulator" in result.stderr
        assert "not part of this installation" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "usage: edge-agent simulate" in result.stdout
