"""``env diagnose``'s decisions (pure): the facts the daemon gathered in, the checks out.

The checks run in the documented troubleshooting order (:data:`shared.checkup.ORDER`):
process, network, credentials, resources, compatibility. A check that depends on a
failed one is skipped and says so; the first failure is the likely cause, with a hint of
what to do. Thresholds: :class:`Thresholds`, with the resource defaults of
:mod:`shared.resources`; the daemon passes the controller's own settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from edgeplane.controller.core.gate import iso_time, missing_models
from edgeplane.shared.checkup import CheckResult, CheckState, Report, likely_cause, skipped_after
from edgeplane.shared.errors import InvalidVersionSpec
from edgeplane.shared.messages import WorkflowProcess
from edgeplane.shared.resources import DEFAULT_THRESHOLDS
from edgeplane.shared.rpc import EnvInfo
from edgeplane.shared.workflow import Workflow

__all__ = [
    "THRESHOLDS",
    "DeployedWorkflow",
    "DiagnosisFacts",
    "Metrics",
    "PingOutcome",
    "Thresholds",
    "diagnose",
]

# The agent refused a command for one of these reasons: it does not trust our key.
UNAUTHENTICATED: Final = ("bad-signature", "unknown-key", "unsigned",
                          "no-command-key")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What counts as too much. Resources (percent): FAIL at or above ``cpu``/``mem``/
    ``disk``, WARN from ``warn_margin`` points below. ``round_trip_warn`` (seconds): a
    slower ping answer warns. Heartbeats missed in the window: WARN from ``missed_warn``,
    FAIL from ``missed_fail``. ``late_factor``: a heartbeat older than this many intervals
    is late (WARN; the presence core calls it offline at 3)."""

    cpu: float = DEFAULT_THRESHOLDS["cpu"]
    mem: float = DEFAULT_THRESHOLDS["mem"]
    disk: float = DEFAULT_THRESHOLDS["disk"]
    warn_margin: float = 5.0
    round_trip_warn: float = 1.0
    missed_warn: int = 1
    missed_fail: int = 3
    late_factor: float = 1.5


# The one place the merger points at the `--cpu-threshold` etc. settings.
THRESHOLDS: Final = Thresholds()


@dataclass(frozen=True, slots=True)
class Metrics:
    """The figures of an environment's last heartbeat (percent; None: not reported)."""

    cpu: float | None = None
    mem: float | None = None
    disk: float | None = None


@dataclass(frozen=True, slots=True)
class PingOutcome:
    """What became of the ``ping``: ``not-sent`` (``detail`` says why), ``pong`` (in
    ``round_trip`` seconds, with the agent's workflow ``processes``), ``rejected`` (the
    agent's ``detail``) or ``none`` (no answer within the limit)."""

    answer: Literal["not-sent", "pong", "rejected", "none"]
    round_trip: float = 0.0
    detail: str = ""
    processes: tuple[WorkflowProcess, ...] = ()
    executor: bool = False


@dataclass(frozen=True, slots=True)
class DeployedWorkflow:
    """A deployment the controller believes runs (or is under way) there."""

    dep: str
    state: str
    workflow: Workflow


@dataclass(frozen=True, slots=True)
class DiagnosisFacts:
    """Everything the checks judge. ``info``: what ``env show`` says (presence, inventory,
    credential); ``reason``: why presence last changed; ``link_missed``: the link-quality
    figure (heartbeats missed over ``link_window`` seconds, None: none seen); ``refused``:
    the logins the broker refused before the agent's latest connection, as the agent
    reported them (None: no connection's first heartbeat seen since the start), and why;
    ``limit``: each check's time limit."""

    info: EnvInfo
    ping: PingOutcome
    now: float
    limit: float
    reason: str = ""
    metrics: Metrics | None = None
    link_missed: int | None = None
    link_window: float = 0.0
    link_hour: tuple[float, int] | None = None  # (percent missed, reconnects) over the hour
    deployed: tuple[DeployedWorkflow, ...] = ()
    refused: int | None = None
    refused_reason: str = ""
    rotate_after: float | None = None
    key_id: str = ""
    thresholds: Thresholds = field(default=THRESHOLDS)


def diagnose(facts: DiagnosisFacts) -> Report:
    """Every check in order, a dependent one skipped after a failure; the likely cause."""
    checks: list[CheckResult] = []
    for area, name, needs, judge in _CHECKS:
        blocker = _blocker(checks, needs)
        if blocker is None:
            checks.append(judge(facts))
        elif blocker.state == "fail":
            checks.append(skipped_after(blocker, area, name, facts.limit))
        else:
            why = f"skipped: {blocker.area}/{blocker.name} was skipped"
            checks.append(_result(area, name, "skip", why, limit=facts.limit))
    cause = likely_cause(checks)
    return Report(
        subject=facts.info.id,
        at=facts.now,
        checks=checks,
        cause="" if cause is None else f"{cause.area}/{cause.name}",
        hint="" if cause is None else cause.hint,
    )


def _blocker(done: list[CheckResult], needs: tuple[str, ...]) -> CheckResult | None:
    """The first check of ``needs`` that failed (else was skipped): what stops this one."""
    needed = [check for check in done if f"{check.area}/{check.name}" in needs]
    failed = [check for check in needed if check.state == "fail"]
    return next(iter(failed or [c for c in needed if c.state == "skip"]), None)


def _result(
    area: str,
    name: str,
    state: CheckState,
    reason: str,
    *,
    hint: str = "",
    ms: float = 0.0,
    limit: float = 0.0,
    facts: dict[str, str] | None = None,
) -> CheckResult:
    return CheckResult(
        area=area,
        name=name,
        state=state,
        reason=_clip(reason),
        hint=_clip(hint),
        ms=ms,
        limit=limit,
        facts={k: _clip(v) for k, v in (facts or {}).items()},
    )


# --- 1. process ----------------------------------------------------------------------------
def _heartbeat(facts: DiagnosisFacts) -> CheckResult:
    info = facts.info
    env = info.id
    if info.status == "unknown" or info.last_seen is None:
        return _result("process", "heartbeat", "fail", f"{env} has never been online",
                       hint=f"start its agent: edge-agent run --env-id {env} ...")  # fmt: skip
    age = max(0.0, facts.now - info.last_seen)
    interval = info.interval or 0.0
    figures = {"age": f"{age:.1f}", "interval": f"{interval:g}", "status": info.status}
    if info.status != "online":
        why = f" ({facts.reason})" if facts.reason else ""
        return _result(
            "process", "heartbeat", "fail",
            f"offline{why} since {iso_time(info.since or info.last_seen)}; last heartbeat "
            f"{age:.0f} s ago",
            hint="is the agent running? check its host and its log (edge-agent run ...)",
            facts=figures,
        )  # fmt: skip
    late = interval > 0 and age > facts.thresholds.late_factor * interval
    state: CheckState = "warn" if late or info.flapping else "pass"
    reason = f"online, last heartbeat {age:.1f} s ago (interval {interval:g} s)"
    if late:
        reason = f"online but late: last heartbeat {age:.1f} s ago (interval {interval:g} s)"
    hint = ""
    if info.flapping:
        reason += "; flapping: it goes offline and online again and again"
        hint = (f"see edgeplane incidents --env {env} and events --env {env}; a flaky link "
                "shows in network/link, a crashing agent in its log")  # fmt: skip
    if info.open_incidents:
        kinds = ", ".join(sorted({i.kind for i in info.open_incidents}))
        reason += f"; {len(info.open_incidents)} open incident(s): {kinds}"
        figures["open_incidents"] = str(len(info.open_incidents))
    return _result("process", "heartbeat", state, reason, hint=hint, facts=figures)


def _workflows(facts: DiagnosisFacts) -> CheckResult:
    ping = facts.ping
    if ping.answer != "pong":
        return _result("process", "workflows", "skip",
                       "skipped: the agent did not answer the ping (network/round-trip)",
                       limit=facts.limit)  # fmt: skip
    processes = ping.processes
    reported = {p.dep for p in processes}
    missing = [d for d in facts.deployed if d.state == "running" and d.dep not in reported]
    down = [p for p in processes if not p.running]
    listed = ", ".join(_process_text(p) for p in processes) or (
        "none (its executor was never loaded)" if not ping.executor else "none"
    )
    figures = {"processes": str(len(processes)), "executor": str(ping.executor).lower()}
    if down or missing:
        gone = [f"{d.workflow.name} ({d.dep}) is not running there" for d in missing]
        return _result(
            "process", "workflows", "warn", "; ".join([*gone, f"reported: {listed}"]),
            hint=f"see its events: edgeplane events --env {facts.info.id}", facts=figures,
        )  # fmt: skip
    return _result("process", "workflows", "pass", f"reported: {listed}", facts=figures)


def _process_text(process: WorkflowProcess) -> str:
    state = "running" if process.running else "not running"
    restarts = f", {process.restarts} restarts" if process.restarts else ""
    return f"{process.workflow} {process.kind} {state}{restarts}"


# --- 2. network ----------------------------------------------------------------------------
def _round_trip(facts: DiagnosisFacts) -> CheckResult:
    ping, limit = facts.ping, facts.limit
    ms = ping.round_trip * 1000
    if ping.answer == "not-sent":
        env = facts.info.id
        hint = "" if facts.info.registered else (
            f"create its record: edgeplane env create {env} --stage S --location L --purpose P"
        )  # fmt: skip
        return _result("network", "round-trip", "fail", f"no ping sent: {ping.detail}",
                       hint=hint, limit=limit)  # fmt: skip
    if ping.answer == "none":
        return _result(
            "network", "round-trip", "fail",
            f"no answer to the ping within {limit:g} s (command and event topics)",
            hint="the agent is connected but does not answer commands: check its log and "
            "the broker's ACL for its cmd and events topics",
            limit=limit, ms=ms,
        )  # fmt: skip
    answered = "pong" if ping.answer == "pong" else "refused"
    figures = {"round_trip_ms": f"{ms:.0f}", "answer": answered}
    if ping.round_trip > facts.thresholds.round_trip_warn:
        return _result(
            "network", "round-trip", "warn",
            f"slow: the ping's answer ({answered}) took {ms:.0f} ms "
            f"(over {facts.thresholds.round_trip_warn * 1000:.0f} ms)",
            ms=ms, limit=limit, facts=figures,
        )  # fmt: skip
    return _result("network", "round-trip", "pass", f"ping answered ({answered})", ms=ms,
                   limit=limit, facts=figures)  # fmt: skip


def _link(facts: DiagnosisFacts) -> CheckResult:
    missed, limits = facts.link_missed, facts.thresholds
    if missed is None:
        return _result("network", "link", "skip",
                       "no heartbeat received since the controller started")  # fmt: skip
    window = f"in the last {facts.link_window:.0f} s"
    figures = {"missed": str(missed), "window": f"{facts.link_window:.0f}"}
    if facts.link_hour is not None:
        pct, reconnects = facts.link_hour
        window += f"; last hour: {pct:.1f} % missed, {reconnects} reconnect(s)"
        figures |= {"missed_pct_1h": f"{pct:.1f}", "reconnects_1h": str(reconnects)}
    if missed >= limits.missed_fail:
        return _result("network", "link", "fail", f"{missed} heartbeats missed {window}",
                       hint="the link drops messages: check the network between the agent "
                       "and the broker", facts=figures)  # fmt: skip
    state: CheckState = "warn" if missed >= limits.missed_warn else "pass"
    return _result("network", "link", state, f"{missed} heartbeats missed {window}",
                   facts=figures)  # fmt: skip


# --- 3. credentials ------------------------------------------------------------------------
def _broker_credential(facts: DiagnosisFacts) -> CheckResult:
    info = facts.info
    refused = ("refused logins: none reported since the controller started" if facts.refused
               is None else f"{facts.refused} login(s) refused before its latest connection"
               + (f" ({facts.refused_reason})" if facts.refused and facts.refused_reason
                  else ""))  # fmt: skip
    if info.credential_generation is None:
        state_: CheckState = "warn" if facts.refused else "pass"
        return _result("credentials", "broker", state_,
                       f"the broker has no identities (no broker init); {refused}")  # fmt: skip
    generation = info.credential_generation
    age = facts.now - info.credential_since if info.credential_since is not None else None
    aged = f", {age / 86_400:.1f} days old" if age is not None else ""
    figures = {"generation": str(generation), "rotation": info.rotation_state or "none"}
    base = f"generation {generation}{aged}"
    if info.box_key_mismatch:
        return _result(
            "credentials", "broker", "fail",
            f"{base}: its latest connection reported a box key other than the pinned one",
            hint=f"another runtime uses this identity, or the agent was reinstalled: "
            f"edgeplane env rotate-credentials {info.id} --repin",
            facts=figures,
        )  # fmt: skip
    if info.rotation_state:
        since = f" since {iso_time(info.rotation_started)}" if info.rotation_started else ""
        return _result(
            "credentials", "broker", "warn",
            f"{base}; rotation to generation {info.rotation_target} {info.rotation_state}"
            f"{since}; {refused}",
            facts=figures,
        )  # fmt: skip
    due = facts.rotate_after is not None and age is not None and age > facts.rotate_after
    state: CheckState = "warn" if due or facts.refused else "pass"
    tail = "; due for rotation" if due else ""
    return _result("credentials", "broker", state, f"{base}{tail}; {refused}", facts=figures)


def _command_key(facts: DiagnosisFacts) -> CheckResult:
    ping = facts.ping
    key = f" (key {facts.key_id})" if facts.key_id else ""
    if ping.answer == "pong":
        return _result("credentials", "command-key", "pass",
                       f"the agent accepted the signed ping{key}")  # fmt: skip
    if ping.answer == "rejected" and ping.detail.startswith(UNAUTHENTICATED):
        return _result(
            "credentials", "command-key", "fail",
            f"the agent refused the signed ping: {ping.detail}",
            hint="the agent does not trust this controller's command key: give it "
            "command_key (edgeplane controller rotate-command-key status shows the key)",
        )  # fmt: skip
    if ping.answer == "rejected":
        return _result("credentials", "command-key", "warn",
                       f"the agent refused the ping: {ping.detail}")  # fmt: skip
    return _result("credentials", "command-key", "skip", "skipped: no answer to the ping")


# --- 4. resources --------------------------------------------------------------------------
def _resource(name: Literal["cpu", "mem", "disk"]) -> Callable[[DiagnosisFacts], CheckResult]:
    def judge(facts: DiagnosisFacts) -> CheckResult:
        value = None if facts.metrics is None else getattr(facts.metrics, name)
        if value is None:
            return _result("resources", name, "skip", f"{name} not reported in its heartbeats")
        limit = float(getattr(facts.thresholds, name))
        warn_from = limit - facts.thresholds.warn_margin
        figures = {"percent": f"{value:.1f}", "threshold": f"{limit:g}"}
        if value >= limit:
            return _result("resources", name, "fail",
                           f"{value:.1f} % (threshold {limit:g} %)",
                           hint=_RESOURCE_HINTS[name], facts=figures)  # fmt: skip
        state: CheckState = "warn" if value >= warn_from else "pass"
        return _result("resources", name, state, f"{value:.1f} % (threshold {limit:g} %)",
                       facts=figures)  # fmt: skip

    return judge


_RESOURCE_HINTS: Final = {
    "cpu": "the host is saturated: see what else runs there, or deploy less",
    "mem": "the host is short of memory: see what else runs there, or deploy less",
    "disk": "free disk space on the agent's host (models, logs, work directories)",
}


# --- 5. compatibility ----------------------------------------------------------------------
def _models(facts: DiagnosisFacts) -> CheckResult:
    deployed = facts.deployed
    if not deployed:
        return _result("compatibility", "models", "pass", "nothing deployed there")
    info = facts.info
    inventory = info.models if info.models or info.platform is not None else None
    problems: list[str] = []
    for item in deployed:
        try:
            problems += missing_models(info.id, item.workflow.requires.models, inventory)
        except InvalidVersionSpec as exc:
            problems.append(f"{item.workflow.name}: {exc}")
    names = ", ".join(sorted({f"{d.workflow.name} {d.workflow.version}" for d in deployed}))
    if problems:
        return _result("compatibility", "models", "fail", "; ".join(problems),
                       hint="put the model in the agent's models directory (it reports it "
                       "at its next connection), or deploy a version that fits",
                       facts={"deployed": names})  # fmt: skip
    return _result("compatibility", "models", "pass",
                   f"every model {names} needs is there", facts={"deployed": names})  # fmt: skip


def _platform(facts: DiagnosisFacts) -> CheckResult:
    platform = facts.info.platform
    if platform is None:
        return _result("compatibility", "platform", "warn", "the agent reported no platform")
    parts = [platform.os, platform.arch]
    parts += [f"python {platform.py}" if platform.py else ""]
    parts += [f"agent {platform.agent}" if platform.agent else ""]
    text = " ".join(part for part in parts if part) or "reported"
    gpu = ", gpu" if platform.gpu else ""
    return _result("compatibility", "platform", "pass",
                   f"{text}{gpu}; workflows declare no platform needs")  # fmt: skip


_Judge = Callable[[DiagnosisFacts], CheckResult]
_HEARTBEAT: Final = ("process/heartbeat",)
_PING: Final = ("process/heartbeat", "network/round-trip")

# (area, name, the checks it depends on, the judge), in the documented order.
_CHECKS: Final[Sequence[tuple[str, str, tuple[str, ...], _Judge]]] = (
    ("process", "heartbeat", (), _heartbeat),
    ("process", "workflows", _HEARTBEAT, _workflows),
    ("network", "round-trip", _HEARTBEAT, _round_trip),
    ("network", "link", _HEARTBEAT, _link),
    ("credentials", "broker", (), _broker_credential),
    ("credentials", "command-key", _PING, _command_key),
    ("resources", "cpu", _HEARTBEAT, _resource("cpu")),
    ("resources", "mem", _HEARTBEAT, _resource("mem")),
    ("resources", "disk", _HEARTBEAT, _resource("disk")),
    ("compatibility", "models", (), _models),
    ("compatibility", "platform", (), _platform),
)


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
