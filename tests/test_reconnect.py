"""The one reconnect loop (controller/reconnect.py), with connections that fail on cue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from edgeplane.controller.errors import BrokerUnavailable, NoControllerAnswer
from edgeplane.controller.reconnect import Reconnect, Retry
from edgeplane.shared.backoff import Backoff

FAST = Backoff(initial=0.01, cap=0.04)


class ScriptEnded(Exception):
    """More attempts than the script has words."""


def connections(script: list[str]) -> Callable[[], AbstractAsyncContextManager[int]]:
    """Each call connects as the next word of ``script`` says: ``ok`` (the connection's
    number is its attempt), ``refused`` (connecting fails)."""
    attempts = iter(range(1, len(script) + 1))

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[int]:
        attempt = next(attempts, None)
        if attempt is None:
            raise ScriptEnded
        if script[attempt - 1] == "refused":
            raise BrokerUnavailable(f"refused {attempt}")
        yield attempt

    return connect


async def test_failures_are_retried_and_the_sessions_result_returned() -> None:
    retries: list[Retry] = []
    sessions: list[int] = []

    async def session(attempt: int) -> str:
        sessions.append(attempt)
        if attempt == 2:
            raise BrokerUnavailable("lost 2")
        return f"done on {attempt}"

    reconnect = Reconnect(backoff=FAST, on_retry=retries.append)
    result = await reconnect.run(connections(["refused", "ok", "refused", "ok"]), session)
    assert result == "done on 4"
    assert sessions == [2, 4]
    assert [(str(r.error), r.lost) for r in retries] == [
        ("refused 1", False),
        ("lost 2", True),  # a connection was made, then lost
        ("refused 3", False),
    ]
    assert all(0 < r.delay <= 0.04 for r in retries)


async def test_the_pauses_grow_up_to_the_cap_and_start_over_after_a_connection() -> None:
    delays: list[float] = []
    script = ["refused"] * 4 + ["ok"] + ["refused"]
    backoff = Backoff(initial=0.01, cap=0.04)

    async def session(attempt: int) -> int:
        if attempt == 5:
            raise BrokerUnavailable("lost")
        return attempt

    reconnect = Reconnect(backoff=backoff, on_retry=lambda retry: delays.append(retry.delay))
    with pytest.raises(ScriptEnded):  # not retried: not a BrokerUnavailable
        await reconnect.run(connections(script), session)
    ceilings = [0.01, 0.02, 0.04, 0.04, 0.01, 0.02]  # jittered into [ceiling/2, ceiling]
    assert len(delays) == len(ceilings)
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


async def test_stop_ends_the_wait_at_once_and_run_returns_none() -> None:
    stop = asyncio.Event()
    reconnect = Reconnect(
        backoff=Backoff(initial=30.0, cap=30.0), stop=stop, on_retry=lambda _: stop.set()
    )
    started = time.monotonic()

    async def session(attempt: int) -> int:
        return attempt

    assert await reconnect.run(connections(["refused", "ok"]), session) is None
    assert time.monotonic() - started < 5  # not the 15-30 s pause


async def test_with_first_must_succeed_only_a_settled_session_is_retried() -> None:
    async def never_settles(attempt: int) -> None:
        raise NoControllerAnswer("nobody")

    reconnect = Reconnect(
        backoff=FAST, retry_on=(BrokerUnavailable, NoControllerAnswer), first_must_succeed=True
    )
    with pytest.raises(NoControllerAnswer, match="nobody"):
        await reconnect.run(connections(["ok", "ok"]), never_settles)

    reconnect = Reconnect(backoff=FAST, first_must_succeed=True)

    async def settles_then_loses(attempt: int) -> int:
        reconnect.settled()
        if attempt == 1:
            raise BrokerUnavailable("lost")
        return attempt

    assert await reconnect.run(connections(["ok", "refused", "ok"]), settles_then_loses) == 3


async def test_it_gives_up_after_its_patience_or_at_its_deadline() -> None:
    async def lose(attempt: int) -> None:
        raise BrokerUnavailable(f"lost {attempt}")

    patient = Reconnect(backoff=Backoff(initial=0.2, cap=0.2), patience=0.5)
    with pytest.raises(BrokerUnavailable, match="refused"):
        await patient.run(connections(["ok"] + ["refused"] * 20), lose)

    late = Reconnect(backoff=FAST, deadline=time.monotonic() - 1)
    with pytest.raises(BrokerUnavailable, match="lost 1"):
        await late.run(connections(["ok", "ok"]), lose)


async def test_an_error_it_does_not_retry_passes_through_and_groups_are_looked_into() -> None:
    async def crash(attempt: int) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await Reconnect(backoff=FAST).run(connections(["ok"]), crash)

    async def lose_in_a_task_group(attempt: int) -> int:
        if attempt == 1:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_raise(BrokerUnavailable("lost in a task")))
        return attempt

    retries: list[Retry] = []
    reconnect = Reconnect(backoff=FAST, on_retry=retries.append)
    assert await reconnect.run(connections(["ok", "ok"]), lose_in_a_task_group) == 2
    assert [str(r.error) for r in retries] == ["lost in a task"]


async def _raise(error: Exception) -> None:
    raise error
