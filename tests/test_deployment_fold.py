"""The deployment fold (pure): the state of every deployment and operator command comes from
its environment's events in order, whatever the agent does after a restart, an update, a
retirement, an agent stop or a failed replacement; and an event that comes twice or after a
newer one (QoS 1, an outbox re-sent after a reconnect) changes nothing."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from edgeplane.controller.core.deployment_book import DeploymentBook
from edgeplane.controller.core.deployments import (
    CONTROLLER_SRC,
    SENT_GRACE,
    Deployment,
    OperatorCommand,
    replay,
)
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Cancelled,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Overridden,
    Preflight,
    RolledBack,
    Running,
    ServiceRestarted,
    Started,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)
from edgeplane.shared.workflow import Step, Workflow

ENV = "edge-a"
SERVICE = Workflow(
    name="camera", version="1.0", kind="service", steps=[Step(name="serve", run=["x"])]
)
JOB = Workflow(name="inspect", version="1.0", steps=[Step(name="inspect", run=["x"])])


def deployment(
    dep: str, state: Any = "running", workflow: Workflow = SERVICE, **fields: Any
) -> Deployment:
    base: dict[str, Any] = {"id": dep, "env": ENV, "workflow": workflow, "state": state,
                            "created": 1.0, "updated": 1.0, "cmd": f"c-{dep}"}  # fmt: skip
    return Deployment(**{**base, **fields})


def restart(cmd: str = "c-restart", workflow: str = "", sent: float = 100.0) -> OperatorCommand:
    return OperatorCommand(cmd, ENV, "restart", sent, sent + 300.0, workflow)


class Agent:
    """An agent's event stream: each event the next ``seq``."""

    def __init__(self, src: str = "a1f3") -> None:
        self.src = src
        self._seq = itertools.count(1)

    def __call__(self, kind: type[Event], dep: str = "", **fields: Any) -> Event:
        cmd = fields.pop("cmd", f"c-{dep}" if dep else "")
        return kind(env=ENV, seq=next(self._seq), src=self.src, dep=dep, cmd=cmd, **fields)


class World:
    """A book on a manual clock, the environment's deployments and commands in it."""

    def __init__(self, *deployments: Deployment, commands: Iterable[OperatorCommand] = ()) -> None:
        self.clock = ManualClock(start=100.0)
        self.book = DeploymentBook(self.clock, deployments)
        for command in commands:
            self.book.issue(command)
        self.agent = Agent()

    def take(self, *events: Event) -> None:
        for event in events:
            self.clock.advance(0.1)
            self.book.on_event(event)

    def states(self) -> dict[str, str]:
        return {d.id: d.state for d in self.book}

    def state(self, dep: str) -> str:
        found = self.book.get(dep)
        return "final" if found is None else found.state

    def command(self) -> OperatorCommand:
        return self.book.commands_of(ENV)[-1]


# --- restart ------------------------------------------------------------------------------
def test_a_restarted_service_is_restarting_then_running_and_the_restart_done() -> None:
    world = World(deployment("d-1"), commands=[restart()])
    agent = world.agent
    world.take(agent(Stopped, "d-1", reason="restart requested"))
    assert world.state("d-1") == "restarting"
    assert world.command().state == "pending"
    world.take(agent(Running, "d-1"))
    assert world.state("d-1") == "running"
    world.take(agent(Ack, cmd="c-restart", op="restart", ok=True, detail="restarted: camera"))
    assert (world.command().state, world.command().detail) == ("done", "restarted: camera")
    assert [d.id for d in world.book.in_state(ENV, "running")] == ["d-1"]
    assert world.book.commands_of(ENV) == [world.command()]  # none pending


def test_a_restart_of_another_workflow_is_a_plain_stop() -> None:
    world = World(deployment("d-1"), commands=[restart(workflow="other")])
    world.take(world.agent(Stopped, "d-1", reason="agent stopping"))
    assert world.state("d-1") == "stopped"


def test_a_restarted_service_that_does_not_come_back_is_failed_or_stopped_when_it_ends() -> None:
    world = World(deployment("d-1"), deployment("d-2", workflow=JOB), commands=[restart()])
    agent = world.agent
    world.take(
        agent(Stopped, "d-1", reason="restart requested"),
        agent(Failed, "d-1", reason="not restarted: its working directory is gone"),
        agent(Stopped, "d-2", reason="restart requested"),
        agent(Ack, cmd="c-restart", op="restart", ok=False, detail="failed: camera"),
    )
    assert world.state("d-1") == "final"  # failed, for good
    d2 = world.book.get("d-2")
    assert d2 is not None
    assert d2.state == "stopped"
    assert "not running again when restart c-restart ended (failed)" in d2.reason
    assert world.command().state == "failed"


def test_a_restarted_job_runs_its_steps_again_even_after_the_ack() -> None:
    world = World(deployment("d-1", workflow=JOB), commands=[restart()])
    agent = world.agent
    world.take(agent(Ack, cmd="c-restart", op="restart", ok=True, detail="restarted: inspect"))
    world.take(agent(Stopped, "d-1", reason="restart requested"))
    assert world.state("d-1") == "stopped"
    world.take(agent(StepStarted, "d-1", step="inspect", index=0))
    assert world.state("d-1") == "running"
    world.take(agent(Succeeded, "d-1"))
    assert world.state("d-1") == "final"


def test_a_restart_with_no_answer_is_unanswered_at_its_expiry_and_its_stop_stays_a_stop() -> None:
    world = World(deployment("d-1"), commands=[restart()])
    world.take(world.agent(Stopped, "d-1", reason="restart requested"))
    assert world.book.next_deadline() == 400.0 + SENT_GRACE
    world.clock.advance(400.0 + SENT_GRACE - world.clock.time())
    deployments, [due] = world.book.due()
    assert (deployments, due.id) == ([], "c-restart")
    own = Expired(env=ENV, seq=1, src=CONTROLLER_SRC, cmd="c-restart", reason="no answer")
    world.take(own)
    assert (world.command().state, world.command().detail) == ("unanswered", "no answer")
    assert world.state("d-1") == "stopped"  # the agent's last word about it
    assert world.book.next_deadline() is None


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (CommandRejected(env=ENV, seq=9, cmd="c-restart", reason="retired: retiring"), "rejected"),
        (Expired(env=ENV, seq=9, cmd="c-restart", reason="arrived 3.0 s late"), "expired"),
    ],
)  # fmt: skip
def test_a_refused_or_late_command_says_so(answer: Event, state: str) -> None:
    world = World(deployment("d-1"), commands=[restart()])
    world.take(answer)
    assert world.command().state == state
    assert world.state("d-1") == "running"


def test_an_update_is_pending_until_its_ack_and_a_refused_one_says_why() -> None:
    world = World(commands=[OperatorCommand("c-u", ENV, "update", 100.0, 400.0)])
    assert [c.state for c in world.book.commands_of(ENV)] == ["pending"]
    world.take(world.agent(Ack, cmd="c-u", op="update", ok=False, detail="bad log_level"))
    assert [(c.state, c.detail) for c in world.book.commands_of(ENV)] == [
        ("failed", "bad log_level")
    ]


# --- agent stops, retirement --------------------------------------------------------------
def test_a_service_stopped_with_its_agent_runs_again_when_the_agent_resumes_it() -> None:
    world = World(deployment("d-1"))
    world.take(world.agent(Stopped, "d-1", reason="agent stopping"))
    assert world.state("d-1") == "stopped"
    world.take(world.agent(Running, "d-1"))
    assert world.state("d-1") == "running"


def test_an_interrupted_job_is_failed_when_the_agent_comes_back() -> None:
    world = World(deployment("d-1", workflow=JOB))
    world.take(world.agent(Stopped, "d-1", reason="agent stopping"))
    world.take(world.agent(Failed, "d-1", reason="interrupted", step="inspect"))
    assert world.state("d-1") == "final"


def test_retirement_ends_every_deployment_for_good() -> None:
    retire = OperatorCommand("c-retire", ENV, "retire", 100.0, 400.0)
    world = World(deployment("d-1"), deployment("d-2", workflow=JOB), commands=[retire])
    agent = world.agent
    world.take(agent(Stopped, "d-1", reason="retired"))
    assert world.state("d-1") == "stopped"
    world.take(agent(Ack, cmd="c-retire", op="retire", ok=True))
    assert world.states() == {}
    assert world.command().state == "done"


def test_a_deployment_the_controller_stopped_is_final_at_once() -> None:
    world = World(deployment("d-1", "queued", cmd=""))
    world.take(Stopped(env=ENV, seq=1, src=CONTROLLER_SRC, dep="d-1", reason="retired"))
    assert world.states() == {}


# --- cancel and undeploy -----------------------------------------------------------------
def cancel(cmd: str = "c-cancel", op: str = "cancel", workflow: str = "camera") -> OperatorCommand:
    return OperatorCommand(cmd, ENV, op, 100.0, 400.0, workflow)


def test_a_queued_deployment_the_controller_cancels_is_cancelled_for_good() -> None:
    world = World(deployment("d-1", "queued", cmd=""))
    own = Cancelled(env=ENV, seq=1, src=CONTROLLER_SRC, dep="d-1", reason="cancelled by you")
    change = world.book.on_event(own)
    assert [(d.id, d.state, d.reason, d.final) for d in change.deployments] == [
        ("d-1", "cancelled", "cancelled by you", True)
    ]
    assert world.states() == {}


@pytest.mark.parametrize("state", ["sent", "accepted", "running", "restarting"])
def test_the_agents_cancelled_ends_the_deployment_and_answers_the_cancel(state: str) -> None:
    world = World(deployment("d-1", state), commands=[cancel()])
    world.take(world.agent(Cancelled, "d-1", cmd="c-cancel", reason="cancelled by the operator"))
    assert world.states() == {}  # final
    command = world.command()
    assert (command.op, command.state) == ("cancel", "done")
    assert command.detail == "d-1 cancelled by the operator"


def test_a_cancelled_service_stopped_with_its_agent_does_not_come_back() -> None:
    world = World(deployment("d-1"), commands=[cancel(op="undeploy")])
    agent = world.agent
    world.take(agent(Stopped, "d-1", reason="agent stopping"))
    assert world.state("d-1") == "stopped"  # revivable: the agent would resume it
    world.take(agent(Cancelled, "d-1", cmd="c-cancel", reason="undeployed"))
    assert world.state("d-1") == "final"
    world.take(agent(Running, "d-1"))  # a late word of it changes nothing
    assert world.states() == {}


def test_a_cancel_the_agent_refuses_leaves_the_deployment_as_it_was() -> None:
    world = World(deployment("d-1", workflow=JOB), commands=[cancel()])
    agent = world.agent
    world.take(agent(Succeeded, "d-1"))
    world.take(agent(CommandRejected, cmd="c-cancel", reason="not cancelled: it ended"))
    assert world.command().state == "rejected"
    assert world.state("d-1") == "final"  # succeeded, as the agent said first


def test_a_cancelled_replacement_gives_the_old_service_back() -> None:
    world = World(deployment("d-1"), deployment("d-2", "sent"), commands=[cancel()])
    agent = world.agent
    world.take(
        agent(Accepted, "d-2", workflow="camera", version="2.0"),
        agent(Started, "d-2", workflow="camera", version="2.0"),
        agent(Stopped, "d-1", reason="replaced by d-2", by="d-2"),
        agent(Cancelled, "d-2", cmd="c-cancel", reason="cancelled during step 'prepare'"),
        agent(Running, "d-1"),
    )
    assert world.states() == {"d-1": "running"}


def test_a_cancel_with_no_answer_is_unanswered_and_the_deployment_runs_on() -> None:
    world = World(deployment("d-1"), commands=[cancel()])
    world.clock.advance(400.0 + SENT_GRACE - world.clock.time())
    _, [due] = world.book.due()
    world.take(Expired(env=ENV, seq=1, src=CONTROLLER_SRC, cmd=due.id, reason="no answer"))
    assert world.command().state == "unanswered"
    assert world.state("d-1") == "running"


def test_the_controllers_overridden_record_changes_no_state() -> None:
    world = World(deployment("d-1", "sent"))
    own = Overridden(env=ENV, seq=1, src=CONTROLLER_SRC, dep="d-1", cmd="c-d-1",
                     check="flapping", reason="hotfix")  # fmt: skip
    assert not world.book.on_event(own)
    assert world.state("d-1") == "sent"


# --- replacement and rollback ------------------------------------------------------------
def replace_story(agent: Agent, *, healthy: bool, restored: bool = True) -> list[Event]:
    """``d-1`` runs; ``d-2`` (a new version) is deployed and replaces it."""
    events = [
        agent(Accepted, "d-2", workflow="camera", version="2.0"),
        agent(Preflight, "d-2", ok=True),
        agent(Started, "d-2", workflow="camera", version="2.0"),
        agent(Stopped, "d-1", reason="replaced by d-2", by="d-2"),
        agent(StepStarted, "d-2", step="serve", index=0),
    ]
    if healthy:
        return [*events, agent(Running, "d-2")]
    events += [
        agent(StepFinished, "d-2", step="serve", index=0, exit_code=3, duration=0.1, ok=False),
        agent(Failed, "d-2", reason="failed to start", step="serve"),
    ]
    if restored:
        return [*events, agent(RolledBack, "d-2", restored="d-1", version="1.0")]
    return [*events, agent(Failed, "d-1", reason="not restored: gone")]


def fold_story(events: list[Event]) -> dict[str, tuple[str, bool]]:
    start = [deployment("d-1"), deployment("d-2", "sent")]
    final, _ = replay(start, [], [(event, 100.0 + i) for i, event in enumerate(events)])
    return {dep: (d.state, d.final) for dep, d in final.items()}


def test_a_healthy_replacement_runs_and_the_old_one_is_stopped_for_good() -> None:
    assert fold_story(replace_story(Agent(), healthy=True)) == {
        "d-1": ("stopped", True),
        "d-2": ("running", False),
    }


def test_a_failed_replacement_is_failed_until_the_rollback_restores_the_old_one() -> None:
    events = replace_story(Agent(), healthy=False)
    assert fold_story(events[:-1]) == {"d-1": ("stopped", False), "d-2": ("failed", False)}
    assert fold_story(events) == {"d-1": ("running", False), "d-2": ("rolled-back", True)}


def test_a_failed_replacement_whose_old_one_cannot_be_restored_ends_both_failed() -> None:
    events = replace_story(Agent(), healthy=False, restored=False)
    assert fold_story(events) == {"d-1": ("failed", True), "d-2": ("failed", True)}


# --- duplicates and order ------------------------------------------------------------------
STORIES: dict[str, Callable[[Agent], list[Event]]] = {
    "restart": lambda a: [
        a(Stopped, "d-1", reason="restart requested"),
        a(Running, "d-1"),
        a(ServiceRestarted, "d-1", step="serve", restarts=1),
        a(Ack, cmd="c-restart", op="restart", ok=True),
    ],
    "healthy replacement": lambda a: replace_story(a, healthy=True),
    "rollback": lambda a: replace_story(a, healthy=False),
    "failed rollback": lambda a: replace_story(a, healthy=False, restored=False),
}


def folded(events: list[Event]) -> tuple[dict[str, Deployment], dict[str, OperatorCommand]]:
    start = [deployment("d-1"), deployment("d-2", "sent")]
    timed = [(event, 100.0) for event in events]  # one receipt time: only the order differs
    return replay(start, [restart()], timed)


@pytest.mark.parametrize("story", sorted(STORIES))
def test_every_event_twice_folds_as_once(story: str) -> None:
    events = STORIES[story](Agent())
    twice = [copy for event in events for copy in (event, event)]
    assert folded(twice) == folded(events)


@pytest.mark.parametrize("story", sorted(STORIES))
def test_an_earlier_event_coming_again_after_later_ones_changes_nothing(story: str) -> None:
    events = STORIES[story](Agent())
    expected = folded(events)
    for late, at in itertools.product(range(len(events)), range(len(events) + 1)):
        if at > late + 1:
            resent = [*events[:at], events[late], *events[at:]]
            assert folded(resent) == expected, f"event {late} again after {at}"


def test_a_newer_event_before_an_older_one_wins() -> None:
    agent = Agent()
    stopped, running = agent(Stopped, "d-1", reason="restart requested"), agent(Running, "d-1")
    final, _ = folded([running, stopped])
    assert final["d-1"].state == "running"
    events = replace_story(agent, healthy=False)
    failed, rolled = events[-2], events[-1]
    final, _ = folded([*events[:-2], rolled, failed])
    assert (final["d-1"].state, final["d-2"].state) == ("running", "rolled-back")


def test_a_new_event_stream_of_the_agent_is_taken_in_its_own_order() -> None:
    """A reinstalled agent (a new outbox: a new ``src``, ``seq`` from 1) is heard too."""
    world = World(deployment("d-1"))
    world.take(world.agent(Stopped, "d-1", reason="agent stopping"))
    world.take(Agent(src="b2c4")(Running, "d-1"))
    assert world.state("d-1") == "running"


def test_a_pending_command_restored_at_a_start_is_known_as_sent_there() -> None:
    book = DeploymentBook(ManualClock(), commands=[restart()])
    ack = Ack(env=ENV, seq=1, src="a1f3", cmd="c-restart", op="restart", ok=True)
    assert book.stranger(ack) == ""
    assert book.on_event(ack).commands[0].state == "done"
