"""Critical workflows in the core: the checks (online, steady, validated) and the
deployments that wait for their validation (pure: a manual clock, the real presence core)."""

from __future__ import annotations

import msgspec
import pytest

from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.flapping import FlapDetector
from edgeplane.controller.core.identity import IdentityWatch
from edgeplane.controller.core.operations import Effects, Operations
from edgeplane.controller.core.presence import Presence
from edgeplane.controller.errors import RequestRefused
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import COMMAND, EVENT
from edgeplane.shared.messages import Check, Deploy, Failed, OfflineStatus, OnlineStatus, Preflight
from edgeplane.shared.rpc import DeployRequest, EnvCreate
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Requires, Step, Workflow

ROOT = TopicRoot("t/edgeplane/v1")
ENV = "edge-1"
INTERVAL = 5.0
FLOW = Workflow(
    name="interlock",
    version="2.0",
    steps=[Step(name="s", run=["true"])],
    requires=Requires(secrets=["TOKEN"]),
    critical=True,
)


class World:
    def __init__(self, *, max_age: float = 600.0, flap_high: int = 6) -> None:
        self.clock = ManualClock()
        self.presence = Presence(
            self.clock, FlapDetector(600, flap_high, 1), IdentityWatch(600, 300)
        )
        self.ops = Operations(
            ROOT, self.clock, self.presence, command_ttl=120, validation_max_age=max_age
        )
        self.bdseq = 1
        self.seq = 0
        self.agent_seq = 0
        self.ops.create(EnvCreate(id=ENV, stage="dev", location="lab", purpose="test"))

    def beats(self, count: int, *, skip: int = 0) -> Effects:
        """``count`` heartbeats, one interval apart; ``skip`` seq numbers left out first."""
        effects = Effects()
        self.seq += skip
        for _ in range(count):
            self.clock.advance(INTERVAL)
            status = OnlineStatus(
                env=ENV, bdseq=self.bdseq, seq=self.seq, interval=INTERVAL, boot="b"
            )
            self.seq += 1
            judgement = self.presence.on_status(status)
            came = any(t.to_status == "online" for t in judgement.transitions)
            effects.extend(self.ops.after_status(status, came))
        return effects

    def offline(self) -> None:
        self.presence.on_status(OfflineStatus(env=ENV, bdseq=self.bdseq, reason="shutdown"))
        self.bdseq += 1
        self.seq = 0

    def preflight(self, dep: str, *, ok: bool = True) -> Effects:
        self.agent_seq += 1
        check = Check(kind="secret", name="TOKEN", ok=ok, detail="" if ok else "missing")
        event = Preflight(
            env=ENV, seq=self.agent_seq, src="agent", dep=dep, ok=ok, checks=[check],
            dry_run=True,
        )  # fmt: skip
        effects = self.ops.on_event(event)
        assert effects is not None
        return effects

    def validate(self, workflow: Workflow = FLOW, *, ok: bool = True) -> str:
        info, _ = self.ops.deploy(DeployRequest(env=ENV, workflow=workflow, dry_run=True))
        self.preflight(info.id, ok=ok)
        return info.id


def deploys(effects: Effects) -> list[Deploy]:
    sent = [COMMAND.decode(o.payload) for o in effects.outgoing if o.topic == ROOT.cmd(ENV)]
    return [c for c in sent if isinstance(c, Deploy)]


def refusal(world: World, request: DeployRequest) -> RequestRefused:
    with pytest.raises(RequestRefused) as refused:
        world.ops.deploy(request)
    return refused.value


def test_a_critical_workflow_without_a_validation_is_refused_naming_it() -> None:
    world = World()
    world.beats(6)
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW))
    assert refused.code == "not-validated"
    assert "validation missing" in refused.message
    assert "interlock 2.0" in refused.message
    # a workflow not marked critical goes as ever, and so does the dry run itself
    plain = msgspec.structs.replace(FLOW, critical=False)
    assert world.ops.deploy(DeployRequest(env=ENV, workflow=plain))[0].state == "sent"
    assert world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW, dry_run=True))[0].dry_run


def test_a_passing_dry_run_of_the_version_validates_it_until_it_is_too_old() -> None:
    world = World(max_age=60.0)
    world.beats(6)
    dry = world.validate()
    info, effects = world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW))
    assert info.state == "sent"
    assert info.validation == dry
    assert [d.dep for d in deploys(effects)] == [info.id]
    world.beats(13)  # 65 s later, steady all along
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW))
    assert refused.code == "not-validated"
    assert "validation too old" in refused.message
    assert "allowed (--validation-max-age)" in refused.message


def test_a_failed_or_other_versions_validation_does_not_count() -> None:
    world = World()
    world.beats(6)
    world.validate(msgspec.structs.replace(FLOW, version="1.9"))
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW))
    assert refused.code == "not-validated"
    assert "of another version" in refused.message
    world.validate(ok=False)
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW))
    assert refused.code == "not-validated"
    assert "validation failed" in refused.message
    assert "secret TOKEN: missing" in refused.message


def test_missed_heartbeats_and_flapping_make_an_environment_unsteady() -> None:
    world = World(flap_high=3)
    world.beats(6)
    world.validate()
    world.beats(1, skip=2)  # two seq numbers never came
    assert world.ops.env_info(ENV).missed_heartbeats == 2
    assert not world.ops.env_info(ENV).steady
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW))
    assert refused.code == "unsteady"
    assert "missed 2 heartbeats in the last 5 intervals" in refused.message
    world.beats(6)  # the gap left the window
    assert world.ops.env_info(ENV).steady
    assert world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW))[0].state == "sent"
    for _ in range(2):  # offline and back twice: flapping
        world.offline()
        world.beats(1)
    assert world.presence.get(ENV) is not None
    assert world.ops.env_info(ENV).flapping
    assert refusal(world, DeployRequest(env=ENV, workflow=FLOW)).code == "flapping"
    forced = DeployRequest(env=ENV, workflow=FLOW, force=True, reason="hotfix")
    refused = refusal(world, forced)  # --force passes the gate, never the critical checks
    assert refused.code == "unsteady"
    assert "flapping" in refused.message


def test_a_critical_workflow_is_never_queued_for_an_offline_environment() -> None:
    world = World()
    world.beats(6)
    world.validate()
    world.offline()
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW, when_online=True))
    assert refused.code == "offline"
    assert "never queued" in refused.message


def test_validate_first_sends_the_dry_run_and_the_deployment_after_it_passes() -> None:
    world = World()
    world.beats(6)
    request = DeployRequest(env=ENV, workflow=FLOW, validate_first=True)
    info, effects = world.ops.deploy(request)
    [dry_command] = deploys(effects)
    assert dry_command.dry_run
    assert dry_command.dep != info.id
    assert info.state == "queued"
    assert info.waiting
    assert info.validation == dry_command.dep
    waiting = world.ops.book.get(info.id)
    assert waiting is not None
    assert waiting.after == dry_command.dep
    assert world.ops.book.queued_for(ENV) == []  # not sent by a coming online
    released = world.preflight(dry_command.dep)
    [sent] = deploys(released)
    assert sent.dep == info.id
    assert not sent.dry_run
    stored = next(d for d in released.writes.deployments if d.id == info.id)
    assert stored.state == "sent"
    assert stored.validation == dry_command.dep
    assert not stored.after


def test_validate_first_ends_failed_naming_the_validation_when_the_dry_run_fails() -> None:
    world = World()
    world.beats(6)
    info, effects = world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW, validate_first=True))
    [dry_command] = deploys(effects)
    failed = world.preflight(dry_command.dep, ok=False)
    assert deploys(failed) == []
    ended = next(d for d in failed.writes.deployments if d.id == info.id)
    assert ended.state == "failed"
    assert f"validation {dry_command.dep} did not pass" in ended.reason
    told = [EVENT.decode(o.payload) for o in failed.outgoing if o.topic == ROOT.events(ENV)]
    assert any(isinstance(e, Failed) and e.dep == info.id for e in told)  # deploy --wait sees it


def test_validate_first_refuses_an_unsteady_environment_before_the_dry_run() -> None:
    world = World()
    world.beats(3)
    world.beats(1, skip=2)
    refused = refusal(world, DeployRequest(env=ENV, workflow=FLOW, validate_first=True))
    assert refused.code == "unsteady"
    with pytest.raises(RequestRefused, match="validate_first"):
        world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW, validate_first=True, dry_run=True))


def test_a_waiting_deployment_is_cancelled_at_once_and_its_dry_run_then_sends_nothing() -> None:
    world = World()
    world.beats(6)
    info, effects = world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW, validate_first=True))
    [dry_command] = deploys(effects)
    result, _ = world.ops.cancel(info.id)
    assert result.deployment.state == "cancelled"
    assert result.cmd == ""
    assert deploys(world.preflight(dry_command.dep)) == []


def test_a_restarted_controller_releases_a_deployment_whose_dry_run_ended_meanwhile() -> None:
    world = World()
    world.beats(6)
    info, effects = world.ops.deploy(DeployRequest(env=ENV, workflow=FLOW, validate_first=True))
    [dry_command] = deploys(effects)
    passed = world.preflight(dry_command.dep)
    dry_run = next(d for d in passed.writes.deployments if d.id == dry_command.dep)
    waiting: Deployment | None = next(d for d in effects.writes.deployments if d.id == info.id)
    assert waiting is not None
    assert waiting.waiting
    # what a store would give a controller that stopped before it released the waiting one
    again = Operations(
        ROOT,
        world.clock,
        world.presence,
        command_ttl=120,
        records=list(world.ops.registry),
        deployments=[waiting],
        issued=[(ENV, dry_run.id, dry_run.cmd), (ENV, waiting.id, "")],
        dry_runs=[dry_run],
    )
    [sent] = deploys(again.after_sync())
    assert sent.dep == info.id
