"""Running checks in order: each in a thread of its own, cut off at its time limit, skipped
when a check it depends on failed (or was itself skipped because of a failure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from edgeplane.shared.checkup import CheckResult, Report, likely_cause, skipped_after

__all__ = ["CHECK_LIMIT", "DoctorStep", "run_steps"]

CHECK_LIMIT: Final = 10.0  # seconds per check


@dataclass(frozen=True, slots=True)
class DoctorStep:
    """One check: ``run`` does it and returns its result; ``after`` the names of the checks
    (``area/name``) it depends on."""

    area: str
    name: str
    run: Callable[[], CheckResult]
    after: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.area}/{self.name}"


def run_steps(
    subject: str,
    steps: Sequence[DoctorStep],
    *,
    limit: float = CHECK_LIMIT,
    now: float | None = None,
) -> Report:
    """Every step in order, then the report with the likely cause and its hint."""
    at = time.time() if now is None else now
    blocked_by: dict[str, CheckResult] = {}  # check -> the failure that stopped it
    checks: list[CheckResult] = []
    for step in steps:
        failure = next((blocked_by[key] for key in step.after if key in blocked_by), None)
        if failure is not None:
            result = skipped_after(failure, step.area, step.name, limit)
        else:
            result = run_one(step, limit)
        if result.state == "fail":
            blocked_by[step.key] = result
        elif failure is not None:
            blocked_by[step.key] = failure
        checks.append(result)
    cause = likely_cause(checks)
    return Report(
        subject=subject,
        at=at,
        checks=checks,
        cause="" if cause is None else f"{cause.area}/{cause.name}",
        hint="" if cause is None else cause.hint,
    )


def run_one(step: DoctorStep, limit: float) -> CheckResult:
    """``step.run()`` in a daemon thread; a result saying so when it raised, or did not end
    within ``limit`` seconds (the thread is left behind: the doctor exits soon after)."""
    box: list[CheckResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(step.run())
        except Exception as exc:  # a probe's bug or surprise becomes that check's failure
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=target, name=f"doctor-{step.name}", daemon=True)
    thread.start()
    thread.join(limit)
    took = (time.monotonic() - started) * 1000
    if box:
        return _timed(box[0], took, limit)
    if errors:
        error = errors[0]
        reason = f"the check itself failed: {type(error).__name__}: {error}"
    else:
        reason = f"no answer within {limit:g} s: the check was cut off"
    return CheckResult(
        area=step.area, name=step.name, state="fail", reason=reason[:500], ms=took, limit=limit
    )


def _timed(result: CheckResult, took: float, limit: float) -> CheckResult:
    import msgspec

    return msgspec.structs.replace(result, ms=round(took, 1), limit=limit)
