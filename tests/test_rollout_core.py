"""The rollout's pure core: selectors, waves, thresholds, and the state machine over
deployments and a fake clock."""

from __future__ import annotations

import dataclasses
import functools
import operator

import pytest

from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.core.rollout import RolloutRun, RolloutSettings, new_run
from edgeplane.controller.core.rollout_plan import (
    matches,
    parse_selector,
    parse_threshold,
    parse_waves,
    plan_waves,
)
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.workflow import Step, Workflow

WORKFLOW = Workflow(name="app", version="2.0.0", steps=[Step(name="s", run=["true"])])
OLD = Workflow(name="app", version="1.0.0", steps=[Step(name="s", run=["true"])])


def record(env: str, **labels: str) -> Environment:
    return Environment(env, "default", "prod", "plant", "vision", labels=labels)


# --- plan ---------------------------------------------------------------------------------
def test_selector_matches_record_fields_and_labels() -> None:
    selector = parse_selector("stage=prod, ring=canary")
    assert selector == {"stage": "prod", "ring": "canary"}
    assert matches(selector, record("a", ring="canary"))
    assert not matches(selector, record("b", ring="main"))
    assert not matches(selector, dataclasses.replace(record("c", ring="canary"), retired=1.0))
    assert matches({"project": "default", "location": "plant"}, record("d"))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "--selector: expected K=V"),
        ("stage", "--selector: expected K=V, got 'stage'"),
        ("stage=prod,stage=dev", "--selector: stage given twice"),
        ("bad key=x", "--selector: bad key"),
    ],
)
def test_bad_selectors_name_the_flag(text: str, error: str) -> None:
    with pytest.raises(RequestRefused, match=error):
        parse_selector(text)


def test_waves_are_cumulative_shares_in_id_order() -> None:
    envs = [f"e{i:02d}" for i in range(20)]
    waves = plan_waves(list(reversed(envs)), parse_waves(["1", "10%", "50%", "100%"]))
    assert [len(w) for w in waves] == [1, 1, 8, 10]
    assert waves[0] == ["e00"]
    assert functools.reduce(operator.iadd, waves, []) == envs


def test_waves_drop_empty_ones_and_the_last_takes_the_rest() -> None:
    assert plan_waves(["a", "b", "c"], ["1", "10%", "50%"]) == [["a"], ["b", "c"]]
    assert plan_waves(["a"], ["1", "10%", "100%"]) == [["a"]]
    assert plan_waves(["a", "b", "c"], ["5"]) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("0", "--waves: a wave holds at least 1"),
        ("50%,10%", "--waves: 10% is below 50%"),
        ("120%", r"--waves: a share is within"),
        ("ten", "--waves: expected a count"),
        ("1,,2", "--waves: expected a list"),
    ],
)
def test_bad_waves_name_the_flag(spec: str, error: str) -> None:
    with pytest.raises(RequestRefused, match=error):
        parse_waves(spec.split(","))


def test_thresholds() -> None:
    share = parse_threshold("10%")
    assert not share.exceeded(1, 10)
    assert share.exceeded(2, 10)
    assert share.exceeded(1, 1)
    count = parse_threshold("2")
    assert not count.exceeded(2, 3)
    assert count.exceeded(3, 100)
    with pytest.raises(RequestRefused, match="--max-failures"):
        parse_threshold("lots")


# --- the state machine --------------------------------------------------------------------
def deployment(
    dep: str, env: str, state: str, *, cmd: str = "c-1", version: str = "2.0.0"
) -> Deployment:
    workflow = WORKFLOW if version == "2.0.0" else OLD
    return Deployment(dep, env, workflow, state, 0.0, 0.0, cmd)  # type: ignore[arg-type]


class Harness:
    """A run whose sends become deployments ``d-{env}`` (``r-{env}`` for rollbacks)."""

    def __init__(self, envs: list[str], previous: dict[str, str] | None = None, **kw: object):
        self.clock = ManualClock()
        settings = RolloutSettings(**{"waves": ("1", "50%", "100%"), "bake": 10.0, **kw})  # type: ignore[arg-type]
        waves = plan_waves(envs, settings.waves)
        self.run: RolloutRun = new_run("r-1", WORKFLOW, {"stage": "prod"}, settings, waves, 0.0)
        self.previous = previous or {}
        self.sent: list[str] = []
        self.alerts: list[tuple[str, str]] = []
        self.rollbacks: list[str] = []

    def step(self) -> None:
        now = self.clock.time()
        step = self.run.step(now)
        for env in step.send:
            assert env not in self.sent, f"{env} sent twice"
            self.sent.append(env)
            self.run.sent(env, f"d-{env}", self.previous.get(env, ""), now)
            self.run.observe(deployment(f"d-{env}", env, "sent"), now)
        for env in step.rollback:
            self.rollbacks.append(env)
            self.run.rollback_sent(env, f"r-{env}", now)
        self.alerts.extend((alert.env, alert.state) for alert in step.alerts)

    def finish(self, env: str, state: str, **kw: str) -> None:
        self.run.observe(deployment(f"d-{env}", env, state, **kw), self.clock.time())
        self.step()

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.step()

    @property
    def state(self) -> str:
        return self.run.record.state

    def target(self, env: str) -> str:
        return self.run.targets[env].state


def test_waves_run_one_after_the_other_with_the_bake_between() -> None:
    h = Harness(["a", "b", "c", "d"])
    h.step()
    assert h.sent == ["a"]
    h.finish("a", "succeeded")
    assert h.run.record.waves[0].state == "baking"
    assert h.sent == ["a"]
    h.later(9.9)
    assert h.sent == ["a"]
    h.later(0.1)
    assert h.sent == ["a", "b"]
    h.finish("b", "running")  # a job under way: not done yet
    assert h.target("b") == "sent"
    h.finish("b", "succeeded")
    h.later(10)
    assert h.sent == ["a", "b", "c", "d"]
    h.finish("c", "succeeded")
    h.finish("d", "succeeded")
    h.later(10)
    assert h.state == "succeeded"
    assert h.run.info().counts == {"succeeded": 4}


def test_concurrency_caps_what_is_in_flight() -> None:
    h = Harness([f"e{i}" for i in range(6)], waves=("100%",), concurrency=2)
    h.step()
    assert h.sent == ["e0", "e1"]
    h.finish("e0", "succeeded")
    assert h.sent == ["e0", "e1", "e2"]


def test_the_threshold_aborts_at_once_and_sends_nothing_more() -> None:
    h = Harness(["a", "b", "c", "d"], waves=("2", "100%"), max_failures="1")
    h.step()
    h.finish("a", "rejected")
    assert h.state == "running"
    h.finish("b", "failed")
    assert h.state == "aborted"
    assert "2 of 2 finished targets failed" in h.run.record.reason
    assert h.alerts == [("b", "raised")]
    h.later(100)
    assert h.sent == ["a", "b"]
    assert h.target("c") == "pending"


def test_targets_in_flight_at_the_abort_still_end() -> None:
    h = Harness(["a", "b", "c"], waves=("100%",), max_failures="0", target_timeout=5.0)
    h.step()
    h.finish("a", "rejected")
    assert h.state == "aborted"
    in_flight = not h.run.settled
    assert in_flight
    h.finish("b", "succeeded")
    h.later(5)
    assert (h.target("b"), h.target("c")) == ("succeeded", "timed-out")
    assert h.run.settled
    assert h.run.next_deadline() is None


def test_min_executed_holds_the_judgement_back() -> None:
    h = Harness(["a", "b", "c"], waves=("100%",), min_executed=2, max_failures="10%")
    h.step()
    h.finish("a", "failed")
    assert h.state == "running"
    h.finish("b", "succeeded")
    assert h.state == "aborted"


def test_rollback_returns_the_changed_targets_to_their_previous_deployment() -> None:
    h = Harness(["a", "b", "c"], {"a": "d-old-a"}, waves=("2", "100%"), bake=0.0,
                max_failures="0", rollback_on_abort=True)  # fmt: skip
    h.step()
    h.finish("a", "succeeded")
    h.finish("b", "succeeded")
    h.later(0)
    h.finish("c", "rejected")
    assert h.state == "rolling-back"
    assert h.rollbacks == ["a"]
    assert h.run.targets["b"].rollback_state == "none"
    assert "nothing to roll back to" in h.run.targets["b"].reason
    h.run.observe(deployment("r-a", "a", "succeeded", version="1.0.0"), h.clock.time())
    h.step()
    assert h.target("a") == "rolled-back"
    assert h.state == "aborted"
    assert h.alerts == [("c", "raised"), ("c", "cleared")]


def test_an_abort_with_nothing_to_roll_back_raises_and_clears_its_alert() -> None:
    h = Harness(["a"], waves=("100%",), max_failures="0", rollback_on_abort=True)
    h.step()
    h.finish("a", "rejected")
    assert h.state == "aborted"
    assert h.alerts == [("a", "raised"), ("a", "cleared")]


def test_offline_targets_are_not_deployed_and_count_unless_skipped() -> None:
    for skip, end in ((False, "aborted"), (True, "succeeded")):
        h = Harness(["a"], waves=("100%",), bake=0.0, target_timeout=30.0, skip_offline=skip)
        h.step()
        h.run.observe(deployment("d-a", "a", "queued", cmd=""), h.clock.time())
        h.later(30)
        assert h.target("a") == "not-deployed"
        h.later(0)
        assert h.state == end


def test_a_target_past_its_timeout_is_timed_out() -> None:
    h = Harness(["a"], waves=("100%",), target_timeout=5.0)
    h.step()
    assert h.run.next_deadline() == pytest.approx(h.clock.time() + 5.0)
    h.later(5)
    assert h.target("a") == "timed-out"
    assert h.state == "aborted"


def test_pause_resume_and_approve() -> None:
    h = Harness(["a", "b"], waves=("1", "100%"), bake=0.0, approve_each_wave=True)
    h.step()
    h.run.act("pause", 0.0)
    h.finish("a", "succeeded")
    h.later(1)
    assert h.sent == ["a"]
    assert h.state == "paused"
    with pytest.raises(RequestRefused, match="cannot approve"):
        h.run.act("approve", 0.0)
    h.run.act("resume", 0.0)
    h.step()
    assert h.state == "awaiting-approval"
    assert h.sent == ["a"]
    h.run.act("approve", 0.0)
    h.step()
    assert h.sent == ["a", "b"]


def test_an_environment_that_joins_goes_into_the_last_wave() -> None:
    h = Harness(["a", "b"], waves=("1", "100%"), bake=0.0)
    h.step()
    assert h.run.add("c", 0.0)
    assert h.run.targets["c"].wave == 1
    h.finish("a", "succeeded")
    h.later(0)
    assert sorted(h.sent) == ["a", "b", "c"]


def test_changes_say_what_to_store() -> None:
    h = Harness(["a", "b"])
    record, targets = h.run.changes()
    assert record is not None
    assert sorted(t.env for t in targets) == ["a", "b"]
    assert h.run.changes() == (None, [])
    h.step()
    record, targets = h.run.changes()
    assert [t.env for t in targets] == ["a"]
    assert targets[0].dep == "d-a"


# --- undeploy rollouts --------------------------------------------------------------------
def undeploy_run(envs: list[str], **kw: object) -> RolloutRun:
    settings = RolloutSettings(**{"waves": ("100%",), "bake": 0.0, **kw})  # type: ignore[arg-type]
    return new_run("r-u", "app", {"stage": "prod"}, settings, plan_waves(envs, settings.waves), 0.0)


def test_an_undeploy_target_succeeds_once_what_it_took_back_ended() -> None:
    run = undeploy_run(["a", "b"])
    assert run.info().action == "undeploy"
    assert (run.info().workflow, run.info().version) == ("app", "")
    assert run.step(0.0).send == ["a", "b"]
    run.sent("a", "d-a", "d-a", 0.0)
    run.nothing_to_do("b", "nothing of it ran here", 0.0)
    assert not run.observe(deployment("d-a", "a", "running"), 0.0)  # still runs: not yet
    assert run.observe(deployment("d-a", "a", "cancelled"), 1.0)
    run.step(1.0)
    assert run.record.state == "succeeded"
    assert run.targets["b"].previous == ""


def test_an_offline_undeploy_target_waits_in_place_then_is_not_deployed() -> None:
    run = undeploy_run(["a", "b", "c"], concurrency=2, target_timeout=5.0)
    assert run.step(0.0).send == ["a", "b"]
    run.waiting("a", "waiting for its agent to come online", 0.0)
    run.sent("b", "d-b", "d-b", 0.0)
    assert run.step(1.0).send == ["a"]  # tried again, and holding its place: c waits
    assert run.next_deadline() == 5.0
    run.step(5.0)
    assert run.targets["a"].state == "not-deployed"
    assert run.record.state == "aborted"  # an offline target counts (no --skip-offline)


def test_an_aborted_undeploy_rollout_deploys_again_what_it_stopped() -> None:
    run = undeploy_run(["a", "b"], max_failures="0", rollback_on_abort=True)
    run.step(0.0)
    run.sent("a", "d-a", "d-a", 0.0)
    run.observe(deployment("d-a", "a", "cancelled"), 0.0)
    run.refused("b", "retired", 0.0)
    step = run.step(1.0)
    assert run.record.state == "rolling-back"
    assert step.rollback == {"a": "d-a"}


# --- services, and an abort's queued deployments -----------------------------------------
SERVICE = Workflow(name="svc", version="2.0.0", kind="service", steps=[Step(name="s", run=["x"])])


def target_state(run: RolloutRun, env: str) -> str:
    return run.targets[env].state


def service_deployment(dep: str, env: str, state: str, *, up: bool = False) -> Deployment:
    return Deployment(dep, env, SERVICE, state, 0.0, 0.0, "c-1", up=up)  # type: ignore[arg-type]


def test_a_service_succeeds_once_it_runs_and_fails_if_it_dies_while_the_rollout_goes_on() -> None:
    settings = RolloutSettings(waves=("1", "100%"), bake=10.0, max_failures="0")
    run = new_run("r-s", SERVICE, {"stage": "prod"}, settings, [["a"], ["b"]], 0.0)
    assert run.step(0.0).send == ["a"]
    run.sent("a", "d-a", "", 0.0)
    assert not run.observe(service_deployment("d-a", "a", "running"), 0.1)  # only started
    assert target_state(run, "a") == "sent"
    assert run.observe(service_deployment("d-a", "a", "running", up=True), 0.2)
    assert target_state(run, "a") == "succeeded"
    run.step(0.2)
    assert run.record.waves[0].state == "baking"
    assert run.observe(service_deployment("d-a", "a", "rolled-back"), 3.0)  # died in the bake
    assert target_state(run, "a") == "failed"
    assert "rolled-back after it ran" in run.targets["a"].reason
    assert run.step(3.0).send == []
    assert run.record.state == "aborted"
    assert run.targets["b"].state == "pending"


def test_an_abort_drops_the_deployments_still_queued_for_offline_targets() -> None:
    settings = RolloutSettings(waves=("100%",), max_failures="0")
    run = new_run("r-q", WORKFLOW, {"stage": "prod"}, settings, [["a", "b"]], 0.0)
    run.step(0.0)
    run.sent("a", "d-a", "", 0.0)
    run.sent("b", "d-b", "", 0.0)
    run.observe(deployment("d-b", "b", "queued", cmd=""), 0.0)  # b is offline
    run.observe(deployment("d-a", "a", "failed"), 1.0)
    assert run.step(1.0).drop == ["d-b"]
    assert run.record.state == "aborted"
    assert run.step(1.5).drop == []  # once
    run.observe(deployment("d-b", "b", "cancelled", cmd=""), 1.5)
    assert run.targets["b"].state == "not-deployed"
    assert "queued deployment was dropped" in run.targets["b"].reason
    assert run.settled
