"""What ``edgeplane demo`` does with its private fleet, step by step, and what it saw.

The story: register two edge environments beside the default cloud one, start their
agents, deploy a sample workflow that passes preflight on one and is refused on the other
(its secrets file lacks the secret), kill one agent to show it going offline, restart and
kill it a few times until the controller raises the flapping alert. Every step waits for
what the controller publishes (views, alerts) or answers (requests), never for a fixed
time, and gives up with a :class:`DemoFailed` naming what did not happen.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from edgeplane.controller.demo.fleet import AgentPlan, DemoFleet
from edgeplane.controller.errors import ControllerError, RequestRefused
from edgeplane.controller.mqtt import Connection
from edgeplane.controller.operator.workflow_file import load_workflow
from edgeplane.shared.codec import ALERT, CONTROLLER_STATUS, VIEW
from edgeplane.shared.errors import DecodeError, InvalidTopic
from edgeplane.shared.messages import Alert, EnvView, Preflight
from edgeplane.shared.rpc import (
    TERMINAL_STATES,
    DeploymentInfo,
    DeploymentList,
    DeploymentShow,
    DeployRequest,
    EnvCreate,
    EnvInfo,
    EnvList,
    Request,
)
from edgeplane.shared.topics import TopicKind, TopicRoot
from edgeplane.shared.workflow import Workflow

__all__ = [
    "CLOUD_ENV",
    "EDGE_ENVS",
    "Ask",
    "DemoFailed",
    "DemoOutcome",
    "FleetWatch",
    "Refusal",
    "demo_workflow",
    "summary",
    "surprises",
    "tell",
]

CLOUD_ENV: Final = "default-cloud"
EDGE_ENVS: Final = (("lab", "vision"), ("line", "vision"))  # location, purpose; stage dev
SECRET_NAME: Final = "DEMO_CAMERA_TOKEN"
MODEL: Final = ("part-detector", "1.2.0")
WORKFLOW_RESOURCE: Final = "workflow.yaml"
MAX_FLAP_CYCLES: Final = 6
STEP_TIMEOUT: Final = 15.0  # seconds any one step may take

T = TypeVar("T")
Ask = Callable[[Request], Awaitable[Any]]
"""Send one request to the controller and return its decoded result (or raise)."""


class DemoFailed(ControllerError):
    """A step of the demo did not happen in time; the message says which."""


@dataclass(frozen=True)
class Refusal:
    """A deployment the controller's gate refused, with its reason."""

    env: str
    reason: str


@dataclass
class DemoOutcome:
    """What the demo saw, for the summary."""

    broker: str = ""
    edge_envs: list[str] = field(default_factory=list)  # the one that passes, the one refused
    environments: list[EnvInfo] = field(default_factory=list)
    deployments: list[DeploymentInfo] = field(default_factory=list)
    failed_checks: dict[str, list[str]] = field(default_factory=dict)  # dep id -> details
    refusals: list[Refusal] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    views: dict[str, EnvView] = field(default_factory=dict)
    offline_env: str = ""
    flap_cycles: int = 0
    seconds: float = 0.0
    reports: dict[str, str] = field(default_factory=dict)  # bucket file name -> first line
    leaks: list[str] = field(default_factory=list)  # where the secret value showed up


class FleetWatch:
    """The controller's retained views, its alerts and its status, as they arrive."""

    def __init__(self, connection: Connection, root: TopicRoot) -> None:
        self.connection = connection
        self.root = root
        self.views: dict[str, EnvView] = {}
        self.alerts: list[Alert] = []
        self.controller_online = False
        self._changed = asyncio.Event()

    async def subscribe(self) -> None:
        for topic in (
            self.root.all_views(),
            self.root.all_alerts(),
            self.root.controller_status(),
        ):
            await self.connection.subscribe(topic)

    async def run(self) -> None:
        async for message in self.connection:
            self._take(message.topic, message.payload)
            self._changed.set()

    def _take(self, topic: str, payload: bytes) -> None:
        try:
            kind = self.root.parse(topic).kind
            if kind is TopicKind.VIEW:
                view = VIEW.decode(payload)
                self.views[view.env] = view
            elif kind is TopicKind.ALERTS:
                self.alerts.append(ALERT.decode(payload))
            elif kind is TopicKind.CONTROLLER_STATUS:
                self.controller_online = CONTROLLER_STATUS.decode(payload).status == "online"
        except (DecodeError, InvalidTopic):
            pass  # a cleared view (empty payload): nothing the story needs

    async def wait_for(self, check: Callable[[], T | None], what: str) -> T:
        """The first non-None ``check()``, re-checked on every message."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while (found := check()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"gave up after {STEP_TIMEOUT:g} s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue
        return found

    async def wait_status(self, env: str, status: str) -> EnvView:
        def seen() -> EnvView | None:
            view = self.views.get(env)
            return view if view is not None and view.status == status else None

        return await self.wait_for(seen, f"{env} to be {status}")

    async def wait_alert(self, env: str, kind: str) -> Alert:
        def raised() -> Alert | None:
            return next(
                (a for a in self.alerts if (a.env, a.kind, a.state) == (env, kind, "raised")),
                None,
            )

        return await self.wait_for(raised, f"a {kind} alert for {env}")


def demo_workflow(bucket: Path) -> Workflow:
    """The sample workflow shipped with the package, its bucket pointed at ``bucket`` and
    its step run by this interpreter. Loaded like any workflow file (``edgeplane deploy``)."""
    template = resources.files("edgeplane.controller.demo").joinpath(WORKFLOW_RESOURCE).read_text()
    text = template.replace("@BUCKET@", str(bucket)).replace("@PYTHON@", sys.executable)
    rendered = bucket.parent / "demo-workflow.yaml"
    rendered.write_text(text)
    return load_workflow(rendered)


async def tell(
    fleet: DemoFleet, ask: Ask, watch: FleetWatch, say: Callable[[str], None]
) -> DemoOutcome:
    """Run the story on a fleet whose broker and controller are started."""
    started = time.monotonic()
    outcome = DemoOutcome(broker=f"{fleet.broker_kind} on {fleet.broker_url}")
    await watch.wait_for(lambda: True if watch.controller_online else None, "the controller")
    say("controller online")

    edge_ids = outcome.edge_envs = await _register(ask, say)
    token = secrets.token_hex(16)  # a value that must never show up anywhere
    await _start_agents(fleet, watch, edge_ids, token, say)
    await _deploy(fleet, ask, edge_ids, outcome, say)
    outcome.offline_env = edge_ids[1]
    await _kill_and_flap(fleet, watch, outcome.offline_env, outcome, say)

    outcome.environments = await ask(EnvList())
    outcome.deployments = await ask(DeploymentList())
    outcome.alerts = list(watch.alerts)
    outcome.views = dict(watch.views)
    outcome.reports = _bucket_reports(fleet.bucket)
    outcome.leaks = _leaks(
        fleet.workdir, token, [await ask(DeploymentShow(id=d.id)) for d in outcome.deployments]
    )
    outcome.seconds = time.monotonic() - started
    return outcome


def _bucket_reports(bucket: Path) -> dict[str, str]:
    """What the workflow wrote into the results bucket: file name -> its first line."""
    found: dict[str, str] = {}
    for report in sorted(bucket.glob("*.txt")):
        found[report.name] = report.read_text(errors="replace").partition("\n")[0]
    return found


def _leaks(workdir: Path, token: str, deployments: list[DeploymentInfo]) -> list[str]:
    """Every log file and deployment whose text holds the secret value: none, we hope."""
    places = [
        str(path.relative_to(workdir))
        for path in sorted(workdir.rglob("*.log"))
        if token in path.read_text(errors="replace")
    ]
    places += [
        f"the events of {d.id}" for d in deployments if token in msgspec.json.encode(d).decode()
    ]
    return places


async def _register(ask: Ask, say: Callable[[str], None]) -> list[str]:
    """``env create`` for each edge environment; the first also creates the cloud one."""
    ids: list[str] = []
    for location, purpose in EDGE_ENVS:
        info: EnvInfo = await ask(EnvCreate(stage="dev", location=location, purpose=purpose))
        ids.append(info.id)
        say(f"registered {info.id} (stage dev, location {location}, purpose {purpose})")
    return ids


async def _start_agents(
    fleet: DemoFleet,
    watch: FleetWatch,
    edge_ids: list[str],
    token: str,
    say: Callable[[str], None],
) -> None:
    model = {MODEL[0]: [MODEL[1]]}
    plans = [
        AgentPlan(CLOUD_ENV),
        AgentPlan(edge_ids[0], secrets={SECRET_NAME: token}, models=model),
        AgentPlan(edge_ids[1], secrets={"OTHER_TOKEN": token}, models=model),
    ]
    for plan in plans:
        await fleet.add_agent(plan).start()
    for plan in plans:
        await watch.wait_status(plan.env_id, "online")
        say(f"agent {plan.env_id} online")


async def _deploy(
    fleet: DemoFleet,
    ask: Ask,
    edge_ids: list[str],
    outcome: DemoOutcome,
    say: Callable[[str], None],
) -> None:
    workflow = demo_workflow(fleet.bucket)
    fleet.bucket.mkdir(parents=True, exist_ok=True)
    sent: list[DeploymentInfo] = []
    for env in edge_ids:
        try:
            info: DeploymentInfo = await ask(DeployRequest(env=env, workflow=workflow))
        except RequestRefused as exc:  # the controller's gate refused it
            outcome.refusals.append(Refusal(env, str(exc)))
            say(f"deploy {workflow.name} to {env}: refused: {exc}")
            continue
        say(f"deploy {workflow.name} {workflow.version} to {env}: {info.id} {info.state}")
        sent.append(info)
    for info in sent:
        done = await _until_done(ask, info.id)
        outcome.failed_checks[done.id] = _failed_checks(done)
        say(f"deployment {done.id} on {done.env}: {done.state} {done.reason}".rstrip())


async def _until_done(ask: Ask, dep_id: str) -> DeploymentInfo:
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        info: DeploymentInfo = await ask(DeploymentShow(id=dep_id))
        if info.state in TERMINAL_STATES:
            return info
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"deployment {dep_id} on {info.env} still {info.state} after {STEP_TIMEOUT:g} s"
            )
        await asyncio.sleep(0.2)  # polling the controller's record, not synchronising


def _failed_checks(info: DeploymentInfo) -> list[str]:
    """``kind name: detail`` of each preflight check that failed."""
    found: list[str] = []
    for logged in info.events:
        if isinstance(logged.event, Preflight):
            found += [
                f"{check.kind} {check.name}: {check.detail}".rstrip(": ")
                for check in logged.event.checks
                if not check.ok
            ]
    return found


async def _kill_and_flap(
    fleet: DemoFleet,
    watch: FleetWatch,
    env: str,
    outcome: DemoOutcome,
    say: Callable[[str], None],
) -> None:
    agent = fleet.agents[env]
    await agent.kill()
    view = await watch.wait_status(env, "offline")
    say(f"killed agent {env} (SIGKILL): offline, reason {view.reason}")
    while not any(a.env == env and a.kind == "flapping" for a in watch.alerts):
        if outcome.flap_cycles == MAX_FLAP_CYCLES:
            raise DemoFailed(f"no flapping alert for {env} after {MAX_FLAP_CYCLES} restarts")
        outcome.flap_cycles += 1
        await agent.start()
        await watch.wait_status(env, "online")
        await agent.kill()
        await watch.wait_status(env, "offline")
        say(f"restarted and killed {env} again ({outcome.flap_cycles})")
    alert = await watch.wait_alert(env, "flapping")
    say(f"flapping alert raised for {env}: {alert.detail}".rstrip(": "))


def summary(outcome: DemoOutcome) -> str:
    """The short readable report printed at the end."""
    lines = [
        f"edgeplane demo: done in {outcome.seconds:.1f} s ({outcome.broker})",
        "",
        "Environments",
    ]
    for info in sorted(outcome.environments, key=lambda e: e.id):
        view = outcome.views.get(info.id)
        status: str = info.status
        if view is not None and view.reason and status == "offline":
            status += f" ({view.reason})"
        flapping = "  FLAPPING" if info.flapping or (view is not None and view.flapping) else ""
        lines.append(f"  {info.id:<18} {status}{flapping}")
    lines += ["", "Deployments"]
    for dep in sorted(outcome.deployments, key=lambda d: d.env):
        outcome_text = dep.state + (f": {dep.reason}" if dep.reason else "")
        lines.append(f"  {dep.env:<18} {dep.workflow} {dep.version}  {outcome_text}")
        lines += [
            f"  {'':<18}   failed check: {check}"
            for check in outcome.failed_checks.get(dep.id, [])
            if check not in dep.reason
        ]
    lines += [
        f"  {refusal.env:<18} refused by the controller: {refusal.reason}"
        for refusal in outcome.refusals
    ]
    lines += ["", "Results bucket"]
    lines += [f"  {name}: {line}" for name, line in outcome.reports.items()] or ["  empty"]
    secret = "found in no log and no event" if not outcome.leaks else "LEAKED"
    lines += ["", f"Secret {SECRET_NAME}: {secret}", "", "Alerts"]
    for alert in outcome.alerts:
        detail = f": {alert.detail}" if alert.detail else ""
        lines.append(f"  {alert.env:<18} {alert.kind} {alert.state}{detail}")
    if not outcome.alerts:
        lines.append("  none")
    lines += [
        "",
        f"{outcome.offline_env} was killed (SIGKILL) and restarted {outcome.flap_cycles} times;"
        " everything the demo started is stopped and its temporary directory removed.",
    ]
    return "\n".join(lines)


def surprises(outcome: DemoOutcome) -> list[str]:
    """How the run differed from the story it tells (empty: it went as told)."""
    found: list[str] = []
    states = {d.env: d for d in outcome.deployments}
    passing, refused = outcome.edge_envs
    if passing not in states or states[passing].state != "succeeded":
        found.append(f"the deployment to {passing} did not succeed")
    elif f"{passing}.txt" not in outcome.reports:
        found.append(f"the deployment to {passing} wrote nothing into the bucket")
    checks = outcome.failed_checks.get(states[refused].id, []) if refused in states else []
    if not any(SECRET_NAME in check for check in checks):
        found.append(f"the deployment to {refused} was not refused for the missing secret")
    if not any(a.env == refused and a.kind == "flapping" for a in outcome.alerts):
        found.append(f"no flapping alert for {refused}")
    found += [f"the secret value showed up in {place}" for place in outcome.leaks]
    return found
