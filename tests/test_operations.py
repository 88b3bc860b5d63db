"""What the controller does about statuses, events, requests and time, as effects (pure:
a manual clock, the real presence core, no broker, no database)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from edgeplane.controller.core.deployments import SENT_GRACE
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.operations import Effects, Operations
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.core.records import Forgotten
from edgeplane.controller.errors import RequestRefused
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import COMMAND, EVENT
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Cancel,
    Cancelled,
    Command,
    CommandRejected,
    Deploy,
    EnvView,
    Event,
    Expired,
    Failed,
    OfflineStatus,
    OnlineStatus,
    Overridden,
    Preflight,
    Retire,
    Running,
    Succeeded,
    Update,
)
from edgeplane.shared.rpc import (
    DeployRequest,
    EnvCreate,
    EnvForget,
    EnvRestart,
    EnvRetire,
    EnvUpdate,
)
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Requires, Step, Workflow

ROOT = TopicRoot("t/edgeplane/v1")
FLOW = Workflow(name="inspect", version="1.0", steps=[Step(name="s", run=["true"])])


class World:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.presence = Presence(self.clock, FlapDetector(600, 6, 2), IdentityWatch(600, 300))
        self.ops = Operations(ROOT, self.clock, self.presence, command_ttl=120)

    def create(self, env: str) -> None:
        self.ops.create(EnvCreate(id=env, stage="dev", location="lab", purpose="test"))

    def online(self, env: str, bdseq: int = 1, **fields: Any) -> Effects:
        status = OnlineStatus(env=env, bdseq=bdseq, seq=0, interval=10, boot="b", **fields)
        judgement = self.presence.on_status(status)
        came = any(t.to_status == "online" for t in judgement.transitions)
        return self.ops.after_status(status, came)

    def offline(self, env: str, bdseq: int = 1) -> None:
        self.presence.on_status(OfflineStatus(env=env, bdseq=bdseq, reason="connection-lost"))


def commands(effects: Effects, env: str) -> list[Command]:
    """The commands for ``env``: each for that environment, with an expiry, marked for the
    shell to sign."""
    outgoing = [o for o in effects.outgoing if o.topic == ROOT.cmd(env)]
    assert all(o.command for o in outgoing), "every command is signed before it goes out"
    decoded = [COMMAND.decode(o.payload) for o in outgoing]
    assert all(c.env == env and c.expires is not None for c in decoded)
    return decoded


def test_an_unregistered_agents_events_are_logged_but_change_nothing() -> None:
    world = World()
    world.online("stray")
    event = Accepted(env="stray", seq=1, src="s", dep="d-x", workflow="w", version="1")
    effects = world.ops.on_event(event)
    assert effects is not None
    assert [entry.event for entry in effects.writes.events] == [event]
    assert effects.writes.deployments == []
    assert world.ops.on_event(event) is None  # the second time: a duplicate
    assert world.ops.seen.duplicates == 1


def test_answers_to_the_commands_sent_to_an_environment_are_its_own_and_no_one_elses() -> None:
    world = World()
    for env in ("edge-a", "edge-b"):
        world.create(env)
        world.online(env)
    _, restart = world.ops.restart(EnvRestart(id="edge-a"))
    [command] = commands(restart, "edge-a")
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW))
    ack = Ack(env="edge-a", seq=1, cmd=command.id, op="restart", ok=True)
    assert world.ops.stranger(ack) == ""
    refused = CommandRejected(env="edge-a", seq=2, dep=info.id, cmd=info.cmd, reason="no")
    assert world.ops.stranger(refused) == ""
    # the same ids, from B's own topic
    from_b: list[Event] = [msgspec.structs.replace(ack, env="edge-b"),
                           msgspec.structs.replace(refused, env="edge-b"),
                           Expired(env="edge-b", seq=3, dep=info.id)]  # fmt: skip
    assert [world.ops.stranger(event) for event in from_b] == [
        f"no command {command.id!r} was sent to edge-b",
        f"no deployment {info.id!r} was sent to edge-b",
        f"no deployment {info.id!r} was sent to edge-b",
    ]
    # a command sent by another path (the command keys' trust) is noted by it
    world.ops.issued("edge-b", "c-trust")
    assert world.ops.stranger(Ack(env="edge-b", seq=4, cmd="c-trust", op="trust", ok=True)) == ""


def test_views_say_registered_and_a_retired_environment_has_none() -> None:
    world = World()
    world.create("edge-a")
    view = EnvView(env="edge-a", status="online", since=1.0)
    assert world.ops.public_view(view) == view
    stray = world.ops.public_view(EnvView(env="stray", status="online", since=1.0))
    assert stray is not None
    assert stray.registered is False
    world.ops.retire(EnvRetire(id="edge-a"))
    assert world.ops.public_view(view) is None
    expected = world.ops.expected_views()
    assert expected["edge-a"] is None
    # created with the default project's first record, never seen
    since = world.clock.time()
    assert expected["default-cloud"] == EnvView(env="default-cloud", status="unknown", since=since)


def test_inventory_is_kept_until_the_agent_reports_a_new_one() -> None:
    world = World()
    world.create("edge-a")
    first = world.online("edge-a", models={"m": ["1.0"]})
    assert [dict(i.models) for i in first.writes.inventory] == [{"m": ["1.0"]}]
    plain = world.online("edge-a")  # a heartbeat without inventory: nothing to write
    assert plain.writes.inventory == []
    assert world.ops.env_info("edge-a").models == {"m": ["1.0"]}


def test_a_queued_deployment_goes_out_on_the_next_online_transition_only() -> None:
    world = World()
    world.create("edge-a")
    info, effects = world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW, when_online=True))
    assert info.state == "queued"
    assert effects.outgoing == []
    went = world.online("edge-a")
    [command] = commands(went, "edge-a")
    assert isinstance(command, Deploy)
    assert command.dep == info.id
    assert command.expires == world.clock.time() + 120
    assert [d.state for d in went.writes.deployments] == ["sent"]
    assert went.writes.urgent
    assert commands(world.online("edge-a"), "edge-a") == []  # already sent


def test_the_ttl_expires_a_queued_deployment_with_an_event_of_the_controllers_own() -> None:
    world = World()
    world.create("edge-a")
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW, when_online=True, ttl=60))
    world.clock.advance(59)
    assert world.ops.tick().outgoing == []
    world.clock.advance(1)
    effects = world.ops.tick()
    assert [d.state for d in effects.writes.deployments] == ["expired"]
    [out] = effects.outgoing
    event = EVENT.decode(out.payload)
    assert (out.topic, event.src, event.seq, event.dep) == (
        ROOT.events("edge-a"), "controller", 1, info.id,
    )  # fmt: skip
    assert [entry.event for entry in effects.writes.events] == [event]


def test_a_preflight_that_checked_nothing_fails_the_deployment_with_an_event_of_its_own() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    needy = msgspec.structs.replace(FLOW, requires=Requires(secrets=["CAMERA_TOKEN"]))
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=needy))
    mine: dict[str, Any] = {"env": "edge-a", "src": "fake", "dep": info.id, "cmd": info.cmd}
    effects = world.ops.on_event(Preflight(seq=1, ok=True, **mine))
    assert effects is not None
    [failed] = effects.writes.deployments
    assert (failed.state, failed.reason) == (
        "failed",
        "preflight did not check: secret CAMERA_TOKEN",
    )
    [out] = effects.outgoing
    told = EVENT.decode(out.payload)
    assert isinstance(told, Failed)
    assert (out.topic, told.src, told.dep, told.reason) == (
        ROOT.events("edge-a"), "controller", info.id, failed.reason,
    )  # fmt: skip
    later = world.ops.on_event(Succeeded(seq=2, **mine))
    assert later is not None
    assert later.writes.deployments == []  # a failed deployment stays failed


def test_a_retired_environment_coming_online_is_told_to_retire() -> None:
    world = World()
    world.create("edge-a")
    _, effects = world.ops.retire(EnvRetire(id="edge-a"))
    assert [o.payload for o in effects.outgoing if o.topic == ROOT.view("edge-a")] == [b""]
    assert commands(effects, "edge-a") == []  # offline: nobody to tell now
    [command] = commands(world.online("edge-a"), "edge-a")
    assert isinstance(command, Retire)


def test_update_sends_settings_only_to_an_online_agent() -> None:
    world = World()
    world.create("edge-a")
    with pytest.raises(RequestRefused) as caught:
        world.ops.update(EnvUpdate(id="edge-a", interval=5))
    assert caught.value.code == "offline"
    _, labels_only = world.ops.update(EnvUpdate(id="edge-a", labels={"a": "b"}))
    assert labels_only.outgoing == []
    world.online("edge-a")
    request = EnvUpdate(id="edge-a", interval=5, config={"log_level": "debug"})
    info, effects = world.ops.update(request)
    [command] = commands(effects, "edge-a")
    assert isinstance(command, Update)
    assert (command.interval, command.config, command.labels) == (
        5, {"log_level": "debug"}, {"a": "b"},
    )  # fmt: skip
    assert info.labels == {"a": "b"}
    world.offline("edge-a")
    with pytest.raises(RequestRefused, match="offline since"):
        world.ops.update(request)


def refusal(call: Any, *args: Any) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        call(*args)
    return caught.value


def test_a_stopped_ghost_is_forgotten_entirely_its_retained_topics_cleared() -> None:
    world = World()
    world.online("ghost", models={"m": ["1"]})
    world.ops.on_event(Accepted(env="ghost", seq=1, src="s", dep="d-x", workflow="w", version="1"))
    world.offline("ghost")
    info, effects = world.ops.forget(EnvForget(id="ghost"))
    assert (info.id, info.registered, info.status) == ("ghost", False, "offline")
    assert effects.writes.forgotten == [Forgotten("ghost", history=True)]
    assert effects.writes.urgent
    cleared = {(o.topic, o.payload, o.retain) for o in effects.outgoing}
    assert cleared == {(ROOT.view("ghost"), b"", True), (ROOT.status("ghost"), b"", True)}
    assert world.presence.get("ghost") is None
    assert not world.ops.knows("ghost")
    assert "ghost" not in world.ops.expected_views()
    assert refusal(world.ops.env_info, "ghost").code == "not-found"
    assert refusal(world.ops.forget, EnvForget(id="ghost")).code == "not-found"
    # It comes back as new: its old event is not taken for a duplicate.
    world.online("ghost")
    event = Accepted(env="ghost", seq=1, src="s", dep="d-x", workflow="w", version="1")
    assert world.ops.on_event(event) is not None


def test_a_flood_of_forgotten_ghosts_leaves_nothing_in_memory() -> None:
    world = World()
    for number in range(200):
        env = f"ghost-{number}"
        world.online(env, models={"m": ["1"]})
        world.ops.on_event(Accepted(env=env, seq=1, src="s", dep="d", workflow="w", version="1"))
        world.offline(env)
        world.ops.forget(EnvForget(id=env))
    assert len(world.presence) == 0
    assert len(world.ops.seen) == 0
    assert world.presence.seconds_until_next() is None  # no deadline, flap or identity timer
    assert world.ops.env_list() == []


def test_forget_is_refused_for_an_active_record_and_for_a_connected_ghost() -> None:
    world = World()
    world.create("edge-a")
    registered = refusal(world.ops.forget, EnvForget(id="edge-a"))
    assert registered.code == "exists"
    assert "edgeplane env retire edge-a" in registered.message
    world.online("ghost")
    connected = refusal(world.ops.forget, EnvForget(id="ghost"))
    assert connected.code == "online"
    assert "stop that agent" in connected.message
    assert world.presence.get("ghost") is not None  # nothing was dropped


def test_a_retired_environments_leftovers_are_forgotten_its_record_and_history_kept() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    world.offline("edge-a")
    world.ops.retire(EnvRetire(id="edge-a"))
    info, effects = world.ops.forget(EnvForget(id="edge-a"))
    assert (info.registered, info.status) == (True, "retired")
    assert effects.writes.forgotten == [Forgotten("edge-a", history=False)]
    assert ROOT.status("edge-a") in {o.topic for o in effects.outgoing}
    assert world.presence.get("edge-a") is None
    assert world.ops.env_info("edge-a").retired is not None  # the record stays
    world.ops.forget(EnvForget(id="edge-a"))  # again: nothing left, no harm


def test_retiring_a_ghost_names_env_forget() -> None:
    world = World()
    world.online("ghost")
    refused = refusal(world.ops.retire, EnvRetire(id="ghost"))
    assert refused.code == "not-found"
    assert "edgeplane env forget ghost" in refused.message
    assert "no environment 'nope'" in refusal(world.ops.retire, EnvRetire(id="nope")).message


def test_an_unknown_id_is_named_with_a_known_one_it_is_a_near_miss_of() -> None:
    world = World()
    world.create("prod-plant-vision")
    world.online("stray-gw")
    near = refusal(world.ops.env_info, "prod-plant-visoin")
    assert near.code == "not-found"
    assert near.message.startswith("no environment 'prod-plant-visoin' (did you mean "
                                   "'prod-plant-vision'?)")  # fmt: skip
    assert "did you mean 'stray-gw'" in refusal(world.ops.require_known, "stray-gv").message
    assert "did you mean" not in refusal(world.ops.require_known, "nope").message
    assert world.ops.knows("stray-gw")  # seen, without a record


def test_a_restart_is_pending_in_env_show_until_answered_or_unanswered_at_its_expiry() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    result, effects = world.ops.restart(EnvRestart(id="edge-a"))
    [stored] = effects.writes.commands
    assert (stored.id, stored.op, stored.state) == (result["cmd"], "restart", "pending")
    start = world.clock.time()
    [shown] = world.ops.env_info("edge-a").commands
    assert (shown.state, shown.sent, shown.expires) == ("pending", start, start + 120)
    world.clock.advance(120 + SENT_GRACE - 1)
    assert world.ops.tick().outgoing == []
    world.clock.advance(1)
    effects = world.ops.tick()
    [out] = effects.outgoing
    told = EVENT.decode(out.payload)
    assert isinstance(told, Expired)
    assert (told.src, told.cmd, told.dep) == ("controller", result["cmd"], "")
    [unanswered] = effects.writes.commands
    assert unanswered.state == "unanswered"
    [shown] = world.ops.env_info("edge-a").commands
    assert (shown.state, shown.answered) == ("unanswered", start + 120 + SENT_GRACE)
    late = Ack(env="edge-a", seq=1, src="a", cmd=result["cmd"], op="restart", ok=True)
    answered_late = world.ops.on_event(late)
    assert answered_late is not None
    assert answered_late.writes.commands == []  # its verdict is in: the next events tell


# --- taking back, forcing ---------------------------------------------------------------
SERVICE = Workflow(
    name="camera", version="1.0", kind="service", steps=[Step(name="serve", run=["x"])]
)


def make_flapping(world: World, env: str) -> None:
    bdseq = 0
    while not (record := world.presence.get(env)) or not record.flapping:
        bdseq += 1
        world.clock.advance(1)
        world.online(env, bdseq=bdseq)
        world.clock.advance(1)
        world.offline(env, bdseq=bdseq)
    world.clock.advance(1)
    world.online(env, bdseq=bdseq + 1)


def test_force_with_a_reason_sends_to_a_flapping_environment_and_records_it() -> None:
    world = World()
    world.create("edge-a")
    make_flapping(world, "edge-a")
    with pytest.raises(RequestRefused) as refused:
        world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW))
    assert refused.value.code == "flapping"
    with pytest.raises(RequestRefused) as no_reason:
        world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW, force=True, reason="  "))
    assert no_reason.value.code == "invalid"

    request = DeployRequest(env="edge-a", workflow=FLOW, force=True, reason="line stopped")
    info, effects = world.ops.deploy(request)
    assert (info.state, info.forced) == ("sent", "flapping: line stopped")
    assert [type(c).__name__ for c in commands(effects, "edge-a")] == ["Deploy"]
    [own] = [entry.event for entry in effects.writes.events]
    assert isinstance(own, Overridden)
    assert (own.src, own.dep, own.cmd, own.check, own.reason) == (
        "controller",
        info.id,
        info.cmd,
        "flapping",
        "line stopped",
    )
    assert effects.writes.deployments[-1].forced == "flapping: line stopped"
    published = [o for o in effects.outgoing if o.topic == ROOT.events("edge-a")]
    assert [EVENT.decode(o.payload) for o in published] == [own]


def test_force_on_a_steady_environment_records_no_override() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    info, effects = world.ops.deploy(
        DeployRequest(env="edge-a", workflow=FLOW, force=True, reason="just in case")
    )
    assert info.forced == ""
    assert effects.writes.events == []


def test_cancel_of_a_queued_deployment_ends_it_at_once_without_a_command() -> None:
    world = World()
    world.create("edge-a")
    queued, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW, when_online=True))
    result, effects = world.ops.cancel(queued.id)
    assert (result.cmd, result.deployment.state) == ("", "cancelled")
    assert commands(effects, "edge-a") == []
    assert world.ops.book.get(queued.id) is None
    assert commands(world.online("edge-a"), "edge-a") == []  # never sent


def test_cancel_of_a_running_deployment_sends_a_cancel_and_ends_on_the_agents_word() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=SERVICE))
    world.ops.on_event(Running(env="edge-a", seq=1, src="a", dep=info.id, cmd=info.cmd))
    result, effects = world.ops.cancel(info.id)
    [command] = commands(effects, "edge-a")
    assert isinstance(command, Cancel)
    assert (command.id, command.dep, command.workflow) == (result.cmd, info.id, "")
    assert result.deployment.state == "running"
    assert [c.op for c in world.ops.env_info("edge-a").commands] == ["cancel"]
    world.ops.on_event(
        Cancelled(env="edge-a", seq=2, src="a", dep=info.id, cmd=result.cmd, reason="stopped")
    )
    shown = world.ops.env_info("edge-a")
    assert shown.running == []
    assert [(c.op, c.state) for c in shown.commands] == [("cancel", "done")]


def test_cancel_needs_the_agent_online() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=FLOW))
    world.offline("edge-a")
    with pytest.raises(RequestRefused) as refused:
        world.ops.cancel(info.id)
    assert refused.value.code == "offline"
    assert "cannot cancel" in refused.value.message


def test_undeploy_names_the_workflow_to_the_agent_and_refuses_one_not_running() -> None:
    world = World()
    world.create("edge-a")
    world.online("edge-a")
    with pytest.raises(RequestRefused) as nothing:
        world.ops.undeploy("edge-a", "camera")
    assert nothing.value.code == "not-running"
    info, _ = world.ops.deploy(DeployRequest(env="edge-a", workflow=SERVICE))
    world.ops.on_event(Running(env="edge-a", seq=1, src="a", dep=info.id, cmd=info.cmd))
    result, effects = world.ops.undeploy("edge-a", "camera")
    [command] = commands(effects, "edge-a")
    assert isinstance(command, Cancel)
    assert (command.dep, command.workflow) == (info.id, "camera")
    assert result.deployment.id == info.id
    assert [c.op for c in world.ops.env_info("edge-a").commands] == ["undeploy"]
    with pytest.raises(RequestRefused) as unknown:
        world.ops.undeploy("edge-zz", "camera")
    assert unknown.value.code == "not-found"
