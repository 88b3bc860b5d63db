"""Stopping a background task must not swallow the caller's own cancellation (a Ctrl-C
arriving just then would otherwise be lost and the command go on)."""

from __future__ import annotations

import asyncio

import pytest

from edgeplane.controller.tasks import cancel_and_wait


async def test_the_task_ends_and_its_cancellation_stays_with_it() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    slow_to_stop = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await slow_to_stop.wait()  # takes its time to end

    worker = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(worker))
    await asyncio.sleep(0)
    stopper.cancel()  # Ctrl-C while the caller waits for the worker to end
    slow_to_stop.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
