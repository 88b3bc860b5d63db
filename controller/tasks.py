"""Stopping a background task without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end. Its CancelledError ends here, but not ours:
    if the task calling this is itself being cancelled (Ctrl-C arriving just then), the
    cancellation goes on instead of being lost, as a bare ``suppress(CancelledError)``
    would lose it."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
