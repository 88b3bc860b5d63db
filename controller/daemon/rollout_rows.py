"""The rows of rollouts (:mod:`edgeplane.controller.core.rollout`): one per rollout, one
per target (unique by rollout and environment: a target is stored once, with its one
deployment), each a JSON body beside the columns that are queried."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from edgeplane.controller.core.rollout import RolloutRecord, Target
from edgeplane.controller.errors import StoreError

__all__ = [
    "ROLLOUT_SELECT",
    "TARGET_SELECT",
    "UPSERT_ROLLOUT",
    "UPSERT_TARGET",
    "rollout_from_row",
    "rollout_row",
    "target_from_row",
    "target_row",
]

UPSERT_ROLLOUT: Final = """
    INSERT OR REPLACE INTO rollouts (id, state, created, updated, body) VALUES (?, ?, ?, ?, ?)
"""
UPSERT_TARGET: Final = """
    INSERT OR REPLACE INTO rollout_targets (rollout, env, wave, state, dep, body)
    VALUES (?, ?, ?, ?, ?, ?)
"""
ROLLOUT_SELECT: Final = "SELECT body FROM rollouts"
TARGET_SELECT: Final = "SELECT body FROM rollout_targets"

_encoder: Final = msgspec.json.Encoder()
_record: Final = msgspec.json.Decoder(RolloutRecord)
_target: Final = msgspec.json.Decoder(Target)


def rollout_row(record: RolloutRecord) -> tuple[Any, ...]:
    body = _encoder.encode(record).decode()
    return (record.id, record.state, record.created, record.updated, body)


def target_row(target: Target) -> tuple[Any, ...]:
    body = _encoder.encode(target).decode()
    return (target.rollout, target.env, target.wave, target.state, target.dep, body)


def rollout_from_row(row: Sequence[Any]) -> RolloutRecord:
    try:
        return _record.decode(row[0])
    except msgspec.DecodeError as exc:
        raise StoreError(f"a stored rollout cannot be read: {exc}") from exc


def target_from_row(row: Sequence[Any]) -> Target:
    try:
        return _target.decode(row[0])
    except msgspec.DecodeError as exc:
        raise StoreError(f"a stored rollout target cannot be read: {exc}") from exc
