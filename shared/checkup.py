"""The report form of ``edgeplane env diagnose`` and ``edge-agent doctor``.

Both run their checks in the source document's troubleshooting order (:data:`ORDER`):
process health, network path, credentials, resource pressure, workflow compatibility.
Each check ends ``pass``, ``warn``, ``fail`` or ``skip`` with a one-line reason; a check
that depends on a failed one is skipped and says which. The first failure is the likely
cause, and its hint says what to do. The exit status is non-zero when a check failed.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "EXIT_FAILED",
    "ORDER",
    "CheckResult",
    "CheckState",
    "Report",
    "exit_status",
    "likely_cause",
    "render_text",
    "skipped_after",
]

CheckState = Literal["pass", "warn", "fail", "skip"]

# The source document's order ("when an environment fails, check in this order").
ORDER: Final[tuple[str, ...]] = (
    "process",
    "network",
    "credentials",
    "resources",
    "compatibility",
)

EXIT_FAILED: Final = 1  # a check failed (usage and connection errors keep their own codes)

_Line = Annotated[str, msgspec.Meta(max_length=512)]


class CheckResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One check: ``area`` is one of :data:`ORDER`, ``name`` what was checked within it
    (``heartbeat``, ``round-trip``, ``dns``, ...), ``ms`` how long it took, ``limit`` its
    time limit in seconds. ``facts`` are the figures behind the reason, for ``--json``."""

    area: _Line
    name: _Line
    state: CheckState
    reason: _Line
    hint: _Line = ""
    ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    limit: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    facts: dict[_Line, _Line] = {}


class Report(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A whole run: ``subject`` is the environment, ``at`` the time it ran (unix seconds),
    ``checks`` in the order they ran, ``cause`` the name of the first failed check ("" when
    none failed) and ``hint`` what to do about it."""

    subject: _Line
    at: Annotated[float, msgspec.Meta(ge=0)]
    checks: list[CheckResult] = []
    cause: _Line = ""
    hint: _Line = ""


def likely_cause(checks: list[CheckResult]) -> CheckResult | None:
    """The first failed check, in the order they ran: the likely cause."""
    return next((check for check in checks if check.state == "fail"), None)


def skipped_after(failed: CheckResult, area: str, name: str, limit: float = 0.0) -> CheckResult:
    """A check not run because ``failed``, which it depends on, failed."""
    return CheckResult(
        area=area,
        name=name,
        state="skip",
        reason=f"skipped: {failed.area}/{failed.name} failed",
        limit=limit,
    )


def exit_status(report: Report) -> int:
    """0 when no check failed (warnings included), :data:`EXIT_FAILED` otherwise."""
    return EXIT_FAILED if any(check.state == "fail" for check in report.checks) else 0


_LABELS: Final = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def render_text(report: Report) -> str:
    """The report as people read it: one line per check, then the likely cause."""
    lines = []
    for check in report.checks:
        step = ORDER.index(check.area) + 1 if check.area in ORDER else 0
        prefix = f"{step}. " if step else "   "
        took = f" ({check.ms:.0f} ms)" if check.ms >= 1 else ""
        lines.append(
            f"{_LABELS[check.state]}  {prefix}{check.area}/{check.name}: {check.reason}{took}"
        )
    cause = likely_cause(report.checks)
    if cause is None:
        warned = sum(check.state == "warn" for check in report.checks)
        tail = f"{warned} warning(s)" if warned else "every check passed"
        lines.append(f"{report.subject}: no check failed ({tail})")
    else:
        lines.append(f"likely cause: {cause.area}/{cause.name}: {cause.reason}")
        hint = report.hint or cause.hint
        if hint:
            lines.append(f"hint: {hint}")
    return "\n".join(lines) + "\n"
