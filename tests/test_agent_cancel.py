"""The ``cancel`` command on the agent's executor (no broker): a queued deployment never
starts, a running job's step is stopped, a running service is stopped and not started again
by the next executor, an undeploy takes every deployment of a workflow, a cancelled
replacement gives the old service back, and a cancel that finds nothing (or comes too late)
is answered ``rejected`` naming the command and no deployment."""

from __future__ import annotations

from pathlib import Path

from edgeplane.shared.messages import (
    Cancelled,
    CommandRejected,
    Running,
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


def service(name: str = "svc", version: str = "1.0", pre: str = "") -> Workflow:
    steps = [py("prepare", pre)] if pre else []
    return workflow(*steps, service_step(), name=name, version=version, kind="service")


def starts(executors: Executors, dep: str) -> list[int]:
    path = executors.state_dir / "deployments" / dep / "starts"
    return [int(line) for line in wait_for_file(path).split()]


def long_job(marker: Path) -> Workflow:
    code = f"import os, time; open({str(marker)!r}, 'w').write(f'{{os.getpid()}}\\n')\n"
    return workflow(py("work", code + "time.sleep(60)"), name="long")


def test_a_running_job_is_stopped_and_reported_cancelled_naming_the_command(
    executors: Executors, tmp_path: Path
) -> None:
    marker = tmp_path / "up"
    executor = executors()
    executor.submit(deploy(long_job(marker), "d-job"))
    pid = int(wait_for_file(marker))
    executor.cancel("d-job", cmd_id="c-cancel")
    cancelled = executors.sink.wait_for(Cancelled, dep="d-job")
    assert (cancelled.cmd, cancelled.reason) == (
        "c-cancel",
        "cancelled by the operator during step 'work'",
    )
    assert executors.sink.types("d-job")[-1] == "cancelled"
    assert not {"failed", "succeeded", "stopped"} & set(executors.sink.types("d-job"))
    assert not alive(pid)
    assert executor.running() == []
    executor.submit(deploy(workflow(py("ok", "pass")), "d-next"))
    executors.sink.wait_for(Succeeded, dep="d-next")  # the worker goes on


def test_a_deployment_queued_behind_another_never_starts(
    executors: Executors, tmp_path: Path
) -> None:
    marker = tmp_path / "up"
    executor = executors()
    executor.submit(deploy(long_job(marker), "d-first"))
    wait_for_file(marker)
    executor.submit(deploy(workflow(py("ok", "pass"), name="later"), "d-queued"))
    executor.cancel("d-queued", cmd_id="c-q")
    executor.cancel("d-first", cmd_id="c-f")
    cancelled = executors.sink.wait_for(Cancelled, dep="d-queued")
    assert (cancelled.cmd, cancelled.reason) == (
        "c-q",
        "cancelled by the operator before it started",
    )
    assert executors.sink.types("d-queued") == ["cancelled"]


def test_a_running_service_is_stopped_and_the_next_executor_leaves_it_off(
    executors: Executors,
) -> None:
    executor = executors()
    executor.submit(deploy(service(), "d-svc"))
    executors.sink.wait_for(Running, dep="d-svc")
    [pid] = starts(executors, "d-svc")
    executor.cancel("d-svc", cmd_id="c-svc")
    cancelled = executors.sink.wait_for(Cancelled, dep="d-svc")
    assert cancelled.cmd == "c-svc"
    assert cancelled.reason.endswith("service stopped, not started again at boot")
    assert not alive(pid)
    assert executor.running() == []
    executor.close()
    again = executors()
    again.submit(deploy(workflow(py("ok", "pass")), "d-after"))
    executors.sink.wait_for(Succeeded, dep="d-after")
    assert again.running() == []
    assert executors.sink.types("d-svc")[-1] == "cancelled"


def test_a_service_resumed_by_the_next_executor_is_cancelled_for_good(executors: Executors) -> None:
    executor = executors()
    executor.submit(deploy(service(), "d-svc"))
    executors.sink.wait_for(Running, dep="d-svc")
    executor.close()  # the agent stops: the service is kept, to resume
    again = executors()
    again.cancel("d-svc", cmd_id="c-svc")  # at once: it waits for the resume
    executors.sink.wait_for(Cancelled, dep="d-svc")
    again.close()
    third = executors()
    third.submit(deploy(workflow(py("ok", "pass")), "d-after"))
    executors.sink.wait_for(Succeeded, dep="d-after")
    assert third.running() == []
    assert len(executors.sink.of(Running, "d-svc")) == 2  # the first start and one resume


def test_undeploy_takes_the_workflow_whatever_its_deployment(executors: Executors) -> None:
    executor = executors()
    executor.submit(deploy(service(name="cam"), "d-cam"))
    executor.submit(deploy(service(name="other"), "d-other"))
    executors.sink.wait_for(Running, dep="d-other")
    executor.cancel("d-stale", workflow="cam", cmd_id="c-un")
    cancelled = executors.sink.wait_for(Cancelled, dep="d-cam")
    assert cancelled.cmd == "c-un"
    assert cancelled.reason.startswith("undeployed by the operator")
    assert executor.running() == ["d-other"]


def test_a_cancelled_replacement_gives_the_old_service_back(
    executors: Executors, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    executor = executors()
    executor.submit(deploy(service(version="1.0"), "d-v1"))
    executors.sink.wait_for(Running, dep="d-v1")
    wait = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)"
    executor.submit(deploy(service(version="2.0", pre=wait), "d-v2"))
    executors.sink.wait_for(StepStarted, dep="d-v2")
    assert [s.reason for s in executors.sink.of(Stopped, "d-v1")] == ["replaced by d-v2"]
    executor.cancel("d-v2", cmd_id="c-v2")
    executors.sink.wait_for(Cancelled, dep="d-v2")
    executors.sink.wait_for(
        Running, dep="d-v1", where=lambda e: len(executors.sink.of(Running, "d-v1")) == 2
    )
    assert executor.running() == ["d-v1"]


def test_undeploy_of_a_replacement_gives_nothing_back(executors: Executors, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    executor = executors()
    executor.submit(deploy(service(version="1.0"), "d-v1"))
    executors.sink.wait_for(Running, dep="d-v1")
    wait = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)"
    executor.submit(deploy(service(version="2.0", pre=wait), "d-v2"))
    executors.sink.wait_for(StepStarted, dep="d-v2")
    executor.cancel("d-v2", workflow="svc", cmd_id="c-un")
    executors.sink.wait_for(Cancelled, dep="d-v2")
    executor.submit(deploy(workflow(py("ok", "pass")), "d-after"))
    executors.sink.wait_for(Succeeded, dep="d-after")  # the worker is past the cancel
    assert executor.running() == []
    assert len(executors.sink.of(Running, "d-v1")) == 1


def test_a_cancel_that_finds_nothing_is_rejected_naming_the_command_only(
    executors: Executors,
) -> None:
    executor = executors()
    executor.submit(deploy(workflow(py("ok", "pass")), "d-done"))
    executors.sink.wait_for(Succeeded, dep="d-done")
    executor.cancel("d-done", cmd_id="c-late")
    rejected = executors.sink.wait_for(CommandRejected)
    assert (rejected.cmd, rejected.dep) == ("c-late", "")
    assert rejected.reason == (
        "not cancelled: deployment d-done is not running here (nothing of it runs or waits)"
    )
    executor.cancel("", workflow="nope", cmd_id="c-nope")
    refused = executors.sink.wait_for(CommandRejected, where=lambda e: e.cmd == "c-nope")
    assert refused.reason.startswith("not undeployed: workflow 'nope' is not running here")
