"""Failures of the identity work, as the answers an operator gets: a bad key to seal to is
an ``invalid`` request, a broker that refused is ``unavailable``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from edgeplane.controller.errors import BrokerAdminError, RequestRefused
from edgeplane.controller.sealing import SealError, seal

__all__ = ["sealed", "translated"]

T = TypeVar("T")


def sealed(public_key: str, secret: str) -> str:
    """``secret`` sealed to the requester's ``seal_to`` key."""
    try:
        return seal(public_key, secret)
    except SealError as exc:
        raise RequestRefused("invalid", f"seal_to: {exc}") from exc


async def translated(work: Awaitable[T]) -> T:
    """The result of ``work``; a refusal of the broker as an ``unavailable`` reply."""
    try:
        return await work
    except BrokerAdminError as exc:
        raise RequestRefused("unavailable", str(exc)) from exc
