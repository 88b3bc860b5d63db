"""The daemon's ping waiters (controller.daemon.diagnose_desk.PongWaiters): answers matched
by command id, bounded, cleaned when a wait ends; the last heartbeat's figures."""

from __future__ import annotations

import pytest

from edgeplane.controller.core.diagnosis import Metrics
from edgeplane.controller.daemon.diagnose_desk import LastMetrics, PongWaiters
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import CommandRejected, OnlineStatus, Pong

ENV = "dev-lab-desk"


async def test_a_pong_answers_its_own_ping_only() -> None:
    clock = ManualClock()
    waiters = PongWaiters(clock)
    mine, other = waiters.expect(ENV, "c-1"), waiters.expect(ENV, "c-2")
    clock.advance(0.25)
    waiters.deliver(Pong(env=ENV, seq=1, cmd="c-1"))
    answer = await mine
    assert isinstance(answer.event, Pong)
    assert answer.at == clock.monotonic()
    assert not other.done()
    assert len(waiters) == 1  # the answered one is gone


async def test_an_answer_from_another_environment_is_not_taken() -> None:
    waiters = PongWaiters(ManualClock())
    answer = waiters.expect(ENV, "c-1")
    waiters.deliver(Pong(env="dev-lab-other", seq=1, cmd="c-1"))
    assert not answer.done()


async def test_an_unauthenticated_refusal_answers_the_ping_of_its_environment() -> None:
    waiters = PongWaiters(ManualClock())
    answer = waiters.expect(ENV, "c-1")
    waiters.deliver(CommandRejected(env=ENV, seq=1, reason="bad-signature: no trusted key"))
    assert isinstance((await answer).event, CommandRejected)


async def test_waiters_are_bounded_and_forgotten() -> None:
    waiters = PongWaiters(ManualClock(), limit=2)
    waiters.expect(ENV, "c-1")
    waiters.expect(ENV, "c-2")
    with pytest.raises(RequestRefused, match="too many diagnoses"):
        waiters.expect(ENV, "c-3")
    waiters.forget("c-1")
    waiters.forget("c-1")  # twice is harmless
    assert len(waiters) == 1
    waiters.deliver(Pong(env=ENV, seq=1, cmd="c-1"))  # too late: nobody waits, no error


def test_the_last_heartbeat_figures_are_kept() -> None:
    metrics = LastMetrics()
    metrics.note(OnlineStatus(env=ENV, bdseq=1, seq=1, interval=5, boot="b", cpu=1, disk=97))
    assert metrics.get(ENV) == Metrics(cpu=1, mem=None, disk=97)
    metrics.forget(ENV)
    assert metrics.get(ENV) is None
