"""The deployment gate: send, queue or refuse a deployment (pure, no I/O).

The controller refuses what it can already tell will not work, each refusal with a code
from :data:`shared.rpc.ErrorCode` and one sentence naming the cause: an unknown,
unregistered or retired environment; an offline or never-seen one (unless the operator
asked to queue it with ``--when-online``); a flapping one; required models missing from the
inventory the agent last reported. Everything the controller cannot see (datasources,
buckets, secrets, endpoints) is the agent's preflight.

A dry run skips the model check: its point is the agent's full preflight report.

``force`` (``deploy --force --reason``) overrides the flapping refusal only, never an
unknown, retired or offline environment nor a missing model: the decision then names the
check it overrode (``overridden``), for the deployment's record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from edgeplane.controller.core.presence import EnvRecord
from edgeplane.controller.core.registry import Environment, no_such_environment
from edgeplane.shared.errors import InvalidVersionSpec
from edgeplane.shared.rpc import ErrorCode
from edgeplane.shared.versions import best_match
from edgeplane.shared.workflow import ModelNeed, Workflow

__all__ = [
    "Decision",
    "Queue",
    "Refuse",
    "Send",
    "iso_time",
    "judge_deploy",
    "missing_models",
    "offline_sentence",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Publish the deploy command now. ``overridden``: the refusal forced past ("" none)."""

    overridden: str = ""


@dataclass(frozen=True, slots=True)
class Queue:
    """Keep it until the environment's next online transition, or ``expires``."""

    expires: float
    overridden: str = ""


@dataclass(frozen=True, slots=True)
class Refuse:
    code: ErrorCode
    message: str


Decision = Send | Queue | Refuse


def judge_deploy(
    env: str,
    record: Environment | None,
    presence: EnvRecord | None,
    models: Mapping[str, Sequence[str]] | None,
    workflow: Workflow,
    *,
    when_online: bool,
    dry_run: bool,
    ttl: float,
    now: float,
    force: bool = False,
) -> Decision:
    """Decide on one deploy request. ``models`` is the last reported inventory (None: the
    agent never reported one); ``force``: send past a flapping environment's refusal."""
    if record is None:
        if presence is not None:
            return Refuse(
                "not-found",
                f"environment {env!r} is not registered (an agent connects as it, but it "
                f"has no record); create it with: edgeplane env create {env} --stage dev "
                "--location LOCATION --purpose PURPOSE",
            )
        return Refuse("not-found", no_such_environment(env))
    if record.retired is not None:
        return Refuse("retired", f"environment {env!r} was retired at {iso_time(record.retired)}")
    overridden = ""
    if presence is not None and presence.flapping:
        if not force:
            return Refuse(
                "flapping",
                f"environment {env!r} is flapping (going online and offline repeatedly); "
                "deploy when it is steady again (or --force --reason TEXT)",
            )
        overridden = "flapping"
    if presence is None or presence.status != "online":
        if when_online:
            return Queue(now + ttl, overridden)
        return Refuse(
            "offline", offline_sentence(env, presence) + "; add --when-online to queue it"
        )
    if not dry_run:
        try:
            missing = missing_models(env, workflow.requires.models, models)
        except InvalidVersionSpec as exc:
            return Refuse("invalid", f"workflow requires.models: {exc}")
        if missing:
            return Refuse("missing-model", "; ".join(missing))
    return Send(overridden)


def offline_sentence(env: str, presence: EnvRecord | None) -> str:
    """``environment x is offline since ... (last heartbeat ...)``, or never seen."""
    if presence is None or presence.status == "unknown" or presence.last_seen is None:
        return f"environment {env!r} has never been online (no agent has connected as it)"
    return (
        f"environment {env!r} is offline since {iso_time(presence.since)} "
        f"(last heartbeat {iso_time(presence.last_seen)})"
    )


def missing_models(
    env: str, needs: Sequence[ModelNeed], models: Mapping[str, Sequence[str]] | None
) -> list[str]:
    """One sentence per required model that the inventory lacks (none: all present).
    Raises :class:`InvalidVersionSpec` for a version specifier that is not PEP 440."""
    missing: list[str] = []
    held = models or {}
    for need in needs:
        versions = held.get(need.name, [])
        if best_match(need.version, versions) is not None:
            continue
        wanted = f"{need.name} {need.version}".strip()
        if versions:
            has = f"has: {need.name} {', '.join(versions)}"
        elif models is None:
            has = "it has reported no models"
        else:
            has = f"it has no {need.name}"
        missing.append(f"model {wanted} is not on {env} ({has})")
    return missing


def iso_time(timestamp: float) -> str:
    """Unix seconds as ``2026-11-27T08:01:02Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
