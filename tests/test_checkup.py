"""The report form both troubleshooting commands share (pure)."""

from __future__ import annotations

import msgspec

from edgeplane.shared.checkup import (
    EXIT_FAILED,
    CheckResult,
    Report,
    exit_status,
    likely_cause,
    render_text,
    skipped_after,
)


def _check(area: str, name: str, state: str, reason: str, hint: str = "") -> CheckResult:
    return msgspec.convert(
        {"area": area, "name": name, "state": state, "reason": reason, "hint": hint},
        CheckResult,
    )


def test_the_first_failure_is_the_likely_cause_and_its_dependents_are_skipped() -> None:
    network = _check("network", "tcp", "fail", "connection refused", "start the broker")
    checks = [
        _check("process", "state-dir", "pass", "writable"),
        network,
        skipped_after(network, "credentials", "connack"),
        _check("resources", "disk", "fail", "97 % used"),
    ]
    report = Report(subject="gw-1", at=1.0, checks=checks)

    assert likely_cause(checks) is network
    assert exit_status(report) == EXIT_FAILED
    text = render_text(report)
    assert text.splitlines() == [
        "PASS  1. process/state-dir: writable",
        "FAIL  2. network/tcp: connection refused",
        "SKIP  3. credentials/connack: skipped: network/tcp failed",
        "FAIL  4. resources/disk: 97 % used",
        "likely cause: network/tcp: connection refused",
        "hint: start the broker",
    ]


def test_warnings_alone_exit_zero() -> None:
    report = Report(
        subject="gw-1", at=1.0, checks=[_check("resources", "cpu", "warn", "85 % (warn at 80)")]
    )

    assert exit_status(report) == 0
    assert render_text(report).endswith("gw-1: no check failed (1 warning(s))\n")


def test_a_report_round_trips_through_json() -> None:
    report = Report(subject="gw-1", at=2.5, checks=[_check("process", "heartbeat", "pass", "ok")])

    assert msgspec.json.decode(msgspec.json.encode(report), type=Report) == report
