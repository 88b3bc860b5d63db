"""The benchmarks at a toy scale, so their code cannot rot. No timing is asserted here: a
benchmark reports PASS or MISS, and only failing to run at all is a failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

BENCHES = {
    "ingest": ["--count", "20", "--quick", "--flood", "500", "--seconds", "2"],
    "detection": ["--count", "20", "--quick", "--kills", "3", "--real", "1", "--frozen", "2"],
    "agent_footprint": ["--quick", "--seconds", "2", "--agent-from", "checkout"],
    # with paced heartbeats beyond the fleet: how 30,000 environments are run
    "restart": ["--count", "20", "--quick", "--change", "2", "--watch", "1", "--paced", "30"],
    "backlog": ["--count", "20", "--events", "500"],
    "deploy_fanout": ["--count", "5", "--burst", "500"],
    "rollout": ["--count", "40", "--bake", "0.5"],
}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_runs_and_writes_its_figures(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *BENCHES[name], "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout or "MISS" in result.stdout, result.stdout
    (written,) = tmp_path.glob(f"{name}-*.json")
    body = json.loads(written.read_text())
    assert body["bench"] == name
    assert body["verdicts"], body
    assert all(v["measured"] is not None for v in body["verdicts"]), body["verdicts"]
    assert body["machine"]["nproc"] >= 1


def test_bench_that_cannot_run_says_so(tmp_path: Path) -> None:
    """A fleet larger than a process may open files for is refused with one clear line."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.restart", "--count", "1000000", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "bench restart could not run: --count 1000000 needs" in result.stderr
    assert not list(tmp_path.iterdir())
