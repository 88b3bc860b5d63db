"""``edgeplane demo``: run as a user would, it tells its story in under a minute, exits 0 and
leaves nothing running; interrupted, it stops everything too. The summary and the check of
the story's outcome are pure functions, tested on their own."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from edgeplane.controller.demo.story import DemoOutcome, Refusal, summary, surprises
from edgeplane.shared.messages import Alert, EnvView
from edgeplane.shared.rpc import DeploymentInfo, EnvInfo

DEMO_LIMIT = 60.0  # seconds: the promise
REPO = Path(__file__).resolve().parent.parent


def demo_environment(tmp_path: Path) -> dict[str, str]:
    """The demo's temporary directory goes under ``tmp_path``, so the test can tell its
    processes (every one has the directory in its command line) from anybody else's."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def assert_nothing_left(tmp_path: Path) -> None:
    assert processes_mentioning(str(tmp_path)) == [], "the demo left processes running"
    assert list(tmp_path.glob("edgeplane-demo-*")) == [], "the demo left its directory"


@pytest.mark.slow
@pytest.mark.parametrize("broker_kind", ["mosquitto", "embedded"])
async def test_demo_tells_its_story_and_leaves_nothing_running(
    tmp_path: Path, broker_kind: str
) -> None:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgeplane.controller",
        "demo",
        "--broker-kind",
        broker_kind,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=demo_environment(tmp_path),
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), DEMO_LIMIT + 10)
    elapsed = time.monotonic() - started
    output = stdout.decode()
    assert process.returncode == 0, f"demo failed:\n{output}\n{stderr.decode()}"
    assert elapsed < DEMO_LIMIT, f"the demo took {elapsed:.1f} s"

    assert f"private {broker_kind}" in output, "a broker of its own, never a shared one"
    assert re.search(r"^  default-cloud +online$", output, re.MULTILINE)
    assert re.search(r"^  dev-lab-vision +online$", output, re.MULTILINE)
    assert re.search(r"^  dev-line-vision +offline \(connection-lost\)  FLAPPING$", output, re.M)
    assert re.search(r"^  dev-lab-vision +demo-count-parts 1\.0\.0  succeeded$", output, re.M)
    refused_line = r"^  dev-line-vision +demo-count-parts 1\.0\.0  rejected: (.*)$"
    refused = re.search(refused_line, output, re.MULTILINE)
    assert refused, output
    assert "DEMO_CAMERA_TOKEN" in refused.group(1), "the refusal names the missing secret"
    assert re.search(r"^  dev-lab-vision\.txt: dev-lab-vision: 12 parts counted", output, re.M)
    assert "Secret DEMO_CAMERA_TOKEN: found in no log and no event" in output
    assert re.search(r"^  dev-line-vision +flapping raised", output, re.MULTILINE)
    assert_nothing_left(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_interrupted_demo_stops_everything(tmp_path: Path, signum: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgeplane.controller",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=demo_environment(tmp_path),
    )
    assert process.stdout is not None
    # Interrupt as soon as the first agent is online: all three are started by then, and
    # the story has seconds left to run.
    async with asyncio.timeout(30):
        while b"agent default-cloud online" not in await process.stdout.readline():
            pass
    assert processes_mentioning(str(tmp_path)), "the demo's processes run in the temp dir"
    process.send_signal(signum)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130
    assert "interrupted; stopping everything" in stderr.decode()
    assert_nothing_left(tmp_path)


# --- the summary and the story check (pure) -------------------------------------------------
def told_story() -> DemoOutcome:
    def env(id_: str, status: str, flapping: bool = False) -> EnvInfo:
        return EnvInfo(
            id=id_,
            project="default",
            stage="dev",
            location="x",
            purpose="y",
            created=1.0,
            status=status,  # type: ignore[arg-type]
            flapping=flapping,
        )

    def dep(id_: str, env_id: str, state: str, reason: str = "") -> DeploymentInfo:
        return DeploymentInfo(
            id=id_,
            env=env_id,
            workflow="demo-count-parts",
            version="1.0.0",
            state=state,  # type: ignore[arg-type]
            reason=reason,
            created=1.0,
            updated=2.0,
        )

    return DemoOutcome(
        broker="mosquitto on mqtt://127.0.0.1:1",
        edge_envs=["dev-lab-vision", "dev-line-vision"],
        environments=[
            env("default-cloud", "online"),
            env("dev-lab-vision", "online"),
            env("dev-line-vision", "offline", flapping=True),
        ],
        deployments=[
            dep("d-1", "dev-lab-vision", "succeeded"),
            dep("d-2", "dev-line-vision", "rejected", "preflight failed"),
        ],
        failed_checks={"d-2": ["secret DEMO_CAMERA_TOKEN: not in the agent's secrets file"]},
        alerts=[Alert(kind="flapping", state="raised", env="dev-line-vision", ts=5.0)],
        views={
            "dev-line-vision": EnvView(
                env="dev-line-vision", status="offline", since=4.0, reason="connection-lost"
            )
        },
        offline_env="dev-line-vision",
        flap_cycles=2,
        seconds=3.2,
        reports={"dev-lab-vision.txt": "dev-lab-vision: 12 parts counted"},
    )


def test_summary_shows_statuses_outcomes_reasons_and_alerts() -> None:
    text = summary(told_story())
    assert "  dev-line-vision    offline (connection-lost)  FLAPPING" in text
    assert "  dev-lab-vision     demo-count-parts 1.0.0  succeeded" in text
    assert "  dev-line-vision    demo-count-parts 1.0.0  rejected: preflight failed" in text
    assert "failed check: secret DEMO_CAMERA_TOKEN: not in the agent's secrets file" in text
    assert "  dev-line-vision    flapping raised" in text
    assert "  dev-lab-vision.txt: dev-lab-vision: 12 parts counted" in text


def test_a_story_told_as_promised_has_no_surprises() -> None:
    assert surprises(told_story()) == []


def test_every_way_the_story_can_go_wrong_is_named() -> None:
    outcome = told_story()
    outcome.deployments[0] = DeploymentInfo(
        id="d-1",
        env="dev-lab-vision",
        workflow="demo-count-parts",
        version="1.0.0",
        state="failed",
        created=1.0,
        updated=2.0,
    )
    outcome.failed_checks = {}
    outcome.alerts = []
    outcome.leaks = ["agents/dev-lab-vision/agent.log"]
    assert surprises(outcome) == [
        "the deployment to dev-lab-vision did not succeed",
        "the deployment to dev-line-vision was not refused for the missing secret",
        "no flapping alert for dev-line-vision",
        "the secret value showed up in agents/dev-lab-vision/agent.log",
    ]


def test_a_gate_refusal_is_shown_with_its_reason() -> None:
    outcome = told_story()
    outcome.refusals = [Refusal("dev-line-vision", "environment dev-line-vision is flapping")]
    assert (
        "  dev-line-vision    refused by the controller: environment dev-line-vision is flapping"
        in summary(outcome)
    )


def test_the_demo_and_the_broker_management_import_no_command() -> None:
    """They are what commands use: `edgeplane demo` and `up` import them, not the reverse."""
    sources = [
        *(REPO / "controller" / "demo").glob("*.py"),
        *(REPO / "controller" / "broker").glob("*.py"),
    ]
    found = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted(sources)
        for name in _imports(path)
        if name.startswith("edgeplane.controller.cli")
    ]
    assert len(sources) > 5
    assert found == []


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names
