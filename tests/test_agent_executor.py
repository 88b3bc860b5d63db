"""The agent's executor, deployment by deployment, with real subprocesses and directories:
preflight gates the steps, steps run in order in their own working directory, and every
phase is reported as an event the controller can read."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from edgeplane.edge_agent.secrets import load_secrets
from edgeplane.shared.codec import encode
from edgeplane.shared.messages import (
    Accepted,
    CommandRejected,
    Expired,
    Failed,
    Preflight,
    StepFinished,
    Succeeded,
)
from edgeplane.shared.workflow import BucketNeed, DatasourceNeed, ModelNeed, Requires, Step
from tests.support.execution import Executors, deploy, py, workflow


def test_a_passing_deploy_writes_into_its_bucket(executors: Executors, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    wf = workflow(
        py("prepare", "print('preparing')"),
        py(
            "inspect",
            """
            import os, pathlib
            out = pathlib.Path(os.environ["EDGEPLANE_BUCKET_RESULTS"]) / "report.txt"
            out.write_text("defects: 0 in " + os.environ["EDGEPLANE_DEPLOYMENT"])
            print("wrote", out.name)
            """,
        ),
        requires=Requires(buckets=[BucketNeed(name="results", path=str(results), access="write")]),
    )
    executor = executors()
    executor.submit(deploy(wf, "d-pass"))
    done = executors.sink.wait_for(Succeeded, dep="d-pass")
    assert executors.sink.types("d-pass") == [
        "accepted",
        "preflight",
        "started",
        "step-started",
        "step-finished",
        "step-started",
        "step-finished",
        "succeeded",
    ]
    assert done.cmd == "c-d-pass"
    assert (results / "report.txt").read_text() == "defects: 0 in d-pass"
    preflight = executors.sink.of(Preflight, "d-pass")[0]
    assert preflight.ok
    assert [(c.kind, c.name, c.ok) for c in preflight.checks] == [("bucket", "results", True)]
    finished = executors.sink.of(StepFinished, "d-pass")
    assert [(f.step, f.index, f.exit_code, f.ok) for f in finished] == [
        ("prepare", 0, 0, True),
        ("inspect", 1, 0, True),
    ]
    assert finished[1].stdout == "wrote report.txt"
    workdir = executors.state_dir / "deployments" / "d-pass"
    assert (workdir / "01-inspect.stdout").read_text() == "wrote report.txt\n"
    assert executor.running() == []


def test_a_failed_preflight_runs_nothing(executors: Executors, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    wf = workflow(
        py("touch", f"open({str(marker)!r}, 'w').close()"),
        requires=Requires(models=[ModelNeed(name="defect-detector", version=">=2")]),
    )
    executors().submit(deploy(wf, "d-refused"))
    rejected = executors.sink.wait_for(CommandRejected, dep="d-refused")
    assert rejected.reason == (
        "preflight failed: model defect-detector (defect-detector: not in the models dir)"
    )
    assert executors.sink.types("d-refused") == ["accepted", "preflight", "rejected"]
    assert not executors.sink.of(Preflight, "d-refused")[0].ok
    assert not marker.exists()


def test_models_are_checked_against_the_models_dir(executors: Executors, tmp_path: Path) -> None:
    (tmp_path / "models" / "defect-detector" / "2.4").mkdir(parents=True)
    wf = workflow(
        py("use", "import os; print(os.environ['EDGEPLANE_MODELS_DIR'])"),
        requires=Requires(models=[ModelNeed(name="defect-detector", version=">=2.1,<3")]),
    )
    executors(models_dir=tmp_path / "models").submit(deploy(wf, "d-model"))
    executors.sink.wait_for(Succeeded, dep="d-model")
    [check] = executors.sink.of(Preflight, "d-model")[0].checks
    assert check.detail == "defect-detector: 2.4 satisfies >=2.1,<3"
    assert executors.sink.of(StepFinished, "d-model")[0].stdout == str(tmp_path / "models")


def test_a_dry_run_reports_its_preflight_and_runs_nothing(
    executors: Executors, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    executor = executors()
    executor.submit(
        deploy(workflow(py("touch", f"open({str(marker)!r}, 'w')")), "d-dry", dry_run=True)
    )
    executor.submit(deploy(workflow(py("ok", "pass")), "d-after"))
    executors.sink.wait_for(Succeeded, dep="d-after")  # the worker is done with d-dry
    assert executors.sink.types("d-dry") == ["accepted", "preflight"]
    assert executors.sink.of(Accepted, "d-dry")[0].dry_run
    assert executors.sink.of(Preflight, "d-dry")[0].dry_run
    assert not marker.exists()


def test_a_failing_step_stops_the_job_and_names_the_step(
    executors: Executors, tmp_path: Path
) -> None:
    wf = workflow(
        py("one", "pass"),
        py("two", "import sys; print('camera offline', file=sys.stderr); sys.exit(3)"),
        py("three", f"open({str(tmp_path / 'three')!r}, 'w')"),
    )
    executors().submit(deploy(wf, "d-fail"))
    failed = executors.sink.wait_for(Failed, dep="d-fail")
    assert (failed.reason, failed.step) == ("step 'two' exited with code 3", "two")
    two = executors.sink.of(StepFinished, "d-fail")[-1]
    assert (two.step, two.exit_code, two.ok, two.stderr) == ("two", 3, False, "camera offline")
    assert not (tmp_path / "three").exists()
    assert "succeeded" not in executors.sink.types("d-fail")


def test_a_step_that_cannot_start_says_why(executors: Executors) -> None:
    wf = workflow(Step(name="missing", run=["no-such-tool-xyz", "--once"]))
    executors().submit(deploy(wf, "d-nostart"))
    failed = executors.sink.wait_for(Failed, dep="d-nostart")
    assert failed.reason == "step 'missing' could not start: no such file: no-such-tool-xyz"
    finished = executors.sink.of(StepFinished, "d-nostart")[0]
    assert finished.exit_code is None
    assert finished.stderr == "edgeplane: could not start: no such file: no-such-tool-xyz"


def test_a_step_over_its_timeout_fails_the_job(executors: Executors) -> None:
    wf = workflow(py("hang", "import time; time.sleep(60)", timeout=0.3))
    executors().submit(deploy(wf, "d-slow"))
    failed = executors.sink.wait_for(Failed, dep="d-slow")
    assert failed.reason == "step 'hang' ran over its 0.3 s timeout and was killed"
    finished = executors.sink.of(StepFinished, "d-slow")[0]
    assert finished.timed_out
    assert finished.exit_code is None


def test_secrets_reach_steps_only_as_the_required_variables(
    executors: Executors, tmp_path: Path
) -> None:
    secrets_path = tmp_path / "secrets.env"
    secrets_path.write_text("CAMERA_TOKEN=cam-4d9e1f77\nDB_PASSWORD=db-0a8b3c55\n")
    secrets_path.chmod(0o600)
    secrets = load_secrets(secrets_path)
    wf = workflow(
        py(
            "show",
            """
            import os, sys
            print(" ".join(sorted(os.environ)))
            print("token:", os.environ["CAMERA_TOKEN"], file=sys.stderr)
            open("seen", "w").write(os.environ["CAMERA_TOKEN"])
            """,
            env={"MODE": "once"},
        ),
        requires=Requires(secrets=["CAMERA_TOKEN"]),
    )
    executors(
        secrets=secrets, agent_env={"PATH": os.defpath, "HOME": "/root", "OTHER": "x"}
    ).submit(deploy(wf, "d-secret"))
    executors.sink.wait_for(Succeeded, dep="d-secret")
    finished = executors.sink.of(StepFinished, "d-secret")[0]
    names = set(finished.stdout.split())
    names.discard("LC_CTYPE")  # Python's own locale coercion may add it
    assert names == {
        "PATH",
        "HOME",
        "MODE",
        "CAMERA_TOKEN",
        "EDGEPLANE_ENV",
        "EDGEPLANE_DEPLOYMENT",
        "EDGEPLANE_WORKDIR",
    }
    assert (executors.state_dir / "deployments" / "d-secret" / "seen").read_text() == "cam-4d9e1f77"
    assert finished.stderr == "token: ***"
    wire = b"".join(encode(event) for event in executors.sink.events)
    assert b"cam-4d9e1f77" not in wire
    assert b"db-0a8b3c55" not in wire


def test_an_expired_command_is_reported_and_skipped(executors: Executors, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmd = deploy(
        workflow(py("touch", f"open({str(marker)!r}, 'w')")), "d-late", expires=time.time() - 5
    )
    executors().submit(cmd)
    expired = executors.sink.wait_for(Expired, dep="d-late")
    assert expired.cmd == cmd.id
    assert expired.reason.startswith("expired 5.")
    assert "before it was taken" in expired.reason
    assert executors.sink.types("d-late") == ["expired"]
    assert not marker.exists()


def test_a_deployment_id_that_is_not_a_directory_name_is_refused(executors: Executors) -> None:
    executors().submit(deploy(workflow(py("ok", "pass")), "../../etc"))
    rejected = executors.sink.wait_for(CommandRejected, dep="../../etc")
    assert rejected.reason.startswith("bad deployment id '../../etc'")


def test_only_the_newest_working_directories_are_kept(executors: Executors) -> None:
    executor = executors(keep=2)
    for index in range(4):
        executor.submit(deploy(workflow(py("ok", "pass")), f"d-keep-{index}"))
    executor.submit(deploy(workflow(py("ok", "pass"), name="other"), "d-other"))
    executors.sink.wait_for(Succeeded, dep="d-other")
    kept = sorted(path.name for path in (executors.state_dir / "deployments").iterdir())
    assert kept == ["d-keep-2", "d-keep-3", "d-other"]


def test_a_deployment_after_close_is_refused(executors: Executors) -> None:
    executor = executors()
    executor.close()
    executor.submit(deploy(workflow(py("ok", "pass")), "d-closed"))
    rejected = executors.sink.wait_for(CommandRejected, dep="d-closed")
    assert rejected.reason == "not run: agent stopping"


def test_a_working_directory_that_cannot_be_made_fails_by_name(executors: Executors) -> None:
    executors.state_dir.mkdir(parents=True)
    (executors.state_dir / "deployments").write_text("in the way")
    executors().submit(deploy(workflow(py("ok", "pass")), "d-nodir"))
    failed = executors.sink.wait_for(Failed, dep="d-nodir")
    assert failed.reason.startswith("cannot create ")
    assert "deployments/d-nodir" in failed.reason


def closed_port() -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("model", "model ocr (ocr: not in the models dir)"),
        ("datasource", "datasource camera (tcp://127.0.0.1:{port}: connection refused)"),
        ("bucket", "bucket results ({tmp}/absent: does not exist)"),
        ("secret", "secret TOKEN (not in the agent's secrets file)"),
        ("endpoint", "endpoint api (not configured on the agent ([endpoints] in its config file))"),
    ],
)
def test_each_check_failing_alone_refuses_the_deployment_by_name(
    executors: Executors, tmp_path: Path, kind: str, reason: str
) -> None:
    port = closed_port()
    secrets_path = tmp_path / "secrets.env"
    secrets_path.write_text("OTHER=other-value\n")
    secrets_path.chmod(0o600)
    (tmp_path / "models" / "defect").mkdir(parents=True)
    needs = {
        "model": Requires(models=[ModelNeed(name="ocr")]),
        "datasource": Requires(
            datasources=[DatasourceNeed(name="camera", url=f"tcp://127.0.0.1:{port}")]
        ),
        "bucket": Requires(
            buckets=[BucketNeed(name="results", path=str(tmp_path / "absent"), access="read")]
        ),
        "secret": Requires(secrets=["TOKEN"]),
        "endpoint": Requires(endpoints=["api"]),
    }[kind]
    executor = executors(
        models_dir=tmp_path / "models",
        secrets=load_secrets(secrets_path),
        endpoints={"other": "http://10.0.0.1"},
    )
    executor.submit(deploy(workflow(py("ok", "pass"), requires=needs), "d-check"))
    rejected = executors.sink.wait_for(CommandRejected, dep="d-check")
    expected = reason.format(port=port, tmp=tmp_path)
    assert rejected.reason == f"preflight failed: {expected}"
    [check] = executors.sink.of(Preflight, "d-check")[0].checks
    assert (check.kind, check.ok) == (kind, False)
    assert "started" not in executors.sink.types("d-check")
