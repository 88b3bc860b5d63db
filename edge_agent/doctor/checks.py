"""The doctor's decisions, pure: what the probes found (plain values) in, a check's result
out. Thresholds of the resource checks: WARN at 90 % (as the controller's pressure alerts),
FAIL at 98 %; the cpu only warns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from edgeplane.shared.checkup import CheckResult, CheckState

__all__ = [
    "BUSY_RTT",
    "CERT_WARN_DAYS",
    "FAIL_PERCENT",
    "WARN_PERCENT",
    "LockFinding",
    "LoginFinding",
    "OutboxFinding",
    "StateDirFinding",
    "judge_cert",
    "judge_command_keys",
    "judge_lock",
    "judge_login",
    "judge_mqtt_connect",
    "judge_outbox",
    "judge_percent",
    "judge_round_trip",
    "judge_state_dir",
    "judge_workflow",
    "result",
]

WARN_PERCENT: Final = 90.0
FAIL_PERCENT: Final = 98.0
CERT_WARN_DAYS: Final = 14.0
BUSY_RTT: Final = 1.0  # seconds: a round trip slower than this is worth a warning
_DAY: Final = 86_400.0
_LOGIN_HINTS: Final = {
    134: "the user name or password is wrong: use the newest bootstrap file of this "
    "environment (edgeplane env rotate-credentials ID makes a new one)",
    135: "the broker does not let this identity in: check username and password, and that "
    "the environment is enrolled (edgeplane env show ID)",
}


def result(
    area: str, name: str, state: CheckState, reason: str, hint: str = "", **facts: object
) -> CheckResult:
    return CheckResult(
        area=area,
        name=name,
        state=state,
        reason=reason[:500],
        hint=hint[:500],
        facts={key: str(value)[:500] for key, value in facts.items() if value is not None},
    )


# --- process ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StateDirFinding:
    path: str
    exists: bool
    writable: bool  # a file could be created and removed in it (or in its parent, if absent)
    problem: str = ""  # why not, in the system's words
    retired: str = ""  # the retired marker's message


def judge_state_dir(found: StateDirFinding) -> CheckResult:
    where = repr(found.path)
    if found.retired:
        return result("process", "state-dir", "fail", found.retired, "use a fresh state directory")
    if found.exists and found.writable:
        return result("process", "state-dir", "pass", f"state directory {where} is writable")
    if not found.exists and found.writable:
        return result(
            "process",
            "state-dir",
            "warn",
            f"state directory {where} does not exist yet (the agent makes it at its start)",
        )
    return result(
        "process",
        "state-dir",
        "fail",
        f"state directory {where} is not writable: {found.problem or 'permission denied'}",
        "give the agent's user a state directory it owns (--state-dir), mode 0700",
    )


@dataclass(frozen=True, slots=True)
class LockFinding:
    held: bool
    pid: int = 0
    env: str = ""
    problem: str = ""


def judge_lock(found: LockFinding, env: str) -> CheckResult:
    if found.problem:
        return result("process", "agent", "fail", found.problem)
    if not found.held:
        return result(
            "process",
            "agent",
            "warn",
            f"no agent runs on this state directory now: {env} stays offline until one does",
            f"start it with these settings (edge-agent run ...; or its service: systemctl "
            f"start edge-agent), then check `edgeplane status {env}`",
        )
    pid = found.pid or "?"
    if not found.env:  # an agent starting this instant has not written itself down yet
        return result(
            "process", "agent", "warn", f"the state directory is locked by pid {pid}, unnamed"
        )
    if found.env == env:
        return result(
            "process", "agent", "pass", f"the agent of {env} runs now (pid {pid})", pid=pid
        )
    return result(
        "process",
        "agent",
        "fail",
        f"the state directory is locked by another process (pid {pid}, environment "
        f"{found.env or '?'}), not by an agent of {env}",
        "give each agent its own state directory (--state-dir)",
        pid=pid,
    )


@dataclass(frozen=True, slots=True)
class OutboxFinding:
    exists: bool
    rows: int = 0
    size: int = 0
    oldest: float | None = None  # unix seconds of the oldest event waiting
    problem: str = ""


def judge_outbox(found: OutboxFinding, now: float) -> CheckResult:
    if found.problem:
        return result(
            "process",
            "outbox",
            "fail",
            f"the outbox cannot be opened: {found.problem}",
            "move the damaged outbox.db aside; its unsent events are lost",
        )
    if not found.exists:
        return result("process", "outbox", "pass", "no outbox yet (made at the agent's start)")
    age = "" if found.oldest is None else f", the oldest {max(0.0, now - found.oldest):.0f} s old"
    return result(
        "process",
        "outbox",
        "pass",
        f"the outbox opens: {found.rows} event(s) waiting{age}, {found.size} bytes",
        rows=found.rows,
        bytes=found.size,
    )


# --- network and credentials --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoginFinding:
    """The trial connection: ``answered`` a CONNACK came; ``refused`` its failure reason;
    ``client_id`` the one used; ``not_tried`` why the login could not be put to the test."""

    answered: bool
    client_id: str
    refused: str = ""
    code: int = 0
    connect_seconds: float = 0.0
    round_trip: float | None = None
    not_tried: str = ""


def judge_mqtt_connect(found: LoginFinding, limit: float) -> CheckResult:
    if not found.answered:
        return result(
            "network",
            "mqtt-connect",
            "fail",
            found.not_tried
            or f"no CONNACK within {limit:g} s: the port does not speak MQTT, or the broker hangs",
            "check the broker URL's port and the broker's own log",
        )
    answer = f"refused: {found.refused}, see credentials" if found.refused else "accepted"
    return result(
        "network",
        "mqtt-connect",
        "pass",
        f"the broker answered CONNECT in {found.connect_seconds * 1000:.0f} ms ({answer})",
        client_id=found.client_id,
    )


def judge_round_trip(found: LoginFinding) -> CheckResult:
    if found.refused:
        return result("network", "round-trip", "skip", "not connected: the login was refused")
    if found.round_trip is None:
        return result(
            "network",
            "round-trip",
            "fail",
            "connected, but SUBSCRIBE got no SUBACK in time",
            "the broker is overloaded or the link drops packets",
        )
    ms = found.round_trip * 1000
    state: CheckState = "warn" if found.round_trip > BUSY_RTT else "pass"
    return result(
        "network", "round-trip", state, f"SUBSCRIBE answered in {ms:.0f} ms", ms=f"{ms:.1f}"
    )


def judge_login(found: LoginFinding, username: str | None) -> CheckResult:
    who = f"as {username}" if username else "without a user name"
    if found.not_tried:
        return result("credentials", "login", "warn", found.not_tried)
    if not found.refused:
        return result("credentials", "login", "pass", f"the broker accepted the login {who}")
    return result(
        "credentials",
        "login",
        "fail",
        f"the broker refused the login {who}: {found.refused} (CONNACK {found.code})",
        _LOGIN_HINTS.get(found.code, "check the identity settings (username, password)"),
        code=found.code,
    )


def judge_cert(name: str, area: str, subject: str, expires: float, now: float) -> CheckResult:
    """A certificate's expiry: FAIL once expired, WARN within :data:`CERT_WARN_DAYS`."""
    days = (expires - now) / _DAY
    if days <= 0:
        return result(area, name, "fail", f"{subject} expired {-days:.0f} day(s) ago", "renew it")
    state: CheckState = "warn" if days < CERT_WARN_DAYS else "pass"
    return result(area, name, state, f"{subject} valid for {days:.0f} more day(s)")


def judge_command_keys(key_ids: Sequence[str], problem: str = "") -> CheckResult:
    if problem:
        return result("credentials", "command-key", "fail", problem)
    if not key_ids:
        return result(
            "credentials",
            "command-key",
            "fail",
            "no command key: the agent refuses every command, none is signed by a key it trusts",
            "give --command-key-file (the controller's command-key.pub) or --command-key",
        )
    return result(
        "credentials",
        "command-key",
        "pass",
        f"{len(key_ids)} command key(s) trusted: {', '.join(key_ids)}",
    )


# --- resources and workflows --------------------------------------------------------------
def judge_percent(
    name: str, what: str, percent: float | None, *, can_fail: bool = True
) -> CheckResult:
    if percent is None:
        return result("resources", name, "warn", f"{what} could not be measured")
    reason = f"{what} {percent:.1f} % used"
    if can_fail and percent >= FAIL_PERCENT:
        return result("resources", name, "fail", reason, f"free some {what} on this gateway")
    if percent >= WARN_PERCENT:
        return result("resources", name, "warn", f"{reason} (warning at {WARN_PERCENT:.0f} %)")
    return result("resources", name, "pass", reason, percent=percent)


def judge_workflow(name: str, failures: Sequence[str], checked: int) -> CheckResult:
    if failures:
        return result(
            "compatibility",
            f"workflow {name}",
            "fail",
            f"{name} would not start again: {'; '.join(failures)}",
            "put the model, secret or bucket in place, or deploy a version that fits",
        )
    return result(
        "compatibility",
        f"workflow {name}",
        "pass",
        f"{name}: its {checked} requirement(s) are met",
    )
