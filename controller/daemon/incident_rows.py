"""The rows of the operations log's incidents (the incidents migration): one row per
incident, its latest state, and one per step of its timeline. A stored value that cannot
be read back is a :class:`StoreError` naming what it was."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, get_args

from edgeplane.controller.core.incidents import (
    EdgeName,
    Incident,
    IncidentState,
    IncidentStepRecord,
    Severity,
)
from edgeplane.controller.errors import StoreError

__all__ = [
    "DELETE_STEPS_OF_ENV",
    "INCIDENT_SELECT",
    "INSERT_STEP",
    "STEP_SELECT",
    "UPSERT_INCIDENT",
    "incident_from_row",
    "incident_row",
    "step_from_row",
    "step_rows",
]

_COLUMNS: Final = "id, env, kind, severity, state, opened, updated, detail, count"
UPSERT_INCIDENT: Final = (
    f"INSERT OR REPLACE INTO incidents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INCIDENT_SELECT: Final = f"SELECT {_COLUMNS} FROM incidents"
INSERT_STEP: Final = (
    "INSERT OR IGNORE INTO incident_steps (incident, step, state, at, note, by)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
STEP_SELECT: Final = "SELECT incident, state, at, note, by FROM incident_steps"
DELETE_STEPS_OF_ENV: Final = (
    "DELETE FROM incident_steps WHERE incident IN (SELECT id FROM incidents WHERE env = ?)"
)
_STATES: Final = frozenset(get_args(IncidentState))
_SEVERITIES: Final = frozenset(get_args(Severity))
_EDGES: Final = frozenset(get_args(EdgeName))


def incident_row(incident: Incident) -> tuple[Any, ...]:
    i = incident
    return (i.id, i.env, i.kind, i.severity, i.state, i.opened, i.updated, i.detail, i.count)


def step_rows(incident: Incident) -> list[tuple[Any, ...]]:
    return [
        (incident.id, number, s.state, s.at, s.note, s.by)
        for number, s in enumerate(incident.timeline)
    ]


def incident_from_row(row: Sequence[Any], timeline: Sequence[IncidentStepRecord] = ()) -> Incident:
    state, severity = row[4], row[3]
    if state not in _STATES or severity not in _SEVERITIES:
        raise StoreError(f"stored incident {row[0]!r} has state {state!r}, severity {severity!r}")
    return Incident(
        row[0], row[1], row[2], severity, state, row[5], row[6], row[7], row[8], tuple(timeline)
    )


def step_from_row(row: Sequence[Any]) -> IncidentStepRecord:
    """A row of :data:`STEP_SELECT` (its first column, the incident, is not part of it)."""
    if row[1] not in _EDGES:
        raise StoreError(f"stored step of incident {row[0]!r} has state {row[1]!r}")
    return IncidentStepRecord(row[1], row[2], row[3], row[4])
