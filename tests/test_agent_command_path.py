"""The command path without MQTT: verify -> decode -> dedupe -> expiry -> dispatch, every
answer an event in a real outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeplane.edge_agent.commands import ENROL_HINT, CommandHandler, MemoryCommandLog, RateLimit
from edgeplane.edge_agent.errors import ExecutionError
from edgeplane.edge_agent.outbox import Outbox
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.codec import EVENT, encode
from edgeplane.shared.command_signature import CommandSigner
from edgeplane.shared.messages import (
    Ack,
    Command,
    CommandRejected,
    Deploy,
    Event,
    Expired,
    Ping,
    Pong,
    Retire,
    Update,
    WorkflowProcess,
    replace,
)
from edgeplane.shared.workflow import Step, Workflow
from tests.support.command_key import OTHER_SIGNER, TEST_SIGNER, signed

ENV = "dev-a"
WORKFLOW = Workflow(name="wf", version="1", steps=[Step(name="s", run=["true"])])
LATER = ManualClock().time() + 3600.0  # the expiry of the commands below


class RecordingExecutor:
    """Stands in for the executor: records what the command path handed it."""

    def __init__(self, refuse: str = "") -> None:
        self.submitted: list[Deploy] = []
        self.restarts: list[tuple[str, str]] = []
        self.refuse = refuse

    def submit(self, command: Deploy) -> None:
        if self.refuse:
            raise ExecutionError(self.refuse)
        self.submitted.append(command)

    def restart(self, workflow: str = "", cmd_id: str = "") -> None:
        self.restarts.append((workflow, cmd_id))

    loaded = False
    running: list[WorkflowProcess] = []  # what processes() says once loaded

    def processes(self) -> list[WorkflowProcess]:
        return self.running


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: ManualClock) -> Outbox:
    return Outbox(tmp_path, ENV, clock=clock)


def handler_for(outbox: Outbox, clock: ManualClock, **kwargs: object) -> CommandHandler:
    kwargs.setdefault("command_keys", [TEST_SIGNER.public_key])
    return CommandHandler(ENV, clock, outbox, commands=outbox, **kwargs)  # type: ignore[arg-type]


def seal(message: Command) -> bytes:
    """``message`` as the controller sends it to this agent: for ``ENV``, with an expiry,
    signed."""
    if message.expires is None:
        message = replace(message, expires=LATER)
    return signed(message, ENV)


def sent(outbox: Outbox) -> list[Event]:
    return [EVENT.decode(payload) for _, payload in outbox.pending()]


def command(kind: str, cmd_id: str, **fields: object) -> bytes:
    fields = {"env": ENV, "expires": LATER, **fields}
    return signed(json.dumps({"type": kind, "id": cmd_id, **fields}))


def test_ping_is_answered_with_a_pong_in_the_outbox(outbox: Outbox, clock: ManualClock) -> None:
    handler = handler_for(outbox, clock)
    (pong,) = handler.handle(command("ping", "c1"))
    assert isinstance(pong, Pong)
    assert (pong.env, pong.seq, pong.cmd, pong.src) == (ENV, 1, "c1", outbox.src)
    assert sent(outbox) == [pong]


def test_a_command_delivered_twice_runs_once_even_after_a_restart(
    tmp_path: Path, outbox: Outbox, clock: ManualClock
) -> None:
    executor = RecordingExecutor()
    deploy = seal(Deploy(id="d1", dep="dep-1", workflow=WORKFLOW))
    handler = handler_for(outbox, clock, executor=executor)
    assert handler.handle(deploy) == []
    (again,) = handler.handle(deploy)
    outbox.close()
    restarted = Outbox(tmp_path, ENV, clock=clock)
    (after_restart,) = handler_for(restarted, clock, executor=executor).handle(deploy)
    assert [c.dep for c in executor.submitted] == ["dep-1"]
    assert handler.duplicates == 1
    for event in (again, after_restart):
        assert isinstance(event, CommandRejected)
        assert event.reason.startswith("replayed: command 'd1' was taken before")
        assert (event.cmd, event.dep) == ("", ""), "the deployment it ran is not failed"


def test_an_expired_command_is_reported_and_not_run(outbox: Outbox, clock: ManualClock) -> None:
    executor = RecordingExecutor()
    handler = handler_for(outbox, clock, executor=executor)
    expires = clock.time() - 42.0
    deploy = Deploy(id="d1", dep="dep-1", workflow=WORKFLOW, expires=expires)
    (event,) = handler.handle(seal(deploy))
    assert isinstance(event, Expired)
    assert (event.cmd, event.dep) == ("d1", "dep-1")
    assert event.reason == "arrived 42.0 s after it expired"
    assert executor.submitted == []
    (pong,) = handler.handle(command("ping", "p1", expires=clock.time() + 5))
    assert isinstance(pong, Pong), "in time: answered"


def test_deploy_goes_to_the_executor_and_a_refusal_is_reported(
    outbox: Outbox, clock: ManualClock
) -> None:
    busy = RecordingExecutor(refuse="the executor is closed")
    handler = handler_for(outbox, clock, executor=busy)
    (event,) = handler.handle(seal(Deploy(id="d1", dep="dep-1", workflow=WORKFLOW)))
    assert isinstance(event, CommandRejected)
    assert event.dep == "dep-1"
    assert "the executor is closed" in event.reason

    (event,) = handler_for(outbox, clock).handle(
        seal(Deploy(id="d2", dep="dep-2", workflow=WORKFLOW))
    )
    assert isinstance(event, CommandRejected)
    assert event.reason == "this agent cannot run workflows"


def test_update_is_acknowledged_with_the_callbacks_verdict(
    outbox: Outbox, clock: ManualClock
) -> None:
    updates: list[Update] = []

    def on_update(update: Update) -> tuple[bool, str]:
        updates.append(update)
        return (update.interval is not None, "applied: interval")

    handler = handler_for(outbox, clock, on_update=on_update)
    (ack,) = handler.handle(command("update", "u1", interval=5))
    assert isinstance(ack, Ack)
    assert (ack.op, ack.ok, ack.cmd, ack.detail) == ("update", True, "u1", "applied: interval")
    (ack,) = handler.handle(command("update", "u2", config={"x": "1"}))
    assert isinstance(ack, Ack)
    assert not ack.ok
    assert [u.id for u in updates] == ["u1", "u2"]


def test_restart_goes_to_the_executor_or_is_refused_without_one(
    outbox: Outbox, clock: ManualClock
) -> None:
    executor = RecordingExecutor()
    assert (
        handler_for(outbox, clock, executor=executor).handle(
            command("restart", "r1", workflow="wf")
        )
        == []
    )
    assert executor.restarts == [("wf", "r1")]
    (ack,) = handler_for(outbox, clock).handle(command("restart", "r2"))
    assert isinstance(ack, Ack)
    assert (ack.op, ack.ok) == ("restart", False)


def test_after_retire_every_command_is_rejected(outbox: Outbox, clock: ManualClock) -> None:
    retired: list[Retire] = []
    handler = handler_for(outbox, clock, on_retire=retired.append)
    assert handler.handle(command("retire", "bye")) == []
    assert [r.id for r in retired] == ["bye"]
    (event,) = handler.handle(command("ping", "p1"))
    assert isinstance(event, CommandRejected)
    assert event.reason.startswith("retired")


TOO_LARGE = signed(b'{"type":"ping","id":"' + b"x" * 50_000 + b'"}')


@pytest.mark.parametrize(
    ("payload", "reason", "cmd"),
    [
        (b"garbage", "not-json", ""),
        (b"", "empty", ""),
        (b"[1,2]", "unsigned", ""),
        (b'{"type":"signed","key":1}', "schema", ""),
        (signed(b"garbage"), "not-json", ""),
        (signed(b""), "empty", ""),
        (signed(b'{"type":"ping"}'), "schema", ""),
        (signed(b'{"type":"reboot","id":"r1"}'), "unknown-command", "r1"),
        (signed(b'{"type":"deploy","id":"d1","dep":"x"}'), "schema", "d1"),
        (TOO_LARGE, "too-large", ""),
        (signed(b"\xff\xfe\x00"), "not-json", ""),
    ],
)
def test_bad_commands_are_rejected_naming_the_reason(
    outbox: Outbox, clock: ManualClock, payload: bytes, reason: str, cmd: str
) -> None:
    handler = handler_for(outbox, clock)
    (event,) = handler.handle(payload)
    assert isinstance(event, CommandRejected)
    assert event.reason.startswith(reason + ":")
    assert event.cmd == cmd
    assert len(event.reason) <= 256
    assert handler.rejected[reason] == 1
    assert sent(outbox) == [event], "rejections are durable events too"


def test_a_flood_of_garbage_is_answered_at_a_bounded_rate_and_counted(
    outbox: Outbox, clock: ManualClock
) -> None:
    handler = handler_for(outbox, clock, answer_limit=RateLimit(clock, rate=5, burst=10))
    answers = [handler.handle(b"garbage") for _ in range(100)]
    assert sum(len(a) for a in answers) == 10
    assert handler.rejected["not-json"] == 100
    assert handler.unanswered == 90
    clock.advance(1.0)
    assert sum(len(handler.handle(b"garbage")) for _ in range(100)) == 5
    assert handler.handle(command("ping", "p")) != [], "pings are never throttled"
    assert len(outbox) == 16


def test_the_memory_command_log_keeps_the_newest_ids() -> None:
    memory = MemoryCommandLog(keep=2)
    for cmd_id in ("a", "b", "c"):
        memory.remember(cmd_id)
    assert [memory.seen(c) for c in ("a", "b", "c")] == [False, True, True]


# --- authentication ---------------------------------------------------------------------------
def tampered(payload: bytes) -> bytes:
    """``payload`` with one character of its signed part changed."""
    envelope = json.loads(payload)
    text = envelope["signed"]
    envelope["signed"] = text[:10] + ("A" if text[10] != "A" else "B") + text[11:]
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (json.dumps({"type": "ping", "id": "c-1", "env": ENV, "expires": LATER}), "unsigned"),
        (encode(Deploy(id="c-1", dep="d-1", workflow=WORKFLOW, env=ENV)), "unsigned"),
        (signed(Ping(id="c-1", expires=LATER), ENV, signer=OTHER_SIGNER), "unknown-key"),
        (tampered(signed(Ping(id="c-1", expires=LATER), ENV)), "bad-signature"),
        (signed(Ping(id="c-1", expires=LATER), "dev-b"), "wrong-env"),
        (signed(Ping(id="c-1", expires=LATER)), "wrong-env"),
        (signed(encode(Ping(id="c-1", env=ENV))), "no-expiry"),
    ],
)
def test_a_command_not_authentic_for_this_agent_is_refused_and_names_no_command(
    outbox: Outbox, clock: ManualClock, payload: bytes | str, reason: str
) -> None:
    executor = RecordingExecutor()
    handler = handler_for(outbox, clock, executor=executor)
    raw = payload.encode() if isinstance(payload, str) else payload
    (event,) = handler.handle(raw)
    assert isinstance(event, CommandRejected)
    assert event.reason.startswith(reason + ": ")
    assert (event.cmd, event.dep) == ("", ""), "a forged payload cannot fail a real deployment"
    assert handler.rejected[reason] == 1
    assert executor.submitted == []
    (pong,) = handler.handle(seal(Ping(id="c-1")))
    assert isinstance(pong, Pong), "the id of a refused command is not taken"


def test_a_pong_says_what_runs_once_the_executor_is_loaded(
    outbox: Outbox, clock: ManualClock
) -> None:
    executor = RecordingExecutor()
    executor.running = [WorkflowProcess(workflow="wf", dep="d-1", kind="service", restarts=2)]
    handler = handler_for(outbox, clock, executor=executor)
    (pong,) = handler.handle(seal(Ping(id="c-1")))
    assert isinstance(pong, Pong)
    assert (pong.processes, pong.executor) == ([], False)  # never loaded: not asked
    executor.loaded = True
    (pong,) = handler.handle(seal(Ping(id="c-2")))
    assert isinstance(pong, Pong)
    assert pong.executor is True
    assert pong.processes == executor.running
    assert sent(outbox)[-1] == pong


def test_an_agent_without_a_command_key_runs_nothing_and_says_how_to_enrol(
    outbox: Outbox, clock: ManualClock
) -> None:
    handler = handler_for(outbox, clock, command_keys=[])
    (event,) = handler.handle(seal(Ping(id="c-1")))
    assert isinstance(event, CommandRejected)
    assert event.reason == f"no-command-key: {ENROL_HINT}"
    assert "command_key = " in event.reason


def test_while_a_key_rotates_both_keys_are_trusted(outbox: Outbox, clock: ManualClock) -> None:
    new = CommandSigner(b"edgeplane-tests-the-rotated-key3")
    handler = handler_for(outbox, clock, command_keys=[TEST_SIGNER.public_key, new.public_key])
    for signer, cmd_id in ((TEST_SIGNER, "c-old"), (new, "c-new")):
        (pong,) = handler.handle(signed(Ping(id=cmd_id, expires=LATER), ENV, signer=signer))
        assert isinstance(pong, Pong)
        assert pong.cmd == cmd_id


def test_a_command_id_is_kept_until_its_command_expires(tmp_path: Path, clock: ManualClock) -> None:
    """Past the count of ids kept, an id whose command has not expired is still kept."""
    outbox = Outbox(tmp_path, ENV, clock=clock, seen_keep=10)
    handler = handler_for(outbox, clock)
    handler.handle(seal(Ping(id="c-long", expires=clock.time() + 86_400)))
    for n in range(300):
        handler.handle(seal(Ping(id=f"c-{n}", expires=clock.time() + 1)))
        clock.advance(1.0)
    (event,) = handler.handle(seal(Ping(id="c-long", expires=clock.time() + 86_400)))
    assert isinstance(event, CommandRejected)
    assert event.reason.startswith("replayed")
    assert not outbox.seen("c-0"), "ids of expired commands beyond the newest 10 are forgotten"


def test_asking_what_runs_does_not_load_the_executor() -> None:
    from edgeplane.edge_agent.execution.ondemand import OnDemandExecutor

    def never() -> Any:
        raise AssertionError("the executor was loaded to answer a ping")

    stand_in = OnDemandExecutor(never, needed_now=False)
    stand_in.start()
    assert stand_in.processes() == []
    assert not stand_in.loaded
