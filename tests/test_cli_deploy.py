"""``edgeplane deploy`` as an operator runs it (real controller, agent and broker), and the
pure judgement of when a followed deployment is over and why."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.controller.operator import deploy_follow
from edgeplane.controller.operator.deploy_watch import DeploymentWatch, Outcome
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.messages import (
    Accepted,
    Cancelled,
    Check,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Preflight,
    RolledBack,
    Running,
    StepFinished,
    Stopped,
    Succeeded,
)
from edgeplane.shared.rpc import (
    DeploymentInfo,
    DeploymentShow,
    DeployRequest,
    LoggedEvent,
    Reply,
    Request,
)
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import ModelNeed, Requires, Step, Workflow
from tests.support.procs import Proc
from tests.support.responder import ok, responder
from tests.support.system import CliResult, System, open_system

PY = sys.executable


# --- the judgement (pure) -------------------------------------------------------------------
def info(*, dry_run: bool = False, state: str = "sent", reason: str = "") -> DeploymentInfo:
    return DeploymentInfo(
        id="d-1",
        env="edge-a",
        workflow="w",
        version="1",
        state=state,  # type: ignore[arg-type]
        reason=reason,
        created=1.0,
        updated=1.0,
        dry_run=dry_run,
    )


def ending(
    events: Sequence[Event],
    *,
    dry_run: bool = False,
    service: bool = False,
    requires: Requires | None = None,
) -> Outcome | None:
    watch = DeploymentWatch(info(dry_run=dry_run), service=service, requires=requires)
    outcome = None
    for event in events:
        if watch.belongs(event) and outcome is None:
            outcome = watch.take(event)
    return outcome


CHECKS = [
    Check(kind="model", name="detector", ok=True, detail="2.2.0 satisfies >=2"),
    Check(kind="secret", name="TOKEN", ok=False, detail="not in the secrets file"),
    Check(kind="bucket", name="out", ok=False, detail="/x does not exist"),
]
mine: dict[str, Any] = {"env": "edge-a", "dep": "d-1"}


def test_a_job_ends_with_succeeded_and_a_service_with_running() -> None:
    started = [Accepted(seq=1, workflow="w", version="1", **mine)]
    assert ending([*started, Succeeded(seq=2, **mine)]) == Outcome("succeeded", True)
    assert ending([*started, Running(seq=2, **mine)], service=True) == Outcome("running", True)
    assert ending(started) is None


def test_events_of_other_deployments_and_environments_are_not_taken() -> None:
    other_dep = Succeeded(seq=1, env="edge-a", dep="d-2")
    other_env = Succeeded(seq=1, env="edge-b", dep="d-1")
    assert ending([other_dep, other_env]) is None


def test_a_failed_preflight_names_every_failed_check() -> None:
    preflight = Preflight(seq=2, ok=False, checks=CHECKS, **mine)
    assert ending([preflight]) == Outcome(
        "rejected",
        False,
        "preflight failed: secret TOKEN: not in the secrets file; bucket out: /x does not exist",
    )
    dry = ending([Preflight(seq=2, ok=False, checks=CHECKS, dry_run=True, **mine)], dry_run=True)
    assert dry is not None
    assert (dry.state, dry.ok) == ("checked", False)
    assert "secret TOKEN" in dry.reason
    passed = Preflight(seq=2, ok=True, checks=CHECKS[:1], dry_run=True, **mine)
    assert ending([passed], dry_run=True) == Outcome("checked", True)


def test_a_preflight_that_leaves_out_a_requirement_fails_whatever_comes_after() -> None:
    needs = Requires(models=[ModelNeed("detector")], secrets=["TOKEN", "OTHER"])
    impersonated: list[Event] = [
        Accepted(seq=1, workflow="w", version="1", **mine),
        Preflight(seq=2, ok=True, checks=[], **mine),  # "preflight passed: nothing required"
        Succeeded(seq=3, **mine),
    ]
    assert ending(impersonated, requires=needs) == Outcome(
        "failed", False, "preflight did not check: model detector, secret TOKEN, secret OTHER"
    )
    partial = Preflight(seq=2, ok=True, checks=CHECKS[:2], dry_run=True, **mine)
    assert ending([partial], dry_run=True, requires=needs) == Outcome(
        "checked", False, "preflight did not check: secret OTHER"
    )


def test_a_failed_step_is_named_with_the_last_line_of_its_stderr() -> None:
    finished = StepFinished(
        seq=3,
        step="upload",
        index=1,
        exit_code=3,
        duration=0.2,
        ok=False,
        stderr="trying\nconnection refused\n",
        **mine,
    )
    failed = Failed(seq=4, reason="exited with code 3", step="upload", **mine)
    assert ending([finished, failed]) == Outcome(
        "failed", False, "step upload: exited with code 3; stderr: connection refused"
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            CommandRejected(seq=1, reason="bad workflow", **mine),
            Outcome("rejected", False, "bad workflow"),
        ),
        (
            Expired(seq=1, src="controller", reason="not online within 2 s", **mine),
            Outcome("expired", False, "not online within 2 s"),
        ),
        (
            RolledBack(seq=1, restored="d-0", version="1.3", reason="did not start", **mine),
            Outcome("rolled-back", False, "did not start; restored d-0 (1.3)"),
        ),
        (Running(seq=1, **mine), Outcome("running", False, "a job ran on")),
        (
            Cancelled(
                seq=1, cmd="c-9", reason="cancelled during step 'x'", env="edge-a", dep="d-1"
            ),
            Outcome("cancelled", False, "cancelled during step 'x'"),
        ),
    ],
)
def test_every_other_end_is_a_failure_with_its_cause(event: Event, expected: Outcome) -> None:
    assert ending([event]) == expected


def test_a_failed_replacement_ends_when_the_old_deployment_is_restored_or_not() -> None:
    replaced = Stopped(seq=3, env="edge-a", dep="d-0", reason="replaced by d-1")
    failed = Failed(seq=4, reason="failed to start: step 'serve' exited 3", step="serve", **mine)
    rolled = RolledBack(seq=5, restored="d-0", version="1.3", reason="failed to start", **mine)
    watch = DeploymentWatch(info(), service=True)
    assert [watch.belongs(replaced), watch.take(replaced)] == [True, None]
    assert watch.take(failed) is None  # not over: the agent restores d-0 next
    assert watch.take(rolled) == Outcome(
        "rolled-back", False, "failed to start: step 'serve' exited 3; restored d-0 (1.3)"
    )
    gone = Failed(seq=6, env="edge-a", dep="d-0", reason="not restored: gone")
    assert ending([replaced, failed, gone], service=True) == Outcome(
        "failed",
        False,
        "failed to start: step 'serve' exited 3; d-0 not restored either: not restored: gone",
    )
    other = Stopped(seq=3, env="edge-a", dep="d-7", reason="replaced by d-9")
    assert not DeploymentWatch(info(), service=True).belongs(other)
    assert ending([failed], service=True) == Outcome("failed", False, failed.reason)


def test_the_controllers_record_decides_when_the_stream_ended_early() -> None:
    watch = DeploymentWatch(info(), service=False)
    logged = LoggedEvent(id=7, at=1.0, event=Succeeded(seq=9, **mine))
    assert watch.from_info(info(state="succeeded")) == Outcome("succeeded", True)
    record = DeploymentInfo(**{**_fields(info(state="running")), "events": [logged]})
    assert watch.from_info(record) == Outcome("succeeded", True)
    assert watch.from_info(info(state="failed", reason="boom")) == Outcome("failed", False, "boom")
    assert watch.from_info(info(state="running")) is None
    service = DeploymentWatch(info(), service=True)
    assert service.from_info(info(state="running")) == Outcome("running", True)


def _fields(record: DeploymentInfo) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__struct_fields__}


# --- the shell against a stand-in controller --------------------------------------------------
async def test_an_event_missed_live_is_found_in_the_controllers_record(
    broker: MosquittoProcess,
    root: TopicRoot,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No event ever arrives on the topic; after RECHECK quiet seconds the record says
    how it went, and its events are printed as progress."""
    monkeypatch.setattr(deploy_follow, "RECHECK", 0.3)
    sent = info()
    done = msgspec.structs.replace(
        sent,
        state="succeeded",
        events=[
            LoggedEvent(id=1, at=1.0, event=Accepted(seq=1, workflow="w", version="1", **mine)),
            LoggedEvent(id=2, at=2.0, event=Succeeded(seq=2, duration=0.5, **mine)),
        ],
    )
    asked: list[Request] = []

    def answer(request: Request) -> Reply:
        asked.append(request)
        return ok(sent if isinstance(request, DeployRequest) else done)

    workflow = Workflow(name="w", version="1", steps=[Step(name="a", run=["x"])])
    async with responder(broker.url, root, answer):
        follower = deploy_follow.DeployFollower(
            BrokerUrl.parse(broker.url), root, 5.0, as_json=False
        )
        request = DeployRequest(env="edge-a", workflow=workflow)
        code = await follower.run(request, follow=True, wait_for=60)
    assert code == 0
    assert [type(r) for r in asked] == [DeployRequest, DeploymentShow]
    assert capsys.readouterr().out.splitlines() == [
        "deployment d-1 sent to edge-a",
        "edge-a: accepted w 1",
        "edge-a: succeeded in 0.5 s",
        "deployment d-1 to edge-a succeeded",
    ]


# --- through real processes ------------------------------------------------------------------
TOUCH = "import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('ran')\n"
FAIL = """\
import sys
print("fetching", file=sys.stderr)
print("disk full", file=sys.stderr)
sys.exit(4)
"""
SLOW = "import time\ntime.sleep(4)\n"
WAIT_FOR_FILE = """\
import pathlib, sys, time
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.05)
"""


def job(system: System, name: str, *steps: tuple[str, str, list[str]], **extra: Any) -> Path:
    """A workflow whose steps each run one script: (step name, script code, arguments)."""
    data = {
        "name": name,
        "version": "1.0.0",
        "steps": [
            {
                "name": step,
                "run": [PY, str(system.script(f"{name}-{step}", code)), *args],
                "timeout": 30,
            }
            for step, code, args in steps
        ],
        **extra,
    }
    return system.workflow(name, data)


def one_error_line(result: CliResult) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, str(result)
    return lines[0]


@pytest.mark.slow
async def test_wait_prints_progress_as_it_happens_and_exits_0_when_it_succeeded(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        marker = tmp_path / "ran"
        workflow = job(system, "touch", ("first", TOUCH, [str(marker)]), ("second", "", []))
        result = await system.deploy(workflow, "edge-a", "--wait")
        assert result.code == 0, str(result)
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        dep = lines[0].split()[1]
        assert lines[0] == f"deployment {dep} sent to edge-a"
        assert [line.split(":")[1].split()[0] for line in lines[1:-1]] == [
            "accepted",
            "preflight",
            "started",
            "step",
            "step",
            "step",
            "step",
            "succeeded",
        ]
        assert "edge-a: step 1 first finished: exit 0 after" in result.stdout
        assert lines[-1] == f"deployment {dep} to edge-a succeeded"
        assert marker.read_text() == "ran"


@pytest.mark.slow
async def test_wait_shows_each_step_while_it_runs(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        gate = tmp_path / "go"
        workflow = job(system, "gated", ("wait", WAIT_FOR_FILE, [str(gate)]))
        argv = [
            PY,
            "-m",
            "edgeplane.controller",
            "deploy",
            str(workflow),
            "--env",
            "edge-a",
            "--wait",
        ]
        argv += ["--broker", broker.url, "--topic-root", str(root)]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=DEVNULL,
            stdout=PIPE,
            stderr=PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(30):
                while b"step 1 wait started" not in await process.stdout.readline():
                    pass
            following = process.returncode is None  # the step is still running
            gate.write_text("go")
            rest, _ = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert following
        assert (process.returncode, b"edge-a: step 1 wait finished: exit 0" in rest) == (0, True)


@pytest.mark.slow
async def test_a_failing_step_exits_1_naming_the_step_and_its_stderr(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        workflow = job(system, "failing", ("ok", "", []), ("upload", FAIL, []))
        result = await system.deploy(workflow, "edge-a", "--wait")
        assert result.code == 1, str(result)
        assert "edge-a: step 2 upload FAILED: exit 4 after" in result.stdout
        assert "    stderr | fetching\n    stderr | disk full\n" in result.stdout
        line = one_error_line(result)
        assert line.startswith("edgeplane: deployment d-"), line
        assert "to edge-a failed:" in line
        assert "upload" in line
        assert line.endswith("stderr: disk full")


@pytest.mark.slow
async def test_dry_run_prints_each_check_and_exits_by_the_verdict(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a", models={"detector": ["2.2.0"]}, secrets={"TOKEN": "x"})
        marker = tmp_path / "ran"
        requires = {"models": [{"name": "detector", "version": ">=2.1,<3"}], "secrets": ["TOKEN"]}
        good = job(system, "good", ("touch", TOUCH, [str(marker)]), requires=requires)
        passed = await system.deploy(good, "edge-a", "--dry-run")
        assert passed.code == 0, str(passed)
        assert "edge-a: preflight passed: 2 checks ok" in passed.stdout
        assert "  ok      model detector" in passed.stdout
        assert "  ok      secret TOKEN" in passed.stdout
        assert passed.stdout.splitlines()[-1].endswith(
            "on edge-a: every check passed, nothing was run"
        )

        missing = {**requires, "secrets": ["TOKEN", "OTHER_TOKEN"]}
        bad = job(system, "bad", ("touch", TOUCH, [str(marker)]), requires=missing)
        failed = await system.deploy(bad, "edge-a", "--dry-run")
        assert failed.code == 1, str(failed)
        assert "  FAILED  secret OTHER_TOKEN" in failed.stdout
        line = one_error_line(failed)
        assert line.startswith("edgeplane: dry run d-"), line
        assert "preflight failed: secret OTHER_TOKEN" in line
        assert "TOKEN: " not in line.replace("OTHER_TOKEN", "")  # only the failed check
        assert not marker.exists()


@pytest.mark.slow
async def test_json_wait_prints_one_document_with_the_outcome_and_its_events(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        workflow = job(system, "quiet", ("only", "", []))
        result = await system.deploy(workflow, "edge-a", "--wait", "--json")
        assert result.code == 0, str(result)
        report = result.json()
        assert (report["env"], report["workflow"], report["state"], report["ok"]) == (
            "edge-a",
            "quiet",
            "succeeded",
            True,
        )
        assert [e["type"] for e in report["events"]][-1] == "succeeded"
        assert {e["dep"] for e in report["events"]} == {report["id"]}
        sent = await system.deploy(workflow, "edge-a", "--json")
        assert sent.code == 0, str(sent)
        assert sent.json()["state"] == "sent"


@pytest.mark.slow
async def test_when_online_queues_and_wait_reports_the_expiry(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.start_controller()
        await system.create_env("edge-later")
        workflow = job(system, "later", ("only", "", []))
        refused = await system.deploy(workflow, "edge-later")
        assert refused.code == 1, str(refused)
        line = one_error_line(refused)
        assert "edge-later" in line
        assert "--when-online" in line

        queued = await system.deploy(workflow, "edge-later", "--when-online", "--ttl", "600")
        assert queued.code == 0, str(queued)
        assert " queued until edge-later comes online (expires " in queued.stdout
        assert "(in 1" in queued.stdout  # about ten minutes from now

        expired = await system.deploy(
            workflow, "edge-later", "--when-online", "--ttl", "1", "--wait", timeout=40
        )
        assert expired.code == 1, str(expired)
        assert "edge-later: expired" in expired.stdout
        assert " expired: " in one_error_line(expired)


@pytest.mark.slow
async def test_when_the_wait_runs_out_the_controller_is_asked_for_the_state(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        workflow = job(system, "slow", ("sleep", SLOW, []))
        result = await system.deploy(workflow, "edge-a", "--wait", "--wait-timeout", "1.5")
        assert result.code == 1, str(result)
        line = one_error_line(result)
        assert "still in progress after 1.5 s (running)" in line, line
        assert "edgeplane deployments show d-" in line


@pytest.mark.slow
async def test_wait_follows_a_deployment_across_a_broker_restart(
    private_broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(private_broker, root, tmp_path, procs) as system:
        await system.online("edge-a")
        gate = tmp_path / "go"
        workflow = job(system, "gated", ("wait", WAIT_FOR_FILE, [str(gate)]), ("then", "", []))
        deploying = asyncio.create_task(system.deploy(workflow, "edge-a", "--wait", timeout=90))
        await system.wait_event("edge-a", "step-started", step="wait")
        await system.stop_broker()
        gate.write_text("go")  # the rest runs while the broker is away
        await system.start_broker()
        result = await deploying
        assert result.code == 0, str(result)
        assert "(connected again)" in result.stdout, str(result)
        for line in ("step 1 wait finished", "step 2 then started", "succeeded in "):
            assert result.stdout.count(line) == 1, str(result)
        assert result.stdout.splitlines()[-1].endswith("to edge-a succeeded")


@pytest.mark.slow
async def test_a_service_that_fails_to_replace_a_running_one_reports_the_rollback(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        await system.online("edge-svc")
        serve = {"name": "serve", "run": [PY, "-c", "import time; time.sleep(600)"]}
        v1 = system.workflow(
            "v1", {"name": "svc", "version": "1.0.0", "kind": "service", "steps": [serve]}
        )
        first = await system.deploy(v1, "edge-svc", "--wait")
        assert first.code == 0, str(first)
        assert first.stdout.splitlines()[-1].endswith("to edge-svc running"), str(first)
        dep1 = first.stdout.split()[1]

        dies = {"name": "serve", "run": [PY, "-c", "import sys; sys.exit(3)"]}
        v2 = system.workflow(
            "v2", {"name": "svc", "version": "2.0.0", "kind": "service", "steps": [dies]}
        )
        second = await system.deploy(v2, "edge-svc", "--wait")
        assert second.code == 1, str(second)
        assert f"edge-svc: stopped: replaced by {second.stdout.split()[1]}" in second.stdout
        line = one_error_line(second)
        assert " to edge-svc rolled-back: " in line, line
        assert line.endswith(f"restored {dep1} (1.0.0)"), line


BAD_FILES = [
    (
        "typo.yaml",
        "name: w\nversion: '1'\nsteps:\n  - {name: a, run: [x], tiemout: 5}\n",
        'typo.yaml: steps[0].tiemout: unknown field (did you mean "timeout"?)',
    ),
    (
        "soon.yaml",
        "name: w\nversion: '1'\nsteps:\n  - {name: a, run: [x]}\n"
        "  - {name: b, run: [x], timeout: soon}\n",
        'soon.yaml: steps[1].timeout: expected a number, got "soon"',
    ),
    (
        "spec.json",
        json.dumps(
            {
                "name": "w",
                "version": "1",
                "steps": [{"name": "a", "run": ["x"]}],
                "requires": {"models": [{"name": "m", "version": "=>2"}]},
            }
        ),
        'spec.json: requires.models[0].version: "=>2" is not a PEP 440 version specifier',
    ),
    ("broken.yaml", "name: [w\n", "broken.yaml: line 2, column 1: "),
    ("absent.yaml", None, "absent.yaml: no such file"),
]


async def test_a_bad_workflow_file_is_exit_2_one_line_and_nothing_is_sent(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        mark = system.probe.mark()
        for name, content, expected in BAD_FILES:
            path = tmp_path / name
            if content is not None:
                path.write_text(content)
            result = await system.deploy(path, "edge-a", "--wait")
            assert result.code == 2, str(result)
            assert result.stdout == ""
            line = one_error_line(result)
            assert line.startswith(f"edgeplane: {tmp_path / expected}"), line
        await system.barrier()
        sent = [m.topic for m in system.probe.messages[mark:]]
        assert root.requests() not in sent
        assert root.cmd("edge-a") not in sent


async def test_ttl_without_when_online_is_a_usage_error(
    broker: MosquittoProcess, root: TopicRoot, tmp_path: Path, procs: list[Proc]
) -> None:
    async with open_system(broker, root, tmp_path, procs) as system:
        workflow = system.workflow(
            "w", {"name": "w", "version": "1", "steps": [{"name": "a", "run": ["x"]}]}
        )
        result = await system.deploy(workflow, "edge-a", "--ttl", "5")
        assert result.code == 2, str(result)
        assert "--ttl: only with --when-online" in one_error_line(result)
