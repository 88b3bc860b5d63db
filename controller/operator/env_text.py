"""Environment records as people read them: the ``env list`` table and ``env show``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeplane.controller.operator.output import ago, render_table, visible, when

if TYPE_CHECKING:
    from edgeplane.controller.operator.board import Row
    from edgeplane.shared.rpc import CommandInfo, EnvInfo

__all__ = [
    "command_text",
    "env_details",
    "env_table",
    "labels_text",
    "link_text",
    "pressure_text",
    "stale_env_details",
    "steady_text",
]


def env_table(infos: list[EnvInfo], *, clock: Callable[[], float] = time.time) -> str:
    header = ("ID", "PROJECT", "STAGE", "LOCATION", "PURPOSE", "STATUS", "LAST SEEN", "LABELS")
    now = clock()
    rows = [
        (
            info.id,
            info.project or "-",
            info.stage or "-",
            info.location or "-",
            info.purpose or "-",
            _status(info),
            "never" if info.last_seen is None else ago(now - info.last_seen),
            labels_text(info.labels) or "-",
        )
        for info in infos
    ]
    return render_table(header, rows)


def env_details(info: EnvInfo, *, clock: Callable[[], float] = time.time) -> str:
    """One ``name: value`` line per field: the record, its status, what the agent reported."""
    fields: list[tuple[str, str]] = [
        ("id", info.id),
        ("project", info.project or "-"),
        ("stage", info.stage or "-"),
        ("location", info.location or "-"),
        ("purpose", info.purpose or "-"),
        ("labels", labels_text(info.labels) or "-"),
        ("created", when(info.created, clock=clock) if info.created else "-"),
    ]
    if info.retired is not None:
        fields.append(("retired", when(info.retired, clock=clock)))
    fields.append(("status", f"{_status(info)} since {when(info.since, clock=clock)}"))
    heard = "never" if info.last_seen is None else ago(clock() - info.last_seen)
    every = f", every {info.interval:g} s" if info.interval else ""
    fields.append(("heartbeat", f"{heard}{every}"))
    fields.append(("steady", steady_text(info)))
    fields.append(("link", link_text(info.missed_pct, info.reconnects_1h)))
    fields.append(("pressure", pressure_text(info.pressure)))
    models = "; ".join(
        f"{name} {', '.join(versions)}" for name, versions in sorted(info.models.items())
    )
    fields.append(("models", models or "none reported"))
    fields.append(("platform", _platform(info)))
    fields.append(("running", _running(info)))
    if info.restarting:
        fields.append(("restarting", ", ".join(info.restarting)))
    fields += [("command", command_text(command, clock())) for command in info.commands]
    if info.credential_generation is not None:
        fields.append(("credential", _credential(info, clock())))
    fields.append(
        ("incidents", f"{len(info.open_incidents)} open" if info.open_incidents else "none open")
    )
    fields += [
        (
            "incident",
            f"{i.id} {i.kind} ({i.severity}, {i.state}) {ago(clock() - i.opened)}"
            + (f" x{i.count}" if i.count > 1 else "")
            + (f": {i.detail}" if i.detail else ""),
        )
        for i in info.open_incidents
    ]
    width = max(len(name) for name, _ in fields) + 1
    return "\n".join(f"{name + ':':<{width}} {visible(value)}" for name, value in fields)


def stale_env_details(row: Row, *, clock: Callable[[], float] = time.time) -> str:
    """``env show`` without the controller: what the broker retains of one environment."""
    status = row.shown_status + (f": {row.reason}" if row.reason else "")
    since = "" if row.since is None else f" since {when(row.since, clock=clock)}"
    fields = [
        ("id", row.env),
        ("status", status + since),
        ("heartbeat", "never" if row.heartbeat_age is None else ago(row.heartbeat_age)),
        ("flapping", "yes" if row.flapping else "no"),
        ("link", link_text(row.missed_pct, row.reconnects_1h)),
        ("pressure", pressure_text(row.pressure)),
        ("record", "not shown: only the controller has it"),
    ]
    width = max(len(name) for name, _ in fields) + 1
    return "\n".join(f"{name + ':':<{width}} {visible(value)}" for name, value in fields)


def link_text(missed_pct: float | None, reconnects: int | None, *, short: bool = False) -> str:
    """Link quality over the last hour: ``2.5% missed, 1 reconnect`` (``short``, for the
    status table: ``2.5%, 1 reconn.``); ``-`` (``not measured yet``) when unknown."""
    if missed_pct is None:
        return "-" if short else "not measured yet"
    count = reconnects or 0
    if short:
        return f"{missed_pct:g}%, {count} reconn."
    plural = "" if count == 1 else "s"
    return f"{missed_pct:g}% of heartbeats missed, {count} reconnect{plural} in the last hour"


def pressure_text(resources: tuple[str, ...] | list[str]) -> str:
    """``disk, mem over threshold`` (open pressure episodes) or ``none``."""
    return f"{', '.join(resources)} over threshold" if resources else "none"


def labels_text(labels: dict[str, str]) -> str:
    """``k1=v1,k2=v2``, sorted by name, shown by :func:`visible`."""
    return visible(",".join(f"{key}={value}" for key, value in sorted(labels.items())))


def _status(info: EnvInfo) -> str:
    marks: list[str] = [info.status]
    if info.flapping:
        marks.append("flapping")
    if not info.registered:
        marks.append("unregistered")
    return ", ".join(marks)


def steady_text(info: EnvInfo) -> str:
    """``yes``, or ``no`` and why (what a critical workflow needs: online, not flapping, no
    heartbeat missed in the last 5 intervals)."""
    if info.steady:
        return "yes (no heartbeat missed in the last 5 intervals)"
    if info.status != "online":
        return f"no ({info.status})"
    if info.flapping:
        return "no (flapping)"
    if info.missed_heartbeats is None:
        return "no (no heartbeat seen since the controller started listening)"
    plural = "" if info.missed_heartbeats == 1 else "s"
    return f"no ({info.missed_heartbeats} heartbeat{plural} missed in the last 5 intervals)"


def command_text(command: CommandInfo, now: float) -> str:
    """``restart c-61b04e9d2a: pending, sent 3s ago, expires in 1m`` or, once answered,
    ``restart c-61b04e9d2a: done 12s ago: restarted: camera-service``."""
    scope = f" of {command.workflow}" if command.workflow else ""
    head = f"{command.op}{scope} {command.id}"
    if command.state == "pending":
        sent, expires = ago(now - command.sent), ago(now - command.expires)
        return f"{head}: pending, sent {sent}, expires {expires}"
    answered = "" if command.answered is None else f" {ago(now - command.answered)}"
    detail = f": {command.detail}" if command.detail else ""
    return f"{head}: {command.state}{answered}{detail}"


def _credential(info: EnvInfo, now: float) -> str:
    """``generation 2, 3d old; rotating to 3 (sent)``."""
    since = info.credential_since
    age = "" if since is None else f", {ago(max(0.0, now - since)).removesuffix(' ago')} old"
    text = f"generation {info.credential_generation}{age}"
    if info.rotation_state:
        text += f"; rotating to {info.rotation_target} ({info.rotation_state})"
    if info.box_key_mismatch:
        text += (
            "; the agent connected now reports a box key other than the pinned one (another"
            f" runtime, or a reinstalled agent: edgeplane env rotate-credentials {info.id} --repin)"
        )
    return text


def _platform(info: EnvInfo) -> str:
    platform = info.platform
    if platform is None:
        return "not reported"
    parts = [f"{platform.os} {platform.arch}".strip()]
    if platform.py:
        parts.append(f"Python {platform.py}")
    if platform.agent:
        parts.append(f"agent {platform.agent}")
    parts.append("GPU" if platform.gpu else "no GPU")
    return ", ".join(part for part in parts if part)


def _running(info: EnvInfo) -> str:
    """``d-5ad1fbe30a (cam 1.0.0), ...``: each deployment with what it runs."""
    if not info.running:
        return "nothing"
    names = info.running_workflows
    if len(names) != len(info.running):  # a controller older than the field
        return ", ".join(info.running)
    return ", ".join(f"{dep} ({name})" for dep, name in zip(info.running, names, strict=True))
