"""How the controller's records become SQLite rows and back: the statements the store's
writer runs, and one encoder and one decoder per table. A stored value that cannot be read
back is a :class:`StoreError` naming what it was."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from edgeplane.controller.core.alerts import AlertEdge
from edgeplane.controller.core.deployments import Deployment, OperatorCommand
from edgeplane.controller.core.link_quality import LinkFigures
from edgeplane.controller.core.presence import EnvRecord, Transition
from edgeplane.controller.core.records import LogEntry, ReportedInventory
from edgeplane.controller.core.registry import Environment
from edgeplane.controller.core.rotation import Credential
from edgeplane.controller.errors import StoreError
from edgeplane.shared.messages import Event, Platform
from edgeplane.shared.rpc import LoggedEvent
from edgeplane.shared.workflow import Workflow

__all__ = [
    "ALERT_SELECT",
    "COMMAND_SELECT",
    "CREDENTIAL_SELECT",
    "DEPLOYMENT_COLUMNS",
    "DEPLOYMENT_SELECT",
    "ENVIRONMENT_SELECT",
    "ENV_COLUMNS",
    "ENV_SELECT",
    "HISTORY_TABLES",
    "INSERT_ALERT",
    "INSERT_EVENT",
    "INSERT_TRANSITION",
    "INVENTORY_SELECT",
    "PRESENCE_TABLES",
    "TRANSITION_SELECT",
    "UPSERT_COMMAND",
    "UPSERT_CREDENTIAL",
    "UPSERT_DEPLOYMENT",
    "UPSERT_ENV",
    "UPSERT_ENVIRONMENT",
    "UPSERT_INVENTORY",
    "alert_from_row",
    "alert_row",
    "command_from_row",
    "command_row",
    "credential_from_row",
    "credential_row",
    "deployment_from_row",
    "deployment_row",
    "env_record_from_row",
    "env_row",
    "environment_from_row",
    "environment_row",
    "event_row",
    "inventory_from_row",
    "inventory_row",
    "logged_event_from_row",
    "transition_from_row",
    "transition_row",
]

ENV_COLUMNS: Final = (
    "env, status, since, reason, last_seen, bdseq, seq, boot, interval, flapping, conflict,"
    " missed_pct, reconnects_1h"
)
UPSERT_ENV: Final = f"""
    INSERT INTO envs ({ENV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (env) DO UPDATE SET
        status = excluded.status, since = excluded.since, reason = excluded.reason,
        last_seen = excluded.last_seen, bdseq = excluded.bdseq, seq = excluded.seq,
        boot = excluded.boot, interval = excluded.interval, flapping = excluded.flapping,
        conflict = excluded.conflict, missed_pct = excluded.missed_pct,
        reconnects_1h = excluded.reconnects_1h
"""
INSERT_TRANSITION: Final = """
    INSERT INTO transitions (env, from_status, to_status, reason, at, during_downtime)
    VALUES (?, ?, ?, ?, ?, ?)
"""
INSERT_ALERT: Final = "INSERT INTO alerts (env, kind, state, at, detail) VALUES (?, ?, ?, ?, ?)"
UPSERT_ENVIRONMENT: Final = """
    INSERT OR REPLACE INTO records (id, project, stage, location, purpose, labels, created, retired)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
UPSERT_INVENTORY: Final = (
    "INSERT OR REPLACE INTO inventory (env, models, platform, updated) VALUES (?, ?, ?, ?)"
)
DEPLOYMENT_COLUMNS: Final = (
    "id, env, workflow, version, kind, spec, state, reason, created, updated, expires,"
    " dry_run, when_online, cmd, revivable, replaced_by, last_src, last_seq, forced,"
    " after_dep, validation, up"
)
UPSERT_DEPLOYMENT: Final = f"""
    INSERT OR REPLACE INTO deployments ({DEPLOYMENT_COLUMNS})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
COMMAND_COLUMNS: Final = "id, env, op, sent, expires, workflow, state, detail, answered"
UPSERT_COMMAND: Final = (
    f"INSERT OR REPLACE INTO commands ({COMMAND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
COMMAND_SELECT: Final = f"SELECT {COMMAND_COLUMNS} FROM commands"
_COMMAND_STATES: Final = frozenset(
    {"pending", "done", "failed", "rejected", "expired", "unanswered"}
)
INSERT_EVENT: Final = """
    INSERT OR IGNORE INTO oplog (env, src, seq, type, dep, at, body) VALUES (?, ?, ?, ?, ?, ?, ?)
"""

# What `env forget` deletes of an id, by its `env` column: its presence always; its history
# too when it never had a record (a retired environment keeps its history).
PRESENCE_TABLES: Final = ("envs", "inventory")
HISTORY_TABLES: Final = ("transitions", "alerts", "oplog", "incidents")

_json: Final = msgspec.json.Encoder()
_models_decoder: Final = msgspec.json.Decoder(dict[str, list[str]])
_labels_decoder: Final = msgspec.json.Decoder(dict[str, str])
_platform_decoder: Final = msgspec.json.Decoder(Platform)
_workflow_decoder: Final = msgspec.json.Decoder(Workflow)
_event_decoder: Final = msgspec.json.Decoder(Event)

ENV_SELECT: Final = f"SELECT {ENV_COLUMNS} FROM envs"
TRANSITION_SELECT: Final = (
    "SELECT env, from_status, to_status, reason, at, during_downtime FROM transitions"
)
ALERT_SELECT: Final = "SELECT env, kind, state, at, detail FROM alerts"
ENVIRONMENT_SELECT: Final = (
    "SELECT id, project, stage, location, purpose, labels, created, retired FROM records"
)
INVENTORY_SELECT: Final = "SELECT env, models, platform, updated FROM inventory"
DEPLOYMENT_SELECT: Final = f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments"
CREDENTIAL_COLUMNS: Final = (
    "env, generation, since, box_key, state, target, started, cause, sealed, sealed_to,"
    " sent_bdseq, reported_key, reported_bdseq, proof"
)
UPSERT_CREDENTIAL: Final = (
    f"INSERT OR REPLACE INTO credentials ({CREDENTIAL_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CREDENTIAL_SELECT: Final = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials"


def credential_row(credential: Credential) -> tuple[Any, ...]:
    return tuple(getattr(credential, name.strip()) for name in CREDENTIAL_COLUMNS.split(","))


def credential_from_row(row: Sequence[Any]) -> Credential:
    env, state = row[0], row[4]
    if state not in (None, "creating", "created", "sent", "removing"):
        raise StoreError(f"stored credential of {env!r} has an unknown rotation state {state!r}")
    return Credential(*row)


def env_row(record: EnvRecord) -> tuple[Any, ...]:
    return (
        record.env,
        record.status,
        record.since,
        record.reason,
        record.last_seen,
        record.bdseq,
        record.seq,
        record.boot,
        record.interval,
        int(record.flapping),
        int(record.conflict),
        None if record.link is None else record.link.missed_pct,
        None if record.link is None else record.link.reconnects,
    )


def env_record_from_row(row: Sequence[Any]) -> EnvRecord:
    env, status, since, reason, last_seen, bdseq, seq, boot, interval, flapping, conflict = row[:11]
    missed_pct, reconnects = row[11:13]
    link = None if missed_pct is None else LinkFigures(missed_pct, reconnects or 0)
    return EnvRecord(
        env, status, since, reason, last_seen, bdseq, seq, boot, interval, bool(flapping),
        bool(conflict), link=link,
    )  # fmt: skip


def transition_row(transition: Transition) -> tuple[Any, ...]:
    return (
        transition.env,
        transition.from_status,
        transition.to_status,
        transition.reason,
        transition.at,
        int(transition.during_downtime),
    )


def transition_from_row(row: Sequence[Any]) -> Transition:
    return Transition(row[0], row[1], row[2], row[3], row[4], bool(row[5]))


def alert_row(edge: AlertEdge) -> tuple[Any, ...]:
    return (edge.env, edge.kind, edge.state, edge.at, edge.detail)


def alert_from_row(row: Sequence[Any]) -> AlertEdge:
    return AlertEdge(row[0], row[1], row[2], row[3], row[4])


def environment_row(record: Environment) -> tuple[Any, ...]:
    labels = _json.encode(dict(record.labels)).decode()
    return (
        record.id,
        record.project,
        record.stage,
        record.location,
        record.purpose,
        labels,
        record.created,
        record.retired,
    )


def environment_from_row(row: Sequence[Any]) -> Environment:
    env, project, stage, location, purpose, labels, created, retired = row
    return Environment(
        env, project, stage, location, purpose, _decode(_labels_decoder, labels, "labels"),
        created, retired,
    )  # fmt: skip


def inventory_row(inventory: ReportedInventory) -> tuple[Any, ...]:
    models = _json.encode({name: list(v) for name, v in inventory.models.items()}).decode()
    platform = None if inventory.platform is None else _json.encode(inventory.platform).decode()
    return (inventory.env, models, platform, inventory.updated)


def inventory_from_row(row: Sequence[Any]) -> ReportedInventory:
    env, models, platform, updated = row
    return ReportedInventory(
        env,
        _decode(_models_decoder, models, "models"),
        None if platform is None else _decode(_platform_decoder, platform, "platform"),
        updated,
    )


def deployment_row(d: Deployment) -> tuple[Any, ...]:
    spec = _json.encode(d.workflow).decode()
    return (
        d.id, d.env, d.workflow.name, d.workflow.version, d.workflow.kind, spec, d.state,
        d.reason, d.created, d.updated, d.expires, int(d.dry_run), int(d.when_online), d.cmd,
        int(d.revivable), d.replaced_by, d.last_src, d.last_seq, d.forced, d.after, d.validation,
        int(d.up),
    )  # fmt: skip


def deployment_from_row(row: Sequence[Any]) -> Deployment:
    dep, env, _, _, _, spec, state, reason, created, updated, expires, dry, online, cmd = row[:14]
    revivable, replaced_by, last_src, last_seq, forced, after, validation, up = row[14:22]
    return Deployment(
        id=dep,
        env=env,
        workflow=_decode(_workflow_decoder, spec, "workflow"),
        state=state,
        created=created,
        updated=updated,
        cmd=cmd,
        reason=reason,
        expires=expires,
        dry_run=bool(dry),
        when_online=bool(online),
        revivable=bool(revivable),
        replaced_by=replaced_by,
        last_src=last_src,
        last_seq=last_seq,
        forced=forced,
        after=after,
        validation=validation,
        up=bool(up),
    )


def command_row(c: OperatorCommand) -> tuple[Any, ...]:
    return (c.id, c.env, c.op, c.sent, c.expires, c.workflow, c.state, c.detail, c.answered)


def command_from_row(row: Sequence[Any]) -> OperatorCommand:
    cmd, env, op, sent, expires, workflow, state, detail, answered = row
    if state not in _COMMAND_STATES:
        raise StoreError(f"stored command {cmd!r} has an unknown state {state!r}")
    return OperatorCommand(cmd, env, op, sent, expires, workflow, state, detail, answered)


def event_row(entry: LogEntry) -> tuple[Any, ...]:
    event = entry.event
    body = _json.encode(event).decode()
    kind = type(event).__struct_config__.tag
    return (event.env, event.src, event.seq, str(kind), event.dep, entry.at, body)


def logged_event_from_row(row: Sequence[Any]) -> LoggedEvent:
    """An operations-log row (id, at, body)."""
    return LoggedEvent(id=row[0], at=row[1], event=_decode(_event_decoder, row[2], "event"))


def _decode(decoder: msgspec.json.Decoder[Any], text: str | bytes, what: str) -> Any:
    try:
        return decoder.decode(text)
    except msgspec.MsgspecError as exc:
        raise StoreError(f"a stored {what} cannot be read: {exc}") from exc
