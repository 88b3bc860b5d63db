"""Secrets end to end: a deployment that uses a secret, with every message under the root
and every log line of the controller and the agent (JSON, debug level) captured; the value
shows up nowhere, yet the step saw it. And a secrets file others can read stops the agent.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.system import System, open_system

PY = sys.executable
SECRET = "zebra-Quartz-7781-hunter2"
OTHER_SECRET = "unused-but-secret-5519"

# A step that does everything wrong with its secret: prints it to stdout and stderr.
LEAKY_STEP = """\
import hashlib, os, pathlib, sys
value = os.environ["API_TOKEN"]
print(f"token is {value}")
print(f"token again {value}", file=sys.stderr)
pathlib.Path(sys.argv[1]).write_text(hashlib.sha256(value.encode()).hexdigest())
sys.exit(int(sys.argv[2]))
"""


def leaky_workflow(system: System, name: str, bucket: Path, exit_code: int) -> Path:
    script = system.script("leaky", LEAKY_STEP)
    data = {
        "name": name,
        "version": "1.0.0",
        "requires": {
            "secrets": ["API_TOKEN"],
            "buckets": [{"name": "out", "path": str(bucket), "access": "write"}],
        },
        "steps": [
            {
                "name": "use-token",
                "run": [PY, str(script), str(bucket / f"{name}.sha256"), str(exit_code)],
                "timeout": 30,
            }
        ],
    }
    return system.workflow(name, data)


def leaked(system: System, procs: list[Proc], values: tuple[str, ...]) -> list[str]:
    """Where any of ``values`` shows: MQTT payloads, process logs, CLI output, the agent's
    state dir (its outbox, its records) and the controller's database. Not the steps' own
    output files (kept whole, in the owner-only working directory of each deployment): what
    a step writes is its business, like what it writes into a bucket."""
    state_dir = system.agent_files("edge-secret").state_dir
    stored = [
        path
        for path in state_dir.rglob("*")
        if path.is_file() and path.suffix not in {".stdout", ".stderr"}
    ]
    stored += list(system.base.glob("controller.db*"))
    found = []
    for value in values:
        needle = value.encode()
        found += [f"MQTT {m.topic}" for m in system.messages if needle in m.payload]
        found += [f"log of {' '.join(p.argv[2:5])}" for p in procs if value in p.output()]
        found += [f"CLI {' '.join(r.argv[3:6])}" for r in system.cli_log if value in r.output]
        found += [f"file {path}" for path in stored if needle in path.read_bytes()]
    return found


@pytest.mark.slow
async def test_a_secret_reaches_the_step_and_nothing_else(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.online(
            "edge-secret", secrets={"API_TOKEN": SECRET, "OTHER_TOKEN": OTHER_SECRET}
        )
        good = await system.deploy(
            leaky_workflow(system, "uses", bucket, 0), "edge-secret", "--wait"
        )
        assert good.code == 0, str(good)
        bad = await system.deploy(
            leaky_workflow(system, "fails", bucket, 1), "edge-secret", "--wait"
        )
        assert bad.code != 0, str(bad)  # its stderr tail is shown: masked

        # the step saw the value as an environment variable of the secret's name
        expected = hashlib.sha256(SECRET.encode()).hexdigest()
        assert (bucket / "uses.sha256").read_text() == expected
        assert (bucket / "fails.sha256").read_text() == expected
        # and its output tails were kept, with the value masked
        finished = [e for e in system.events("edge-secret") if e["type"] == "step-finished"]
        assert len(finished) == 2
        for event in finished:
            assert "token is ***" in event["stdout"], event
            assert "token again ***" in event["stderr"], event

        # the operator's views of the same deployments, through the controller
        for dep in await system.deployments():
            await system.cli("deployments", "show", dep["id"])
            await system.cli("deployments", "show", dep["id"], "--json")
        await system.cli("events", "--env", "edge-secret")
        await system.cli("events", "--env", "edge-secret", "--json")

        assert system.controller is not None
        assert await agent.proc.terminate() == 0
        assert await system.controller.terminate() == 0

    assert leaked(system, procs, (SECRET, OTHER_SECRET)) == []
    # the logs were really captured at debug level, as JSON lines
    assert all(len(p.output().splitlines()) > 5 for p in procs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644], ids=oct)
async def test_a_secrets_file_others_can_read_stops_the_agent(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc], mode: int
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.start_agent(
            "edge-loose", secrets={"API_TOKEN": SECRET}, secrets_mode=mode, wait=None
        )
        assert await agent.proc.wait(20) == 2
        output = agent.proc.output()
        assert str(agent.files.secrets_file) in output, output
        assert oct(mode)[2:] in output, output
        assert SECRET not in output
        await system.barrier()
        assert system.probe.on(root.status("edge-loose")) == [], "it must not even connect"


@pytest.mark.slow
async def test_a_private_secrets_file_lets_the_agent_start(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """The control for the refusals above: mode 0600 is accepted."""
    async with open_system(broker, root, tmp_path, procs) as system:
        agent = await system.start_agent("edge-tight", secrets={"API_TOKEN": SECRET}, wait="status")
        assert await agent.proc.terminate() == 0
        assert SECRET not in agent.proc.output()


@pytest.mark.slow
async def test_a_secret_value_with_spaces_equals_signs_and_quotes_arrives_exactly(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    value = 'p@ss=w0rd "quoted" and spaces'
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-odd", secrets={"API_TOKEN": value})
        result = await system.deploy(leaky_workflow(system, "odd", bucket, 0), "edge-odd", "--wait")
        assert result.code == 0, str(result)
        assert (bucket / "odd.sha256").read_text() == hashlib.sha256(value.encode()).hexdigest()
        [finished] = [e for e in system.events("edge-odd") if e["type"] == "step-finished"]
        assert finished["stdout"].strip() == "token is ***"
    escaped = json.dumps(value)[1:-1]  # as it would look inside a JSON payload
    for text in (value, escaped):
        assert not any(text.encode() in m.payload for m in system.messages)
        assert not any(text in p.output() for p in procs)
