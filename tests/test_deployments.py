"""Deployments: the state machine driven by agents' events, and the book's queue and
deadlines on a manual clock (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeplane.controller.core.deployment_book import DeploymentBook
from edgeplane.controller.core.deployments import (
    CONTROLLER_SRC,
    SENT_GRACE,
    Deployment,
    expiry_reason,
    next_state,
    unchecked,
)
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Check,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Pong,
    Preflight,
    RolledBack,
    Running,
    Started,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)
from edgeplane.shared.rpc import TERMINAL_STATES
from edgeplane.shared.workflow import (
    BucketNeed,
    DatasourceNeed,
    ModelNeed,
    Requires,
    Step,
    Workflow,
)

FLOW = Workflow(name="inspect", version="1.0", steps=[Step(name="s", run=["true"])])


def deployment(state: Any = "sent", **fields: Any) -> Deployment:
    base: dict[str, Any] = {
        "id": "d-1", "env": "edge-a", "workflow": FLOW, "state": state, "created": 10.0,
        "updated": 10.0, "cmd": "c-1",
    }  # fmt: skip
    return Deployment(**{**base, **fields})


def ev(kind: type[Event], seq: int = 1, **fields: Any) -> Event:
    return kind(env="edge-a", seq=seq, src="agent", dep="d-1", **fields)


def moves(book: DeploymentBook, event: Event) -> list[Deployment]:
    """The deployments ``event`` moved, in their new state."""
    return book.on_event(event).deployments


def expire_due(book: DeploymentBook) -> list[Deployment]:
    """What the controller does when deadlines pass: its own ``expired`` event for each
    deployment due, folded like any other."""
    due, _ = book.due()
    expired: list[Deployment] = []
    for seq, dep in enumerate(due, start=1):
        own = Expired(env=dep.env, seq=seq, src=CONTROLLER_SRC, dep=dep.id, cmd=dep.cmd,
                      reason=expiry_reason(dep))  # fmt: skip
        expired += moves(book, own)
    return expired


def run_through(events: list[Event], start: Deployment | None = None) -> list[str]:
    current = start or deployment()
    states: list[str] = [current.state]
    for event in events:
        target = next_state(current, event)
        if target is not None:
            current = current.moved(target[0], target[1], 0.0)
            states.append(current.state)
    return states


def test_a_job_goes_from_sent_to_succeeded() -> None:
    events = [
        ev(Accepted, workflow="inspect", version="1.0"),
        ev(Preflight, ok=True),
        ev(Started, workflow="inspect", version="1.0"),
        ev(StepStarted, step="s", index=0),
        ev(StepFinished, step="s", index=0, exit_code=0, duration=0.1, ok=True),
        ev(Succeeded),
    ]
    assert run_through(events) == ["sent", "accepted", "running", "succeeded"]


def test_duplicates_and_late_events_never_take_a_deployment_back() -> None:
    accepted = ev(Accepted, workflow="inspect", version="1.0")
    started = ev(Started, workflow="inspect", version="1.0")
    events = [accepted, started, accepted, started, ev(Succeeded), accepted, ev(Failed, reason="x")]
    assert run_through(events) == ["sent", "accepted", "running", "succeeded"]


@pytest.mark.parametrize("final", sorted(TERMINAL_STATES))
def test_a_terminal_state_is_final(final: Any) -> None:
    events = [ev(Accepted, workflow="i", version="1"), ev(Running), ev(Succeeded)]
    assert run_through(events, deployment(final)) == [final]


def test_a_failed_preflight_rejects_with_the_failed_checks_named() -> None:
    checks = [
        Check(kind="model", name="detector", ok=True),
        Check(kind="secret", name="CAMERA_TOKEN", ok=False, detail="not in the secrets file"),
    ]
    current = deployment("accepted")
    target = next_state(current, ev(Preflight, ok=False, checks=checks))
    assert target == ("rejected", "preflight failed: secret CAMERA_TOKEN: not in the secrets file")
    # the agent's rejected event that follows changes nothing more
    rejected = current.moved(*target, 1.0)
    assert next_state(rejected, ev(CommandRejected, reason="preflight failed")) is None


def test_a_dry_run_ends_checked_with_its_preflight_report() -> None:
    dry = deployment("accepted", dry_run=True)
    passed = next_state(dry, ev(Preflight, ok=True, dry_run=True))
    assert passed == ("checked", "preflight passed")
    bad = [Check(kind="bucket", name="results", ok=False, detail="not writable")]
    failed = next_state(dry, ev(Preflight, ok=False, checks=bad, dry_run=True))
    assert failed == ("checked", "preflight failed: bucket results: not writable")


@pytest.mark.parametrize(
    ("event", "state", "reason"),
    [
        (ev(Failed, reason="exit code 3", step="inspect"), "failed", "step inspect: exit code 3"),
        (ev(RolledBack, restored="d-0", reason="did not start"), "rolled-back",
         "restored deployment d-0; did not start"),
        (ev(CommandRejected, reason="bad command"), "rejected", "bad command"),
        (ev(Stopped, reason="replaced by d-2"), "stopped", "replaced by d-2"),
        (ev(Expired, reason="arrived after its expiry"), "expired", "arrived after its expiry"),
        (ev(Running), "running", ""),
    ],
)  # fmt: skip
def test_each_outcome_and_its_reason(event: Event, state: str, reason: str) -> None:
    assert next_state(deployment("accepted"), event) == (state, reason)


def test_events_that_are_no_deployments_change_nothing() -> None:
    assert next_state(deployment(), ev(Ack, op="restart", ok=True)) is None


def test_the_book_follows_events_by_deployment_or_command_and_forgets_the_finished() -> None:
    clock = ManualClock()
    book = DeploymentBook(clock, [deployment()])
    clock.advance(5)
    [moved] = moves(book, ev(Accepted, workflow="inspect", version="1.0"))
    assert (moved.state, moved.updated) == ("accepted", clock.time())
    by_cmd = Expired(env="edge-a", seq=2, src="agent", cmd="c-1", reason="too late")
    [finished] = moves(book, by_cmd)
    assert finished.state == "expired"
    assert book.get("d-1") is None
    assert moves(book, ev(Running, seq=3)) == []


def test_an_event_from_another_environment_does_not_move_it() -> None:
    book = DeploymentBook(ManualClock(), [deployment()])
    other = Accepted(env="edge-b", seq=1, src="agent", dep="d-1", workflow="i", version="1")
    assert moves(book, other) == []
    assert book.get("d-1") == deployment()


def test_queued_deployments_go_oldest_first_and_expire_at_their_ttl() -> None:
    clock = ManualClock(start=1000.0)
    young = deployment("queued", id="d-young", created=20.0, cmd="", expires=1100.0)
    old = deployment("queued", id="d-old", created=10.0, cmd="", expires=1050.0)
    elsewhere = deployment("queued", id="d-b", env="edge-b", cmd="", expires=2000.0)
    book = DeploymentBook(clock, [young, old, elsewhere])
    assert [d.id for d in book.queued_for("edge-a")] == ["d-old", "d-young"]
    assert book.next_deadline() == 1050.0
    clock.advance(49)
    assert expire_due(book) == []
    clock.advance(1)
    expired = expire_due(book)
    assert [(d.id, d.state) for d in expired] == [("d-old", "expired")]
    assert "did not come online" in expired[0].reason
    sent = book.mark_sent("d-young", "c-9", expires=1300.0)
    assert (sent.state, sent.cmd) == ("sent", "c-9")
    assert book.next_deadline() == 1300.0 + SENT_GRACE  # the command's expiry, then grace
    clock.advance(1300.0 + SENT_GRACE - clock.time())
    late = expire_due(book)
    assert [(d.id, d.state) for d in late] == [("d-young", "expired")]
    assert "did not take the command" in late[0].reason
    assert [d.id for d in book] == ["d-b"]


def test_an_accepted_deployment_has_no_deadline() -> None:
    clock = ManualClock(start=1000.0)
    book = DeploymentBook(clock, [deployment(expires=1010.0)])
    book.on_event(ev(Accepted, workflow="i", version="1"))
    clock.advance(10_000)
    assert expire_due(book) == []
    assert book.next_deadline() is None


def test_the_controller_stopping_a_queued_one_is_final() -> None:
    book = DeploymentBook(ManualClock(), [deployment("queued", cmd="", expires=5e9)])
    own = Stopped(env="edge-a", seq=1, src=CONTROLLER_SRC, dep="d-1", reason="retired")
    stopped = moves(book, own)
    assert [(d.state, d.reason, d.final) for d in stopped] == [("stopped", "retired", True)]
    assert len(book) == 0


def rollback_book() -> tuple[ManualClock, DeploymentBook]:
    """``d-1`` (version 1) running as a service, ``d-2`` replacing it and running."""
    clock = ManualClock()
    old = deployment("running", cmd="c-1")
    new = deployment("running", id="d-2", cmd="c-2")
    book = DeploymentBook(clock, [old, new])
    [stopped] = moves(book, ev(Stopped, seq=1, reason="replaced by d-2", by="d-2"))
    assert stopped.state == "stopped"
    return clock, book


def test_a_failed_replacement_waits_for_the_rollback_which_restores_the_old_one() -> None:
    clock, book = rollback_book()
    failed = Failed(env="edge-a", seq=2, src="agent", dep="d-2", reason="exited 3", step="serve")
    [held] = moves(book, failed)
    assert (held.id, held.state, held.reason) == ("d-2", "failed", "step serve: exited 3")
    assert not held.final  # the rollback's outcome is still to come
    clock.advance(1)
    rolled = RolledBack(env="edge-a", seq=3, src="agent", dep="d-2", restored="d-1", version="1")
    moved = moves(book, rolled)
    assert [(d.id, d.state) for d in moved] == [("d-2", "rolled-back"), ("d-1", "running")]
    assert "restored after d-2 failed" in moved[1].reason
    assert [d.id for d in book.in_state("edge-a", "running")] == ["d-1"]


def test_a_replacement_whose_rollback_fails_ends_failed_naming_both() -> None:
    _, book = rollback_book()
    book.on_event(Failed(env="edge-a", seq=2, src="agent", dep="d-2", reason="exited 3"))
    not_restored = Failed(env="edge-a", seq=3, src="agent", dep="d-1", reason="not restored: gone")
    old, ended = moves(book, not_restored)
    assert (old.id, old.state, old.final) == ("d-1", "failed", True)
    assert (ended.id, ended.state) == ("d-2", "failed")
    assert ended.reason == "exited 3; d-1 not restored either: not restored: gone"
    assert book.get("d-2") is None


def test_a_failure_with_nothing_replaced_is_final_at_once() -> None:
    book = DeploymentBook(ManualClock(), [deployment("running")])
    [ended] = moves(book, ev(Failed, reason="exited 1"))
    assert ended.state == "failed"


# --- what the controller did not send, and what a preflight must cover -----------------------
NEEDS = Requires(
    models=[ModelNeed("defect-detector", ">=2")],
    datasources=[DatasourceNeed("line-camera", "tcp://10.0.0.5:554")],
    buckets=[BucketNeed("results", "/var/results", "write")],
    secrets=["CAMERA_TOKEN"],
    endpoints=["inference-api"],
)
NEEDY = Workflow(name="inspect", version="1.0", steps=[Step(name="s", run=["true"])],
                 requires=NEEDS)  # fmt: skip


def test_a_preflight_names_every_requirement_it_did_not_check_in_the_workflows_order() -> None:
    everything = [
        Check(kind="model", name="defect-detector", ok=True),
        Check(kind="datasource", name="line-camera", ok=True),
        Check(kind="bucket", name="results", ok=True),
        Check(kind="secret", name="CAMERA_TOKEN", ok=True),
        Check(kind="endpoint", name="inference-api", ok=True),
    ]
    assert unchecked(NEEDS, everything) == []
    assert unchecked(NEEDS, []) == [
        "model defect-detector", "datasource line-camera", "bucket results",
        "secret CAMERA_TOKEN", "endpoint inference-api",
    ]  # fmt: skip
    # a check of the right name but another kind covers nothing
    wrong_kind = [Check(kind="model", name="CAMERA_TOKEN", ok=True), *everything[:3]]
    assert unchecked(NEEDS, wrong_kind) == ["secret CAMERA_TOKEN", "endpoint inference-api"]
    assert unchecked(Requires(), []) == []


def test_an_empty_preflight_of_a_workflow_with_requirements_fails_the_deployment() -> None:
    needy = deployment("accepted", workflow=NEEDY)
    secret_only = [Check(kind="secret", name="CAMERA_TOKEN", ok=True)]
    target = next_state(needy, ev(Preflight, ok=True, checks=secret_only))
    assert target == (
        "failed",
        "preflight did not check: model defect-detector, datasource line-camera, "
        "bucket results, endpoint inference-api",
    )
    # ... then whatever the impersonator claims next changes nothing
    ended = needy.moved(*target, 1.0)
    assert run_through([ev(Started, workflow="inspect", version="1.0"), ev(Succeeded)],
                       ended) == ["failed"]  # fmt: skip
    # a dry run ends checked, with the same sentence
    dry = deployment("accepted", workflow=NEEDY, dry_run=True)
    checked = next_state(dry, ev(Preflight, ok=True, dry_run=True))
    assert checked is not None
    assert checked[0] == "checked"
    assert checked[1].startswith("preflight did not check: model defect-detector, ")


def test_a_preflight_that_says_ok_over_a_failed_check_is_a_failed_preflight() -> None:
    bad = [Check(kind="secret", name="TOKEN", ok=False, detail="missing")]
    target = next_state(deployment("accepted"), ev(Preflight, ok=True, checks=bad))
    assert target == ("rejected", "preflight failed: secret TOKEN: missing")


def test_only_events_of_deployments_and_commands_the_controller_issued_are_its_own() -> None:
    done = deployment("succeeded", id="d-old", cmd="c-old")
    book = DeploymentBook(ManualClock(), [deployment()], issued=[("edge-a", "d-old", "c-old")])
    assert book.stranger(ev(Started, workflow="inspect", version="1.0")) == ""
    assert book.stranger(Succeeded(env="edge-a", seq=1, dep=done.id, cmd=done.cmd)) == ""
    made_up = Succeeded(env="edge-a", seq=1, dep="d-made-up", cmd="c-1")
    assert book.stranger(made_up) == "no deployment 'd-made-up' was sent to edge-a"
    other_cmd = Started(env="edge-a", seq=1, dep="d-1", cmd="c-made-up", workflow="i", version="1")
    assert book.stranger(other_cmd) == "no command 'c-made-up' was sent to edge-a"
    elsewhere = Started(env="edge-b", seq=1, dep="d-1", workflow="i", version="1")
    assert book.stranger(elsewhere) == "no deployment 'd-1' was sent to edge-b"
    # the agent's refusal of a command it could not authenticate names none: kept
    assert book.stranger(CommandRejected(env="edge-a", seq=1, reason="unsigned: no key")) == ""
    # a deployment put in the book later is known from then on
    book.put(deployment("sent", id="d-new", cmd="c-new"))
    assert book.stranger(Running(env="edge-a", seq=1, dep="d-new", cmd="c-new")) == ""


def test_refusals_expiries_acks_and_pongs_naming_what_was_never_sent_there_are_strangers() -> None:
    book = DeploymentBook(ManualClock(), issued=[("edge-a", "d-a", "c-a")])
    book.note_command("edge-a", "c-restart")
    # B, on its own topic, naming A's deployment and commands
    forged: list[Event] = [
        CommandRejected(env="edge-b", seq=1, dep="d-a", reason="forged by B"),
        CommandRejected(env="edge-b", seq=2, cmd="c-a", reason="forged by B"),
        Expired(env="edge-b", seq=3, dep="d-a", cmd="c-a"),
        Ack(env="edge-b", seq=4, cmd="c-restart", op="restart", ok=True),
        Pong(env="edge-b", seq=5, cmd="c-restart"),
    ]
    assert [book.stranger(event) for event in forged] == [
        "no deployment 'd-a' was sent to edge-b",
        "no command 'c-a' was sent to edge-b",
        "no deployment 'd-a' was sent to edge-b",
        "no command 'c-restart' was sent to edge-b",
        "no command 'c-restart' was sent to edge-b",
    ]
    # made up on A's own topic too
    made_up = CommandRejected(env="edge-a", seq=6, dep="d-a", cmd="c-made-up", reason="x")
    assert book.stranger(made_up) == "no command 'c-made-up' was sent to edge-a"
    # A's own answers pass
    mine: list[Event] = [
        CommandRejected(env="edge-a", seq=7, dep="d-a", cmd="c-a", reason="preflight failed"),
        Expired(env="edge-a", seq=8, dep="d-a", cmd="c-a"),
        Ack(env="edge-a", seq=9, cmd="c-restart", op="restart", ok=True),
    ]
    assert [book.stranger(event) for event in mine] == ["", "", ""]
