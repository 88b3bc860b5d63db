"""Running one step as a real subprocess: exit codes, output tails, timeouts and stops that
kill the whole process group, and the environment a step sees."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeplane.edge_agent.execution.runner import TAIL_CHARS, TAIL_LINES, StepProcess, step_env
from edgeplane.shared.workflow import BucketNeed

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def step(tmp_path: Path, argv: list[str], mask: Callable[[str], str] = str) -> StepProcess:
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    return StepProcess(argv, cwd=tmp_path, env=env, log_name="s", mask=mask, kill_grace=0.5)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def test_a_step_that_succeeds(tmp_path: Path) -> None:
    proc = step(tmp_path, python("print('hello'); print('world')"))
    assert proc.start()
    result = proc.finish(30)
    assert result.ok
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\nworld", "")
    assert (tmp_path / "s.stdout").read_text() == "hello\nworld\n", "output kept in the workdir"


def test_a_step_that_fails_keeps_its_exit_code_and_stderr(tmp_path: Path) -> None:
    proc = step(tmp_path, python("import sys; sys.exit('no camera on /dev/video0')"))
    proc.start()
    result = proc.finish(30)
    assert not result.ok
    assert result.exit_code == 1
    assert result.stderr == "no camera on /dev/video0"
    assert result.describe() == "exited with code 1"


def test_a_step_that_cannot_start_says_why(tmp_path: Path) -> None:
    proc = step(tmp_path, ["no-such-program-here", "--once"])
    assert not proc.start()
    result = proc.finish(30)
    assert result.exit_code is None
    assert result.describe() == "could not start: no such file: no-such-program-here"


def test_a_step_killed_by_a_signal_names_it(tmp_path: Path) -> None:
    proc = step(tmp_path, python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    proc.start()
    result = proc.finish(30)
    assert result.exit_code is None
    assert result.describe() == "killed by SIGKILL"


GRANDCHILD = """
    import signal, subprocess, sys, time
    ignore = {ignore}
    code = "import signal, time\\n"
    if ignore:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    code += "open('ready', 'w').close()\\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    open("grandchild.pid", "w").write(str(child.pid))
    {then}
"""


@pytest.mark.parametrize("ignore", [False, True], ids=["sleeper", "ignores-sigterm"])
def test_a_step_over_its_timeout_is_killed_with_its_whole_group(
    tmp_path: Path, ignore: bool
) -> None:
    proc = step(tmp_path, python(GRANDCHILD.format(ignore=ignore, then="time.sleep(60)")))
    proc.start()
    wait_until(lambda: (tmp_path / "ready").exists(), what="the grandchild")
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    result = proc.finish(0.2)
    assert result.timed_out
    assert not result.ok
    assert result.describe() == "ran over its 0.2 s timeout and was killed"
    wait_until(lambda: not alive(grandchild), timeout=5, what="the grandchild to be gone")


def test_what_a_finished_step_leaves_running_is_killed(tmp_path: Path) -> None:
    proc = step(tmp_path, python(GRANDCHILD.format(ignore=False, then="")))
    proc.start()
    result = proc.finish(30)
    assert result.ok
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert not alive(grandchild)


def test_stop_from_another_thread_ends_the_step(tmp_path: Path) -> None:
    proc = step(tmp_path, python("import time; open('up', 'w').close(); time.sleep(60)"))
    proc.start()
    wait_until(lambda: (tmp_path / "up").exists(), what="the step to start")
    stopper = threading.Thread(target=proc.stop)
    stopper.start()
    result = proc.finish(30)
    stopper.join(10)
    assert result.stopped
    assert not result.ok
    assert result.describe() == "stopped"


def test_tails_are_the_last_lines_and_masked(tmp_path: Path) -> None:
    code = """
        import sys
        for i in range(100):
            print(f"line {i}")
        print("token is tok-8c1f2e9a", file=sys.stderr)
    """
    proc = step(tmp_path, python(code), mask=lambda text: text.replace("tok-8c1f2e9a", "***"))
    proc.start()
    result = proc.finish(30)
    assert result.stdout.splitlines() == [f"line {i}" for i in range(100 - TAIL_LINES, 100)]
    assert result.stderr == "token is ***"


def test_a_long_line_is_cut_to_the_tail_size(tmp_path: Path) -> None:
    proc = step(tmp_path, python("import sys; sys.stderr.write('x' * 20000 + 'END')"))
    proc.start()
    result = proc.finish(30)
    assert len(result.stderr) == TAIL_CHARS
    assert result.stderr.endswith("xEND")


def test_the_step_environment_layers() -> None:
    env = step_env(
        {"MODE": "once", "EDGEPLANE_ENV": "spoofed", "TOKEN": "from-step"},
        agent_env={"PATH": "/usr/bin", "HOME": "/home/edge", "AGENT_ONLY": "x", "TZ": "UTC"},
        env_id="prod-line7-vision",
        dep="d-123",
        workdir=Path("/state/deployments/d-123"),
        models_dir=Path("/models"),
        buckets=[BucketNeed(name="results.v2", path="/data/results", access="write")],
        endpoints={"inference-api": "http://10.0.0.9:8080"},
        secrets={"TOKEN": "tok-1"},
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/edge",
        "TZ": "UTC",
        "MODE": "once",
        "EDGEPLANE_ENV": "prod-line7-vision",
        "EDGEPLANE_DEPLOYMENT": "d-123",
        "EDGEPLANE_WORKDIR": "/state/deployments/d-123",
        "EDGEPLANE_MODELS_DIR": "/models",
        "EDGEPLANE_BUCKET_RESULTS_V2": "/data/results",
        "EDGEPLANE_ENDPOINT_INFERENCE_API": "http://10.0.0.9:8080",
        "TOKEN": "tok-1",
    }


def test_a_step_without_path_gets_the_default(tmp_path: Path) -> None:
    env = step_env({}, agent_env={}, env_id="e", dep="d", workdir=tmp_path)
    assert env["PATH"] == os.defpath
    assert "EDGEPLANE_MODELS_DIR" not in env


def test_a_step_stopped_before_it_starts_never_runs(tmp_path: Path) -> None:
    proc = step(tmp_path, python("open('ran', 'w').close()"))
    proc.stop()
    assert not proc.start()
    result = proc.finish(30)
    assert result.stopped
    assert result.exit_code is None
    assert not (tmp_path / "ran").exists()
