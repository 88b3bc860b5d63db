"""Whether a critical workflow may go to an environment (pure, no I/O).

A workflow marked ``critical: true`` is sent (alone or in a rollout) only to an environment
that is

1. online (a critical deployment is never queued for later: the checks below are about
   now);
2. steady: not flapping, and no heartbeat missed in the last 5 intervals
   (:mod:`.heartbeats`);
3. validated: a dry run of this workflow's name and version passed there (a full preflight
   report, every check ok) within ``max_age`` seconds.

:func:`judge_critical` returns None, or the first check that failed as a :class:`~.gate.Refuse`
whose code is from :data:`shared.rpc.ErrorCode` (``offline``, ``unsteady``,
``not-validated``) and whose one sentence names it.
"""

from __future__ import annotations

from typing import Final

from edgeplane.controller.core.deployments import Deployment
from edgeplane.controller.core.gate import Refuse
from edgeplane.controller.core.heartbeats import WINDOW_INTERVALS
from edgeplane.controller.core.presence import EnvRecord
from edgeplane.shared.workflow import Workflow

__all__ = ["DEFAULT_MAX_AGE", "age_text", "judge_critical", "steady"]

DEFAULT_MAX_AGE: Final = 3600.0


def steady(presence: EnvRecord | None, missed: int | None) -> bool:
    """Online, not flapping, and no heartbeat missed in the window."""
    return (
        presence is not None
        and presence.status == "online"
        and not presence.flapping
        and missed == 0
    )


def judge_critical(
    env: str,
    workflow: Workflow,
    presence: EnvRecord | None,
    missed: int | None,
    validations: list[Deployment] | None,
    *,
    now: float,
    max_age: float,
) -> Refuse | None:
    """None when critical ``workflow`` may go to ``env`` now. ``missed``: its heartbeats
    missed in the window (None: none seen); ``validations``: its latest finished dry runs of
    this workflow's name, one per version, in any order (None: do not check validation,
    the dry run goes first)."""
    what = f"critical workflow {workflow.name} {workflow.version}"
    if presence is None or presence.status != "online":
        text = (
            "has never been online"
            if presence is None or presence.status == "unknown"
            else f"is {presence.status}"
        )
        return Refuse(
            "offline",
            f"environment {env!r} {text}: a {what} goes only to an online environment "
            "(it is never queued for later)",
        )
    if presence.flapping:
        return Refuse(
            "unsteady",
            f"environment {env!r} is flapping (not steady): a {what} needs a steady heartbeat",
        )
    if missed is None or missed > 0:
        plural = "" if missed == 1 else "s"
        count = "had no heartbeat seen" if missed is None else f"missed {missed} heartbeat{plural}"
        return Refuse(
            "unsteady",
            f"environment {env!r} {count} in the last {WINDOW_INTERVALS} intervals "
            f"(not steady): a {what} needs a steady heartbeat",
        )
    if validations is None:
        return None
    return _judge_validation(env, workflow, validations, now=now, max_age=max_age)


def _judge_validation(
    env: str, workflow: Workflow, validations: list[Deployment], *, now: float, max_age: float
) -> Refuse | None:
    what = f"critical workflow {workflow.name} {workflow.version}"
    hint = f"validate it first: edgeplane deploy FILE --env {env} --dry-run (or --validate-first)"
    same = [v for v in validations if v.workflow.version == workflow.version]
    if not same:
        others = sorted(validations, key=lambda v: v.updated)
        if others:
            latest = others[-1]
            return Refuse(
                "not-validated",
                f"the validation on {env!r} is of another version ({latest.id}, version "
                f"{latest.workflow.version}): {what} needs its own; {hint}",
            )
        return Refuse(
            "not-validated",
            f"validation missing: no dry run of {what} on {env!r}; {hint}",
        )
    latest = max(same, key=lambda v: v.updated)
    if not latest.passed:
        return Refuse(
            "not-validated",
            f"validation failed: the latest dry run of {what} on {env!r} ({latest.id}) "
            f"did not pass ({latest.state}: {latest.reason}); fix it and {hint}",
        )
    age = now - latest.updated
    if age > max_age:
        return Refuse(
            "not-validated",
            f"validation too old: the dry run of {what} on {env!r} ({latest.id}) passed "
            f"{age_text(age)} ago, more than the {age_text(max_age)} allowed "
            f"(--validation-max-age); {hint}",
        )
    return None


def age_text(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
