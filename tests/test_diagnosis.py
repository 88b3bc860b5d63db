"""env diagnose's decisions (controller.core.diagnosis): pure, over given facts and time."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from edgeplane.controller.core.diagnosis import (
    THRESHOLDS,
    DeployedWorkflow,
    DiagnosisFacts,
    Metrics,
    PingOutcome,
    Thresholds,
    diagnose,
)
from edgeplane.shared.checkup import ORDER, CheckResult, Report, exit_status, render_text
from edgeplane.shared.codec import EVENT
from edgeplane.shared.messages import Platform, Pong, WorkflowProcess
from edgeplane.shared.rpc import EnvInfo, IncidentSummary
from edgeplane.shared.workflow import ModelNeed, Requires, Step, Workflow

NOW = 1_800_000_000.0
ENV = "dev-lab-diag"


def info(**changes: Any) -> EnvInfo:
    base = EnvInfo(
        id=ENV,
        project="default",
        stage="dev",
        location="lab",
        purpose="diag",
        created=NOW - 86_400,
        status="online",
        since=NOW - 600,
        last_seen=NOW - 2,
        interval=10.0,
        models={"detector": ["2.1.0"]},
        platform=Platform(os="linux", arch="x86_64", py="3.11.7", agent="0.1.0"),
        missed_heartbeats=0,
    )
    return msgspec.structs.replace(base, **changes)


def facts(**changes: Any) -> DiagnosisFacts:
    base = DiagnosisFacts(
        info=info(),
        ping=PingOutcome("pong", round_trip=0.012, executor=False),
        now=NOW,
        limit=5.0,
        metrics=Metrics(cpu=10.0, mem=20.0, disk=30.0),
        link_missed=0,
        link_window=50.0,
    )
    return dataclasses.replace(base, **changes)


def check(report: Report, area: str, name: str) -> CheckResult:
    return next(c for c in report.checks if (c.area, c.name) == (area, name))


def workflow(*models: ModelNeed) -> Workflow:
    return Workflow(
        name="vision",
        version="1.0.0",
        requires=Requires(models=list(models)),
        steps=[Step(name="run", run=["true"])],
    )


def test_a_healthy_environment_passes_every_check_in_the_documented_order() -> None:
    report = diagnose(facts())
    assert [c.state for c in report.checks] == ["pass"] * len(report.checks)
    areas = [c.area for c in report.checks]
    assert areas == sorted(areas, key=ORDER.index)
    assert set(areas) == set(ORDER)
    assert report.cause == ""
    assert exit_status(report) == 0
    assert check(report, "network", "round-trip").ms == pytest.approx(12)
    assert "every check passed" in render_text(report)


def test_an_offline_agent_fails_the_process_and_skips_what_depends_on_it() -> None:
    offline = info(status="offline", since=NOW - 60, last_seen=NOW - 61)
    report = diagnose(facts(info=offline, reason="connection-lost", ping=PingOutcome("not-sent")))
    heartbeat = check(report, "process", "heartbeat")
    assert heartbeat.state == "fail"
    assert "offline (connection-lost)" in heartbeat.reason
    for area, name in [("network", "round-trip"), ("credentials", "command-key"),
                       ("resources", "disk"), ("process", "workflows")]:  # fmt: skip
        skipped = check(report, area, name)
        assert skipped.state == "skip"
        assert "process/heartbeat failed" in skipped.reason
    assert check(report, "credentials", "broker").state == "pass"  # needs no agent
    assert report.cause == "process/heartbeat"
    assert "agent running" in report.hint
    assert exit_status(report) == 1
    text = render_text(report)
    assert "likely cause: process/heartbeat: offline (connection-lost)" in text
    assert "hint: is the agent running?" in text


def test_never_seen_names_the_agent_to_start() -> None:
    report = diagnose(facts(info=info(status="unknown", last_seen=None), ping=PingOutcome(
        "not-sent")))  # fmt: skip
    assert check(report, "process", "heartbeat").reason == f"{ENV} has never been online"
    assert f"edge-agent run --env-id {ENV}" in report.hint


def test_a_late_heartbeat_warns() -> None:
    report = diagnose(facts(info=info(last_seen=NOW - 16)))
    assert check(report, "process", "heartbeat").state == "warn"
    assert diagnose(facts(info=info(last_seen=NOW - 14))).checks[0].state == "pass"


def test_no_answer_to_the_ping_fails_the_network_and_skips_the_command_key() -> None:
    report = diagnose(facts(ping=PingOutcome("none", round_trip=5.0)))
    trip = check(report, "network", "round-trip")
    assert trip.state == "fail"
    assert "no answer to the ping within 5 s" in trip.reason
    assert check(report, "credentials", "command-key").state == "skip"
    assert check(report, "process", "workflows").state == "skip"
    assert report.cause == "network/round-trip"


@pytest.mark.parametrize(("seconds", "state"), [(0.999, "pass"), (1.5, "warn")])
def test_a_slow_round_trip_warns(seconds: float, state: str) -> None:
    trip = check(diagnose(facts(ping=PingOutcome("pong", round_trip=seconds))), "network",
                 "round-trip")  # fmt: skip
    assert trip.state == state
    assert trip.facts["round_trip_ms"] == f"{seconds * 1000:.0f}"


@pytest.mark.parametrize(("missed", "state"), [(0, "pass"), (1, "warn"), (3, "fail")])
def test_link_quality_by_the_heartbeats_missed(missed: int, state: str) -> None:
    link = check(diagnose(facts(link_missed=missed)), "network", "link")
    assert link.state == state
    assert f"{missed} heartbeats missed in the last 50 s" == link.reason


def test_the_link_check_shows_the_hour_as_status_does() -> None:
    link = check(diagnose(facts(link_missed=0, link_hour=(2.5, 3))), "network", "link")
    assert link.state == "pass"
    assert link.reason == (
        "0 heartbeats missed in the last 50 s; last hour: 2.5 % missed, 3 reconnect(s)"
    )
    assert link.facts["reconnects_1h"] == "3"


def test_resource_thresholds_are_the_controllers_settings() -> None:
    lenient = Thresholds(disk=99.0)
    assert check(diagnose(facts(metrics=Metrics(disk=97.0))), "resources", "disk").state == "fail"
    report = diagnose(facts(metrics=Metrics(disk=97.0), thresholds=lenient))
    assert check(report, "resources", "disk").state == "warn"


def test_a_ping_refused_as_unauthenticated_fails_the_command_key() -> None:
    refused = PingOutcome("rejected", 0.01, detail="bad-signature: no trusted key signed it")
    report = diagnose(facts(ping=refused))
    assert check(report, "network", "round-trip").state == "pass"
    key = check(report, "credentials", "command-key")
    assert key.state == "fail"
    assert "bad-signature" in key.reason
    assert report.cause == "credentials/command-key"
    assert "command_key" in report.hint


@pytest.mark.parametrize(
    ("disk", "state"),
    [(84.9, "pass"), (85.0, "warn"), (89.9, "warn"), (90.0, "fail"), (97, "fail")],
)
def test_resources_against_the_thresholds(disk: float, state: str) -> None:
    report = diagnose(facts(metrics=Metrics(cpu=1, mem=1, disk=disk)))
    assert check(report, "resources", "disk").state == state
    assert THRESHOLDS.disk == 90.0


def test_disk_full_is_the_likely_cause_with_its_hint() -> None:
    report = diagnose(facts(metrics=Metrics(cpu=1, mem=1, disk=97)))
    assert report.cause == "resources/disk"
    assert "97.0 % (threshold 90 %)" in render_text(report)
    assert "free disk space" in report.hint


def test_thresholds_come_from_the_facts() -> None:
    strict = dataclasses.replace(THRESHOLDS, cpu=50.0)
    report = diagnose(facts(metrics=Metrics(cpu=60, mem=1, disk=1), thresholds=strict))
    assert check(report, "resources", "cpu").state == "fail"


def test_a_metric_not_reported_is_skipped() -> None:
    report = diagnose(facts(metrics=Metrics(cpu=None, mem=1, disk=1)))
    assert check(report, "resources", "cpu").state == "skip"
    assert exit_status(report) == 0


def test_a_deployed_workflow_needing_a_missing_model_fails_compatibility() -> None:
    deployed = DeployedWorkflow("d-1", "running", workflow(ModelNeed("detector", ">=3")))
    report = diagnose(facts(deployed=(deployed,)))
    models = check(report, "compatibility", "models")
    assert models.state == "fail"
    assert "model detector >=3 is not on dev-lab-diag (has: detector 2.1.0)" in models.reason
    assert report.cause == "compatibility/models"


def test_a_deployed_workflow_whose_models_are_there_passes() -> None:
    deployed = DeployedWorkflow("d-1", "running", workflow(ModelNeed("detector", ">=2,<3")))
    models = check(diagnose(facts(deployed=(deployed,))), "compatibility", "models")
    assert models.state == "pass"
    assert "vision 1.0.0" in models.reason


def test_the_agents_workflow_processes_are_shown() -> None:
    processes = (WorkflowProcess(workflow="vision", dep="d-1", kind="service", restarts=2),)
    report = diagnose(facts(ping=PingOutcome("pong", 0.01, processes=processes, executor=True)))
    workflows = check(report, "process", "workflows")
    assert workflows.state == "pass"
    assert workflows.reason == "reported: vision service running, 2 restarts"


def test_a_deployment_the_agent_does_not_run_warns() -> None:
    deployed = DeployedWorkflow("d-1", "running", workflow())
    report = diagnose(facts(deployed=(deployed,)))
    workflows = check(report, "process", "workflows")
    assert workflows.state == "warn"
    assert "vision (d-1) is not running there" in workflows.reason
    assert "executor was never loaded" in workflows.reason


def test_a_credential_with_a_foreign_box_key_fails() -> None:
    report = diagnose(facts(info=info(credential_generation=2, credential_since=NOW - 86_400,
                                      box_key_mismatch=True)))  # fmt: skip
    broker = check(report, "credentials", "broker")
    assert broker.state == "fail"
    assert "generation 2, 1.0 days old" in broker.reason
    assert "--repin" in report.hint


def test_a_rotation_under_way_warns_and_refusals_are_said_unknown() -> None:
    report = diagnose(facts(info=info(credential_generation=1, credential_since=NOW - 10,
                                      rotation_state="sent", rotation_target=2)))  # fmt: skip
    broker = check(report, "credentials", "broker")
    assert broker.state == "warn"
    assert "rotation to generation 2 sent" in broker.reason
    assert "refused logins: none reported since the controller started" in broker.reason


def test_logins_refused_before_the_latest_connection_warn_and_are_named() -> None:
    broker = check(diagnose(facts(refused=3, refused_reason="not authorised")), "credentials",
                   "broker")  # fmt: skip
    assert broker.state == "warn"
    assert "3 login(s) refused before its latest connection (not authorised)" in broker.reason
    clean = check(diagnose(facts(refused=0)), "credentials", "broker")
    assert clean.state == "pass"


def test_no_identities_is_said() -> None:
    broker = check(diagnose(facts()), "credentials", "broker")
    assert broker.state == "pass"
    assert "no identities" in broker.reason


def test_an_old_reader_decodes_a_new_pong_and_a_new_reader_an_old_one() -> None:
    class OldPong(msgspec.Struct, tag="pong", tag_field="type"):
        env: str
        seq: int
        cmd: str = ""

    process = WorkflowProcess(workflow="vision", dep="d-1", kind="service", restarts=1)
    new = msgspec.json.encode(Pong(env=ENV, seq=1, cmd="c-1", processes=[process], executor=True))
    old = msgspec.json.decode(new, type=OldPong)
    assert (old.env, old.cmd) == (ENV, "c-1")
    from_old_agent = EVENT.decode(b'{"type":"pong","env":"dev-lab-diag","seq":2,"cmd":"c-2"}')
    assert isinstance(from_old_agent, Pong)
    assert from_old_agent.processes == []
    assert from_old_agent.executor is False


def test_an_agent_without_a_record_is_not_pinged_and_the_record_is_the_hint() -> None:
    why = "the environment has no record: the controller sends it no commands"
    report = diagnose(facts(info=info(registered=False), ping=PingOutcome("not-sent", detail=why)))
    trip = check(report, "network", "round-trip")
    assert trip.state == "fail"
    assert trip.reason == f"no ping sent: {why}"
    assert report.cause == "network/round-trip"
    assert report.hint.startswith(f"create its record: edgeplane env create {ENV}")


def test_a_flapping_environment_warns_and_its_open_incidents_are_named() -> None:
    opened = [
        IncidentSummary(id="i-1", kind="flapping", severity="warning", state="open", opened=1.0),
        IncidentSummary(id="i-2", kind="offline", severity="critical", state="open", opened=2.0),
    ]
    report = diagnose(facts(info=info(flapping=True, open_incidents=opened)))
    beat = check(report, "process", "heartbeat")
    assert beat.state == "warn"
    assert "flapping: it goes offline and online again and again" in beat.reason
    assert beat.reason.endswith("; 2 open incident(s): flapping, offline")
