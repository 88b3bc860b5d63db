"""Events as people read them: one line each (``edgeplane events``, ``deploy --wait``,
``deployments show``), and the preflight report one check per line.

Everything here is what an agent wrote: each line printed is shown by
:func:`~edgeplane.controller.operator.output.visible` (control characters written out), so
an event stays on its own line and cannot move the cursor or clear the screen."""

from __future__ import annotations

from typing import Final

from edgeplane.controller.operator.output import visible
from edgeplane.shared.messages import (
    Accepted,
    Ack,
    Cancelled,
    Check,
    CommandRejected,
    Event,
    Expired,
    Failed,
    Overridden,
    Pong,
    Preflight,
    RolledBack,
    Running,
    ServiceRestarted,
    Started,
    StepFinished,
    StepStarted,
    Stopped,
    Succeeded,
)

__all__ = ["check_line", "describe", "failed_checks", "output_block", "output_tail"]

TAIL_LINES: Final = 5  # lines of a failed step's stderr shown


def describe(event: Event) -> str:
    """What happened, in a few words (without the environment or time), on one line."""
    return visible(_describe(event))


def _describe(event: Event) -> str:
    match event:
        case Accepted():
            dry = " (dry run)" if event.dry_run else ""
            return f"accepted {event.workflow} {event.version}{dry}"
        case Preflight():
            return _preflight(event)
        case Started():
            return f"started {event.workflow} {event.version}"
        case StepStarted():
            return f"step {event.index + 1} {event.step} started"
        case StepFinished():
            return f"step {event.index + 1} {event.step} {_step_outcome(event)}"
        case Succeeded():
            return f"succeeded in {event.duration:.1f} s"
        case Running():
            return "running"
        case Failed():
            step = f" (step {event.step})" if event.step and event.step not in event.reason else ""
            return f"failed{step}: {event.reason}"
        case RolledBack():
            version = f" {event.version}" if event.version else ""
            reason = f": {event.reason}" if event.reason else ""
            return f"rolled back to {event.restored}{version}{reason}"
        case ServiceRestarted():
            code = "" if event.exit_code is None else f" after exit {event.exit_code}"
            return f"service step {event.step} restarted{code} (restart {event.restarts})"
        case Stopped():
            return f"stopped: {event.reason}"
        case Cancelled():
            return f"cancelled: {event.reason}" if event.reason else "cancelled"
        case Overridden():
            reason = f": {event.reason}" if event.reason else ""
            return f"sent past the {event.check} refusal at the operator's word{reason}"
        case Expired():
            return f"expired: {event.reason}" if event.reason else "expired"
        case CommandRejected():
            return f"rejected: {event.reason}"
        case Ack():
            detail = f": {event.detail}" if event.detail else ""
            return f"{event.op} {'done' if event.ok else 'FAILED'}{detail}"
        case Pong():
            return "pong"


def _preflight(event: Preflight) -> str:
    total = len(event.checks)
    if event.ok:
        return (
            f"preflight passed: {total} checks ok"
            if total
            else "preflight passed: nothing required"
        )
    failed = sum(1 for check in event.checks if not check.ok)
    return f"preflight FAILED: {failed} of {total} checks: {failed_checks(event)}"


def _step_outcome(event: StepFinished) -> str:
    if event.timed_out:
        outcome = "FAILED: timed out"
    elif event.exit_code is None:
        outcome = "FAILED: could not run or was killed"
    elif event.ok:
        outcome = f"finished: exit {event.exit_code}"
    else:
        outcome = f"FAILED: exit {event.exit_code}"
    return f"{outcome} after {event.duration:.1f} s"


def check_line(check: Check) -> str:
    verdict = "ok" if check.ok else "FAILED"
    detail = f": {check.detail}" if check.detail else ""
    return visible(f"{verdict:<6}  {check.kind} {check.name}{detail} ({check.ms:.0f} ms)")


def failed_checks(preflight: Preflight) -> str:
    """``secret TOKEN: not in the secrets file; model m: ...`` for the checks that failed."""
    return "; ".join(
        f"{check.kind} {check.name}" + (f": {check.detail}" if check.detail else "")
        for check in preflight.checks
        if not check.ok
    )


def output_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a step's output, as they are (a reason in
    ``--json`` stays exact): shown by :func:`output_block`."""
    kept = [line for line in text.splitlines() if line.strip()]
    return kept[-lines:]


def output_block(text: str, label: str, lines: int = TAIL_LINES) -> list[str]:
    """The tail of a step's output to print: each line shown by :func:`visible` and
    indented under ``label`` (``    stderr | ...``), so none looks like a line of ours."""
    return [f"    {label} | {visible(line)}" for line in output_tail(text, lines)]
