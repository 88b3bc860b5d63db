"""Services on the agent: kept running with backoff, replaced, rolled back, restarted on
request, stopped with the agent and started again by the next one; and what a crashed
agent left behind (an interrupted job, leftover processes) is cleaned up and reported."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from edgeplane.edge_agent.execution.runner import StepProcess
from edgeplane.edge_agent.execution.services import ServiceSupervisor
from edgeplane.shared.backoff import Backoff
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import (
    Ack,
    CommandRejected,
    Deploy,
    Failed,
    RolledBack,
    Running,
    ServiceRestarted,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)
from edgeplane.shared.workflow import Workflow
from tests.support.execution import (
    Executors,
    alive,
    deploy,
    py,
    service_step,
    wait_for_file,
    workflow,
)


def starts(executors: Executors, dep: str, count: int = 1) -> list[int]:
    """The pids of the first ``count`` starts of ``dep``'s service."""
    path = executors.state_dir / "deployments" / dep / "starts"
    while True:
        pids = [int(line) for line in wait_for_file(path).split()]
        if len(pids) >= count:
            return pids


def service(name: str = "svc", version: str = "1.0", fail: str = "", pre: str = "") -> Workflow:
    steps = [py("prepare", pre)] if pre else []
    return workflow(*steps, service_step(fail=fail), name=name, version=version, kind="service")


def test_a_service_is_running_after_its_grace(executors: Executors) -> None:
    executor = executors()
    executor.submit(deploy(service(pre="print('installed')"), "d-svc"))
    executors.sink.wait_for(Running, dep="d-svc")
    assert executors.sink.types("d-svc") == [
        "accepted",
        "preflight",
        "started",
        "step-started",
        "step-finished",
        "step-started",
        "running",
    ]
    assert executor.running() == ["d-svc"]
    assert alive(starts(executors, "d-svc")[0])


def test_a_service_that_exits_is_restarted_with_backoff(executors: Executors) -> None:
    # The first run outlives the grace, then it and the next two exit with 7; the fourth stays.
    crash = "if starts == 1: time.sleep(0.8)\nif starts <= 3: sys.exit(7)"
    executors().submit(deploy(service(fail=crash), "d-crashy"))
    executors.sink.wait_for(Running, dep="d-crashy")
    executors.sink.wait_for(ServiceRestarted, dep="d-crashy", where=lambda e: e.restarts == 3)
    restarts = executors.sink.of(ServiceRestarted, "d-crashy")
    assert [(r.step, r.restarts, r.exit_code) for r in restarts] == [
        ("serve", 1, 7),
        ("serve", 2, 7),
        ("serve", 3, 7),
    ]
    delays = [r.delay for r in restarts]
    assert delays == sorted(delays), "the delay grows"
    assert 0.025 <= delays[0] <= 0.05
    assert 0.1 <= delays[2] <= 0.2, "capped"
    assert alive(starts(executors, "d-crashy", 4)[3])
    assert len(executors.sink.of(Running, "d-crashy")) == 1


# Tests where a service must die within its grace give it a long one: a loaded machine may
# take a while to start Python, and a process that exits returns at once anyway.
LONG_GRACE = 3.0


def test_a_service_that_dies_in_its_first_grace_failed_to_start(executors: Executors) -> None:
    executors(service_grace=LONG_GRACE).submit(
        deploy(service(fail="print('port 8080 in use', file=sys.stderr); sys.exit(2)"), "d-dead")
    )
    failed = executors.sink.wait_for(Failed, dep="d-dead")
    assert failed.reason == "failed to start: step 'serve' exited with code 2"
    assert failed.step == "serve"
    finished = executors.sink.of(StepFinished, "d-dead")[0]
    assert (finished.exit_code, finished.stderr) == (2, "port 8080 in use")
    assert "running" not in executors.sink.types("d-dead")


def test_a_new_version_replaces_the_running_one(executors: Executors) -> None:
    executor = executors()
    executor.submit(deploy(service(version="1.0"), "d-v1"))
    executors.sink.wait_for(Running, dep="d-v1")
    old_pid = starts(executors, "d-v1")[0]
    executor.submit(deploy(service(version="2.0"), "d-v2"))
    executors.sink.wait_for(Running, dep="d-v2")
    stopped = executors.sink.of(Stopped, "d-v1")
    assert [s.reason for s in stopped] == ["replaced by d-v2"]
    assert not alive(old_pid)
    assert executor.running() == ["d-v2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (
            {"fail": "sys.exit(5)"},
            "failed to start: step 'serve' exited with code 5",
        ),
        (
            {"pre": "import sys; sys.exit(4)"},
            "step 'prepare' exited with code 4",
        ),
    ],
    ids=["service-dies", "step-fails"],
)
def test_a_new_version_that_fails_to_start_is_rolled_back(
    executors: Executors, broken: dict[str, str], reason: str
) -> None:
    executor = executors(service_grace=LONG_GRACE)
    executor.submit(deploy(service(version="1.0"), "d-good"))
    executors.sink.wait_for(Running, dep="d-good")
    first = starts(executors, "d-good")[0]
    executor.submit(deploy(service(version="2.0", **broken), "d-bad"))
    rolled = executors.sink.wait_for(RolledBack, dep="d-bad")
    assert (rolled.restored, rolled.version, rolled.reason) == ("d-good", "1.0", reason)
    types = executors.sink.types("d-bad")
    assert types[-2:] == ["failed", "rolled-back"]
    assert executors.sink.of(Failed, "d-bad")[0].reason == reason
    assert [s.reason for s in executors.sink.of(Stopped, "d-good")] == ["replaced by d-bad"]
    assert executor.running() == ["d-good"]
    pids = starts(executors, "d-good", 2)
    assert not alive(first)
    assert alive(pids[1]), "the old version runs again"


def test_restart_restarts_a_service_and_is_acknowledged(executors: Executors) -> None:
    executor = executors()
    executor.submit(deploy(service(), "d-r"))
    executors.sink.wait_for(Running, dep="d-r")
    mark = len(executors.sink.events)
    executor.restart("svc", cmd_id="c-restart")
    ack = executors.sink.wait_for(Ack, where=lambda e: e.cmd == "c-restart")
    assert (ack.op, ack.ok, ack.detail) == ("restart", True, "restarted: svc")
    assert executors.sink.types("d-r")[-2:] == ["stopped", "running"]
    assert executors.sink.of(Stopped, "d-r")[0].reason == "restart requested"
    old, new = starts(executors, "d-r", 2)
    assert not alive(old)
    assert alive(new)
    assert executors.sink.events.index(ack) > mark


def test_restart_of_an_unknown_workflow_is_refused_by_name(executors: Executors) -> None:
    executors().restart("nope", cmd_id="c-nope")
    ack = executors.sink.wait_for(Ack)
    assert (ack.cmd, ack.ok, ack.detail) == ("c-nope", False, "no workflow 'nope' is running")


def test_restart_runs_the_current_job_again(executors: Executors, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = f"""
        import time
        with open({str(runs)!r}, "a") as f:
            f.write("run\\n")
        if open({str(runs)!r}).read().count("run") == 1:
            time.sleep(60)
    """
    executor = executors()
    executor.submit(deploy(workflow(py("work", code)), "d-job"))
    wait_for_file(runs)
    executor.restart("inspect", cmd_id="c-again")
    executors.sink.wait_for(Succeeded, dep="d-job")
    ack = executors.sink.wait_for(Ack)
    assert (ack.ok, ack.detail) == (True, "restarted: inspect")
    assert executors.sink.types("d-job") == [
        "accepted",
        "preflight",
        "started",
        "step-started",
        "stopped",
        "step-started",
        "step-finished",
        "succeeded",
    ]
    assert runs.read_text() == "run\nrun\n"


def test_stop_all_stops_everything_and_refuses_new_work(
    executors: Executors, tmp_path: Path
) -> None:
    executor = executors()
    executor.submit(deploy(service(), "d-s"))
    executors.sink.wait_for(Running, dep="d-s")
    up = tmp_path / "up"
    executor.submit(
        deploy(
            workflow(
                py(
                    "work",
                    f"import os, time; open({str(up)!r}, 'w').write(f'{{os.getpid()}}\\n')\n"
                    "time.sleep(60)",
                ),
                name="long",
            ),
            "d-j",
        )
    )
    job_pid = int(wait_for_file(up))
    service_pid = starts(executors, "d-s")[0]
    executor.stop_all("retired", timeout=10, resume=False)
    assert [s.reason for s in executors.sink.of(Stopped, "d-s")] == ["retired"]
    assert [s.reason for s in executors.sink.of(Stopped, "d-j")] == ["retired"]
    assert "failed" not in executors.sink.types("d-j")
    assert executor.running() == []
    assert not alive(job_pid)
    assert not alive(service_pid)
    executor.submit(deploy(workflow(py("ok", "pass")), "d-late"))
    rejected = executors.sink.wait_for(CommandRejected, dep="d-late")
    assert rejected.reason == "not run: retired"
    executor.close()
    again = executors()
    again.submit(deploy(workflow(py("ok", "pass")), "d-new"))
    executors.sink.wait_for(Succeeded, dep="d-new")
    assert again.running() == [], "a retired service stays stopped"
    assert executors.sink.types("d-s")[-1] == "stopped"


def test_services_stopped_with_the_agent_start_again_with_the_next(
    executors: Executors,
) -> None:
    first = executors()
    first.submit(deploy(service(), "d-keep"))
    executors.sink.wait_for(Running, dep="d-keep")
    first.close()
    assert [s.reason for s in executors.sink.of(Stopped, "d-keep")] == ["agent stopping"]
    mark = len(executors.sink.events)
    second = executors()
    executors.sink.wait_for(Running, dep="d-keep", after=mark)
    old, new = starts(executors, "d-keep", 2)
    assert not alive(old)
    assert alive(new)
    assert second.running() == ["d-keep"]


# --- an agent killed in the middle: a real process, SIGKILL --------------------------------
AGENT = """
import sys, threading
from pathlib import Path
from edgeplane.edge_agent.execution.executor import Executor, ExecutorOptions
from edgeplane.shared.codec import COMMAND, encode

class PrintSink:
    def emit(self, kind, /, **fields):
        event = kind(env="dev-lab-exec", seq=0, **fields)
        sys.stdout.write(encode(event).decode() + "\\n")
        sys.stdout.flush()
        return event

executor = Executor("dev-lab-exec", state_dir=Path(sys.argv[1]), models_dir=None,
                    secrets=None, endpoints={}, sink=PrintSink(),
                    options=ExecutorOptions(service_grace=float(sys.argv[2])))
executor.start()
for payload in sys.argv[3:]:
    executor.submit(COMMAND.decode(payload.encode()))
threading.Event().wait()
"""


def pump(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def start_agent(state_dir: Path, grace: float, *commands: Deploy) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", AGENT, str(state_dir), str(grace)]
    argv += [encode(command).decode() for command in commands]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def kill_agent(agent: subprocess.Popen[str], reader: threading.Thread) -> None:
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    reader.join(10)
    assert agent.stdout is not None
    agent.stdout.close()


def read_until(lines: queue.Queue[str], type_: str, dep: str) -> None:
    while True:
        event = json.loads(lines.get(timeout=20))
        if (event["type"], event["dep"]) == (type_, dep):
            return


def test_a_crashed_agent_leaves_nothing_behind(executors: Executors, tmp_path: Path) -> None:
    up = tmp_path / "up"
    job = workflow(
        py(
            "work",
            f"""
            import os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open({str(up)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}\\n")
            time.sleep(600)
            """,
        ),
        name="long",
    )
    agent = start_agent(executors.state_dir, 0.5, deploy(service(), "d-svc"), deploy(job, "d-job"))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=pump, args=(agent.stdout, lines))
    reader.start()
    try:
        read_until(lines, "running", "d-svc")
        read_until(lines, "step-started", "d-job")
        job_pids = [int(pid) for pid in wait_for_file(up).split()]
        service_pid = starts(executors, "d-svc")[0]
    finally:
        kill_agent(agent, reader)
    assert all(alive(pid) for pid in [*job_pids, service_pid]), "steps outlive their agent"

    executors()
    failed = executors.sink.wait_for(Failed, dep="d-job")
    assert failed.reason == "interrupted: the agent stopped during step 'work'"
    assert failed.step == "work"
    assert not any(alive(pid) for pid in job_pids), "the interrupted job's group is killed"
    executors.sink.wait_for(Running, dep="d-svc")
    assert not alive(service_pid), "the old service process is killed before the new start"
    assert alive(starts(executors, "d-svc", 2)[1])
    assert not executors.sink.of(StepStarted, "d-job")


# --- the supervisor on its own -------------------------------------------------------------
def test_a_run_that_lasted_resets_the_backoff(tmp_path: Path) -> None:
    """With ``healthy_after`` 0 every run counts as healthy: each delay starts afresh."""
    code = "if starts == 1: time.sleep(0.4)\nif starts <= 4: sys.exit(3)"
    step = service_step(fail=code)
    restarts: queue.Queue[tuple[int, int | None, float]] = queue.Queue()
    supervisor = ServiceSupervisor(
        lambda: StepProcess(step.run, cwd=tmp_path, env={}, log_name="svc", kill_grace=0.5),
        name="svc",
        on_restart=lambda count, code, delay: restarts.put((count, code, delay)),
        grace=0.2,
        backoff=Backoff(initial=0.1, cap=10.0),
        healthy_after=0.0,
    )
    try:
        assert supervisor.start() is None
        seen = [restarts.get(timeout=20) for _ in range(4)]
        last = supervisor.pgid
    finally:
        supervisor.stop()
    assert [(count, code) for count, code, _ in seen] == [(1, 3), (2, 3), (3, 3), (4, 3)]
    assert all(0.05 <= delay <= 0.1 for _, _, delay in seen), seen
    assert last is not None
    assert not alive(last), "stop() ends the process that runs"


def test_an_agent_crash_while_a_service_starts_leaves_no_stray_service(
    executors: Executors,
) -> None:
    agent = start_agent(executors.state_dir, 60.0, deploy(service(), "d-starting"))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=pump, args=(agent.stdout, lines))
    reader.start()
    try:
        read_until(lines, "step-started", "d-starting")
        pid = starts(executors, "d-starting")[0]
    finally:
        kill_agent(agent, reader)
    assert alive(pid)
    executors()
    failed = executors.sink.wait_for(Failed, dep="d-starting")
    assert failed.reason == "interrupted: the agent stopped during step 'serve'"
    assert not alive(pid)
    assert not executors.sink.of(Running, "d-starting")


def test_stop_all_while_a_service_starts_stops_it(executors: Executors) -> None:
    executor = executors(service_grace=60.0)
    executor.submit(deploy(service(), "d-early"))
    executors.sink.wait_for(StepStarted, dep="d-early")
    pid = starts(executors, "d-early")[0]
    executor.stop_all("retired", timeout=10, resume=False)
    stopped = executors.sink.wait_for(Stopped, dep="d-early")
    assert stopped.reason == "retired"
    assert not alive(pid)
    assert executors.sink.types("d-early")[-1] == "stopped"
    assert executor.running() == []
