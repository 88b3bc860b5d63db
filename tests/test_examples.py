"""The files in examples/: every workflow is valid, and the README walk-through's workflow
succeeds with what examples/ ships (its models dir; the secret and the bucket it asks for)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.operator.workflow_file import read_workflow_file
from edgeplane.shared.topics import TopicRoot
from tests.support.procs import Proc
from tests.support.system import open_system

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORKFLOWS = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".json"))


def test_the_examples_are_there() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"hello.yaml", "line-inspect.yaml", "vision-inspect.yaml"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_example_workflow_is_valid(path: Path) -> None:
    loaded = read_workflow_file(path)
    assert loaded.workflow.name == path.stem
    assert loaded.warnings == ()


@pytest.mark.slow
async def test_the_walk_through_workflow_succeeds_with_what_examples_ships(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    """As the README runs it, but on the test's broker and with the bucket in the test's
    directory: the shipped models dir satisfies the model requirement."""
    data = yaml.safe_load((EXAMPLES / "line-inspect.yaml").read_text())
    results = tmp_path / "results"
    results.mkdir()
    data["requires"]["datasources"][0]["url"] = broker.url
    data["requires"]["buckets"][0]["path"] = str(results)
    step = data["steps"][0]["run"]
    step[-1] = step[-1].replace("/tmp/edgeplane-results", str(results))
    workflow = tmp_path / "line-inspect.yaml"
    workflow.write_text(yaml.safe_dump(data))
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("dev-lab-vision")
        await system.start_agent(
            "dev-lab-vision",
            secrets={"CAMERA_TOKEN": "not-a-real-token"},
            extra=["--models-dir", str(EXAMPLES / "models")],
        )
        result = await system.deploy(workflow, "dev-lab-vision", "--wait")
    assert result.code == 0, str(result)
    assert "defect-detector" in result.stdout, str(result)
    report = (results / "line-inspect.txt").read_text()
    assert "0 defects (camera token of 16 characters)" in report
    assert "not-a-real-token" not in result.output
