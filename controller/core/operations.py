"""Environments and deployments: what the controller does about requests, statuses, events
and time, as effects for the shell to carry out (no I/O here).

Every method returns :class:`Effects`: rows to store (:class:`controller.daemon.store.Writes`) and
messages to publish (:class:`Outgoing`). The service stores the rows first and publishes
only once they are committed, so a command is never out before its deployment is on disk.

What it keeps in memory: the environment records (:class:`Registry`), each agent's last
reported inventory, the deployments in progress (:class:`DeploymentBook`), the event
streams already logged (:class:`SeenEvents`) and the sequence of the controller's own
events (``src`` ``controller``). Presence is read from the presence core.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeplane.controller.core.critical import DEFAULT_MAX_AGE, judge_critical, steady
from edgeplane.controller.core.deployment_book import DeploymentBook
from edgeplane.controller.core.deployments import (
    CONTROLLER_SRC,
    Change,
    Deployment,
    OperatorCommand,
    expiry_reason,
)
from edgeplane.controller.core.gate import (
    Decision,
    Queue,
    Refuse,
    judge_deploy,
    offline_sentence,
)
from edgeplane.controller.core.oplog import SeenEvents
from edgeplane.controller.core.presence import EnvRecord, Presence
from edgeplane.controller.core.records import Forgotten, LogEntry, ReportedInventory, Writes
from edgeplane.controller.core.registry import Environment, Registry, unknown_environment
from edgeplane.shared.clock import Clock
from edgeplane.shared.codec import encode
from edgeplane.shared.errors import RequestRefused
from edgeplane.shared.messages import (
    Cancel,
    Cancelled,
    Command,
    Deploy,
    EnvView,
    Event,
    Expired,
    Failed,
    OfflineStatus,
    OnlineStatus,
    Overridden,
    Preflight,
    Restart,
    Retire,
    Stopped,
    Update,
    replace,
)
from edgeplane.shared.rpc import (
    CancelResult,
    DeploymentInfo,
    DeploymentState,
    DeployRequest,
    EnvCreate,
    EnvForget,
    EnvInfo,
    EnvRestart,
    EnvRetire,
    EnvUpdate,
)
from edgeplane.shared.topics import TopicRoot
from edgeplane.shared.workflow import Workflow

__all__ = ["CONTROLLER_SRC", "Effects", "Operations", "Outgoing", "new_id"]

# the controller's own events
_OwnKind = type[Expired] | type[Stopped] | type[Failed] | type[Cancelled] | type[Overridden]
# what the agent may still be running, or about to run, of a deployment not final
_ON_THE_AGENT: tuple[DeploymentState, ...] = (
    "sent",
    "accepted",
    "running",
    "restarting",
    "stopped",
    "failed",
)


def new_id(prefix: str) -> str:
    """A short unique id: ``d-`` + 10 hex digits for a deployment, ``c-`` for a command."""
    return f"{prefix}-{secrets.token_hex(5)}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish (QoS 1). ``expiry``: the MQTT message expiry, seconds;
    ``correlation``: the correlation data of a reply; ``command``: the payload is a
    command's JSON, which the shell signs (the envelope is what goes out)."""

    topic: str
    payload: bytes
    retain: bool
    expiry: int | None = None
    correlation: bytes | None = None
    command: bool = False


@dataclass(slots=True)
class Effects:
    writes: Writes = field(default_factory=Writes)
    outgoing: list[Outgoing] = field(default_factory=list)

    def extend(self, other: Effects) -> None:
        self.writes.extend(other.writes)
        self.outgoing.extend(other.outgoing)


class Operations:
    def __init__(
        self,
        root: TopicRoot,
        clock: Clock,
        presence: Presence,
        *,
        command_ttl: float,
        records: Iterable[Environment] = (),
        inventories: Iterable[ReportedInventory] = (),
        deployments: Iterable[Deployment] = (),
        issued: Iterable[tuple[str, str, str]] = (),
        commands: Iterable[OperatorCommand] = (),
        seen: Iterable[tuple[str, str, int]] = (),
        controller_seq: int = 0,
        validation_max_age: float = DEFAULT_MAX_AGE,
        dry_runs: Iterable[Deployment] = (),
    ) -> None:
        """``dry_runs``: finished dry runs, the latest of each environment, workflow and
        version (what validates a critical workflow) and those that deployments waiting
        for their validation name."""
        self._root = root
        self._clock = clock
        self._presence = presence
        self._command_ttl = command_ttl
        self.registry = Registry(records)
        self._inventory: dict[str, ReportedInventory] = {i.env: i for i in inventories}
        self.book = DeploymentBook(clock, deployments, issued, commands)
        self.seen = SeenEvents(seen)
        self._seq = controller_seq
        self._max_age = validation_max_age
        # (env, workflow name) -> version -> the latest finished dry run of it
        self._validations: dict[tuple[str, str], dict[str, Deployment]] = {}
        self._restored_dry_runs = {d.id: d for d in dry_runs}
        # How many incidents of an environment are open (the incidents' book says, once
        # the service has one): each view carries it.
        self.open_incidents: Callable[[str], int] = _no_incidents
        for dry_run in self._restored_dry_runs.values():
            self._note_dry_run(dry_run)

    # --- start ----------------------------------------------------------------------------
    def ensure_default(self) -> Effects:
        effects = Effects()
        effects.writes.records.extend(self.registry.ensure_default(self._clock.time()))
        return effects

    def after_sync(self) -> Effects:
        """Queued deployments of environments that are online now (they came online while
        the controller was away) go out."""
        effects = Effects()
        for env in sorted({d.env for d in self.book if d.state == "queued" and not d.waiting}):
            presence = self._presence.get(env)
            if presence is not None and presence.status == "online":
                effects.extend(self._came_online(env))
        effects.extend(self._resume_waiting())
        return effects

    def _resume_waiting(self) -> Effects:
        """Deployments waiting for a dry run that ended while nobody carried it over (it
        is final in the store): released or failed now."""
        effects = Effects()
        for waiting in self.book.waiting():
            if self.book.get(waiting.after) is not None:
                continue  # still under way: its end releases it
            dry_run = self._restored_dry_runs.get(waiting.after)
            if dry_run is None:
                why = f"its validation {waiting.after} ended without a result kept"
                effects.extend(self._deployment_event(Failed, waiting, why))
            else:
                effects.extend(self._release(waiting, dry_run))
        self._restored_dry_runs.clear()
        return effects

    # --- views ----------------------------------------------------------------------------
    def public_view(self, view: EnvView) -> EnvView | None:
        """The view to publish for a presence view: none for a retired environment (its
        view stays cleared), ``registered`` false for one without a record."""
        record = self.registry.get(view.env)
        if record is not None and record.retired is not None:
            return None
        registered = record is not None
        incidents = self.open_incidents(view.env)
        if view.registered == registered and view.open_incidents == incidents:
            return view
        return replace(view, registered=registered, open_incidents=incidents)

    def expected_views(self) -> dict[str, EnvView | None]:
        """What ``R/view/{env}`` should hold for every environment known (None: nothing,
        a retired environment)."""
        views: dict[str, EnvView | None] = {}
        for presence in self._presence.records():
            views[presence.env] = self.public_view(presence.view())
        for record in self.registry:
            if record.retired is not None:
                views[record.id] = None
            elif record.id not in views:
                views[record.id] = _unknown_view(record)
        return views

    def expected_view(self, env: str) -> EnvView | None:
        """What ``R/view/{env}`` should hold (None: nothing, for a retired environment or
        one the controller does not know)."""
        record = self.registry.get(env)
        if record is not None and record.retired is not None:
            return None
        presence = self._presence.get(env)
        if presence is not None:
            return self.public_view(presence.view())
        return None if record is None else _unknown_view(record)

    def _view_of(self, record: Environment) -> Outgoing:
        presence = self._presence.get(record.id)
        view = _unknown_view(record) if presence is None else self.public_view(presence.view())
        payload = b"" if view is None else encode(view)
        return Outgoing(self._root.view(record.id), payload, True)

    # --- statuses -------------------------------------------------------------------------
    def after_status(self, message: OnlineStatus | OfflineStatus, came_online: bool) -> Effects:
        """An agent's inventory, and what its coming online sets off."""
        effects = Effects()
        if isinstance(message, OnlineStatus) and (
            message.models is not None or message.platform is not None
        ):
            effects.writes.inventory.append(self._take_inventory(message))
        if came_online:
            effects.extend(self._came_online(message.env))
        return effects

    def _take_inventory(self, message: OnlineStatus) -> ReportedInventory:
        known = self._inventory.get(message.env)
        models: Mapping[str, Sequence[str]] = (
            message.models if message.models is not None else (known.models if known else {})
        )
        platform = message.platform if message.platform is not None else (
            known.platform if known else None
        )  # fmt: skip
        inventory = ReportedInventory(message.env, models, platform, self._clock.time())
        self._inventory[message.env] = inventory
        return inventory

    def _came_online(self, env: str) -> Effects:
        effects = Effects(writes=Writes(urgent=True))
        record = self.registry.get(env)
        if record is None:
            return effects  # unregistered: never any command
        if record.retired is not None:
            effects.extend(self._operator_command(env, Retire(id=new_id("c"))))
            return effects
        for deployment in self.book.queued_for(env):
            effects.extend(self._send(deployment))
        return effects

    # --- events ---------------------------------------------------------------------------
    def stranger(self, event: Event) -> str:
        """Why ``event`` names a deployment or a command this controller never sent to its
        environment ("" when it does not): such an event is dropped before it is logged,
        or even counted as seen (a forged ``seq`` must not hide the agent's real events)."""
        return self.book.stranger(event)

    def issued(self, env: str, cmd: str) -> None:
        """Command ``cmd`` went (or goes) to ``env`` by another path than :meth:`command`
        (the command keys' ``trust`` and ``distrust``): its answers are the agent's own."""
        self.book.note_command(env, cmd)

    def on_event(self, event: Event) -> Effects | None:
        """Log ``event`` once and move its deployment on; None for a duplicate."""
        if not self.seen.first_time(event.env, event.src, event.seq):
            return None
        effects = Effects()
        effects.writes.events.append(LogEntry(event, self._clock.time()))
        if event.env in self.registry:  # an unregistered agent's events change nothing
            change = self.book.on_event(event)
            _write_change(effects, change)
            if isinstance(event, Preflight):
                effects.extend(self._judged_preflight(change.deployments))
            effects.extend(self._dry_runs_ended(change.deployments))
        return effects

    def _judged_preflight(self, moved: Sequence[Deployment]) -> Effects:
        """A deployment failed by the controller's reading of a preflight (a requirement
        left unchecked) is told on its events topic, so ``deploy --wait`` sees it."""
        effects = Effects()
        for deployment in moved:
            if deployment.state == "failed":
                effects.extend(self._deployment_event(Failed, deployment, deployment.reason))
        return effects

    # --- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """Wall-clock time of the next deployment deadline."""
        return self.book.next_deadline()

    def tick(self) -> Effects:
        """Deployments whose time ran out (``expired``) and commands that got no answer
        before theirs did (``unanswered``), each told with an ``expired`` event of the
        controller's own, which the fold takes like the agent's."""
        effects = Effects(writes=Writes(urgent=True))
        deployments, commands = self.book.due()
        for deployment in deployments:
            effects.extend(self._deployment_event(Expired, deployment, expiry_reason(deployment)))
        for command in commands:
            reason = f"no answer from the agent to {command.op} before the command expired"
            effects.extend(self._own_event(Expired, command.env, cmd=command.id, reason=reason))
        return effects

    # --- requests -------------------------------------------------------------------------
    def create(self, request: EnvCreate) -> tuple[EnvInfo, Effects]:
        created = self.registry.create(request, self._clock.time())
        effects = Effects(writes=Writes(records=created, urgent=True))
        effects.outgoing.extend(self._view_of(record) for record in created)
        return self.env_info(created[-1].id), effects

    def planned_id(self, request: EnvCreate) -> str:
        """The id :meth:`create` would give, refused as it would be, nothing changed."""
        return self.registry.plan(request, self._clock.time())[-1].id

    def update(self, request: EnvUpdate) -> tuple[EnvInfo, Effects]:
        record = self.registry.require(request.id)
        effects = Effects(writes=Writes(urgent=True))
        to_agent = request.interval is not None or bool(request.config)
        if to_agent:
            self._require_online(request.id, "take new settings")
        if request.labels or request.remove_labels:
            record = self.registry.update_labels(request.id, request.labels, request.remove_labels)
            effects.writes.records.append(record)
        if to_agent:
            command = Update(
                id=new_id("c"),
                interval=request.interval,
                config=dict(request.config),
                labels=dict(record.labels),
            )
            effects.extend(self._operator_command(request.id, command))
        return self.env_info(request.id), effects

    def restart(self, request: EnvRestart) -> tuple[dict[str, str], Effects]:
        self.registry.require(request.id)
        self._require_online(request.id, "restart")
        command = Restart(id=new_id("c"), workflow=request.workflow)
        return {"cmd": command.id}, self._operator_command(request.id, command)

    def retire(self, request: EnvRetire) -> tuple[EnvInfo, Effects]:
        if request.id not in self.registry and self._presence.get(request.id) is not None:
            raise RequestRefused(
                "not-found",
                f"{request.id!r} has no record, so nothing to retire (an agent connected with "
                f"this id, unregistered); to remove it: edgeplane env forget {request.id}",
            )
        record = self.registry.retire(request.id, self._clock.time())
        effects = Effects(writes=Writes(records=[record], urgent=True))
        effects.outgoing.append(Outgoing(self._root.view(record.id), b"", True))
        presence = self._presence.get(record.id)
        if presence is not None and presence.status == "online":
            effects.extend(self._operator_command(record.id, Retire(id=new_id("c"))))
        waiting = [d for d in self.book.waiting() if d.env == record.id]
        for deployment in [*self.book.queued_for(record.id), *waiting]:
            reason = f"environment {record.id} retired"
            effects.extend(self._deployment_event(Stopped, deployment, reason))
        return self.env_info(record.id), effects

    def forget(self, request: EnvForget) -> tuple[EnvInfo, Effects]:
        """Drop what is kept of an id without a record (a mistyped agent id), or the
        leftovers of a retired one (its record and history stay): its presence, inventory
        and, without a record, its events; its view and retained status are cleared."""
        env = request.id
        info = self.env_info(env)  # not-found for an id nobody knows
        record = self.registry.get(env)
        if record is not None and record.retired is None:
            raise RequestRefused(
                "exists",
                f"environment {env!r} has a record (project {record.project!r}): retire it "
                f"instead (edgeplane env retire {env}); forget is for an id without a "
                "record, or what a retired one left",
            )
        presence = self._presence.get(env)
        if presence is not None and presence.status == "online":
            raise RequestRefused(
                "online",
                f"the agent of {env!r} is connected now and would come straight back: stop "
                f"that agent (or fix its --env-id) first, then forget {env}",
            )
        self._presence.forget(env)
        self._inventory.pop(env, None)
        if record is None:
            self.seen.forget(env)
        writes = Writes(forgotten=[Forgotten(env, history=record is None)], urgent=True)
        cleared = [Outgoing(self._root.view(env), b"", True)]
        cleared.append(Outgoing(self._root.status(env), b"", True))
        return info, Effects(writes=writes, outgoing=cleared)

    def deploy(self, request: DeployRequest) -> tuple[DeploymentInfo, Effects]:
        """Send, queue or refuse one deployment (the gate, then a critical workflow's
        checks: :meth:`critical_refusal`); with ``validate_first`` its dry run goes out
        first and it waits for it."""
        now = self._clock.time()
        reason = request.reason.strip()
        if request.force and not reason:
            raise RequestRefused(
                "invalid", "force: a reason is required (--reason TEXT); the override is recorded"
            )
        if request.validate_first and request.dry_run:
            raise RequestRefused(
                "invalid", "validate_first: a dry run is the validation itself (drop one of them)"
            )
        decision = self._gate(
            request.env,
            request.workflow,
            when_online=request.when_online,
            dry_run=request.dry_run,
            ttl=request.ttl,
            force=request.force,
        )
        if isinstance(decision, Refuse):
            raise RequestRefused(decision.code, decision.message)
        validation = ""
        if request.workflow.critical and not request.dry_run:
            refusal = self.critical_refusal(
                request.env, request.workflow, validated=not request.validate_first
            )
            if refusal is not None:
                raise RequestRefused(refusal.code, refusal.message)
            if not request.validate_first:
                validation = self._latest_validation(request.env, request.workflow)
        overridden = decision.overridden
        deployment = Deployment(
            id=new_id("d"),
            env=request.env,
            workflow=request.workflow,
            state="queued",
            created=now,
            updated=now,
            cmd="",
            expires=decision.expires if isinstance(decision, Queue) else None,
            dry_run=request.dry_run,
            when_online=request.when_online,
            forced=f"{overridden}: {reason}" if overridden else "",
            validation=validation,
        )
        if request.validate_first:
            effects = self._validate_first(request, deployment)
            deployment = effects.writes.deployments[-1]
        elif isinstance(decision, Queue):
            self.book.put(deployment)
            effects = Effects(writes=Writes(deployments=[deployment], urgent=True))
        else:
            self.book.put(deployment)
            effects = self._send(deployment)
            deployment = effects.writes.deployments[-1]
        if overridden:
            fields = {"dep": deployment.id, "cmd": deployment.cmd, "check": overridden}
            effects.extend(self._own_event(Overridden, deployment.env, **fields, reason=reason))
        return deployment.info(), effects

    def _validate_first(self, request: DeployRequest, deployment: Deployment) -> Effects:
        """The dry run of ``request``'s workflow, sent (or queued) now, and ``deployment``
        waiting for it: both written in one batch, the dry run first."""
        forced = bool(deployment.forced)
        dry_request = replace(
            request,
            dry_run=True,
            validate_first=False,
            force=forced,
            reason=request.reason if forced else "",
        )
        dry_run, effects = self.deploy(dry_request)
        waiting = dataclasses.replace(
            deployment,
            after=dry_run.id,
            expires=(self._clock.time() + request.ttl) if request.when_online else None,
            reason=f"waiting for its validation, dry run {dry_run.id}",
        )
        self.book.put(waiting)
        effects.writes.deployments.append(waiting)
        return effects

    def critical_refusal(
        self, env: str, workflow: Workflow, *, validated: bool = True
    ) -> Refuse | None:
        """Why critical ``workflow`` may not go to ``env`` now (None: it may): not online,
        flapping, heartbeats missed lately, or (``validated``) no passing dry run of its
        version there within the validation max age (:mod:`.critical`)."""
        found = self._validations.get((env, workflow.name), {}) if validated else None
        return judge_critical(
            env,
            workflow,
            self._presence.get(env),
            self._presence.missed_heartbeats(env),
            None if found is None else list(found.values()),
            now=self._clock.time(),
            max_age=self._max_age,
        )

    def _latest_validation(self, env: str, workflow: Workflow) -> str:
        found = self._validations.get((env, workflow.name), {}).get(workflow.version)
        return "" if found is None else found.id

    def _note_dry_run(self, deployment: Deployment) -> None:
        versions = self._validations.setdefault((deployment.env, deployment.workflow.name), {})
        known = versions.get(deployment.workflow.version)
        if known is None or (known.updated, known.id) <= (deployment.updated, deployment.id):
            versions[deployment.workflow.version] = deployment

    def _dry_runs_ended(self, moved: Sequence[Deployment]) -> Effects:
        """Dry runs that just ended: kept as the latest validation of their version, and
        the deployments waiting for them released (or failed)."""
        effects = Effects()
        for dry_run in moved:
            if dry_run.dry_run and dry_run.final:
                self._note_dry_run(dry_run)
                for waiting in self.book.waiting_for(dry_run.id):
                    effects.extend(self._release(waiting, dry_run))
        return effects

    def _gate(
        self,
        env: str,
        workflow: Workflow,
        *,
        when_online: bool,
        dry_run: bool,
        ttl: float,
        force: bool,
    ) -> Decision:
        """The gate's decision on ``workflow`` for ``env`` as it is known now."""
        inventory = self._inventory.get(env)
        return judge_deploy(
            env,
            self.registry.get(env),
            self._presence.get(env),
            None if inventory is None else inventory.models,
            workflow,
            when_online=when_online,
            dry_run=dry_run,
            ttl=ttl,
            now=self._clock.time(),
            force=force,
        )

    def _release(self, waiting: Deployment, dry_run: Deployment) -> Effects:
        """``waiting``'s validation ``dry_run`` ended: it is sent (or queued for its
        environment) when the dry run passed and the gate and the critical checks still
        allow it, else it ends ``failed`` naming the validation."""
        if not dry_run.passed:
            why = f"validation {dry_run.id} did not pass ({dry_run.state}: {dry_run.reason})"
            return self._deployment_event(Failed, waiting, why)
        released = dataclasses.replace(waiting, after="", validation=dry_run.id, reason="")
        now = self._clock.time()
        ttl = max(1.0, (waiting.expires or now + self._command_ttl) - now)
        decision = self._gate(
            waiting.env,
            waiting.workflow,
            when_online=waiting.when_online,
            dry_run=False,
            ttl=ttl,
            force=bool(waiting.forced),
        )
        refusal: Refuse | None = decision if isinstance(decision, Refuse) else None
        if refusal is None and waiting.workflow.critical:
            refusal = self.critical_refusal(waiting.env, waiting.workflow)
        if refusal is not None:
            why = f"validation {dry_run.id} passed, but: {refusal.message}"
            return self._deployment_event(Failed, waiting, why)
        if isinstance(decision, Queue):
            queued = dataclasses.replace(released, expires=decision.expires)
            self.book.put(queued)
            return Effects(writes=Writes(deployments=[queued], urgent=True))
        self.book.put(released)
        return self._send(released)

    def cancel(self, dep: str, *, why: str = "") -> tuple[CancelResult, Effects]:
        """Take deployment ``dep`` back: one still queued here ends ``cancelled`` at once
        (the controller's own ``cancelled`` event); for any other that is not final the
        agent gets a ``cancel`` command (kept as an operator command, op ``cancel``, until
        it answers) and the deployment ends ``cancelled`` on the agent's ``cancelled``.
        :class:`RequestRefused`: ``not-found`` for a deployment not in progress (the
        caller tells a final one from an unknown one), ``offline``."""
        deployment = self.book.get(dep)
        if deployment is None:
            raise RequestRefused("not-found", f"no deployment {dep!r} in progress")
        if deployment.state == "queued":
            why = why or "cancelled by the operator before it was sent"
            effects = self._deployment_event(Cancelled, deployment, why)
            return CancelResult(deployment=effects.writes.deployments[-1].info()), effects
        self._require_online(deployment.env, f"cancel {dep} (its agent must stop it)")
        command = Cancel(id=new_id("c"), dep=dep)
        effects = self._operator_command(deployment.env, command, workflow=deployment.workflow.name)
        return CancelResult(deployment=deployment.info(), cmd=command.id), effects

    def undeploy(self, env: str, workflow: str) -> tuple[CancelResult, Effects]:
        """Take workflow ``workflow`` off ``env``: its deployments still queued here end
        ``cancelled`` at once; the agent gets one ``cancel`` command naming the workflow
        (op ``undeploy``), stops whatever runs of it, removes it from what it starts again
        at boot, and confirms each deployment it stopped with a ``cancelled`` event. The
        result is the newest such deployment, and the command's id ("" when only queued
        ones were cancelled). :class:`RequestRefused`: ``not-found`` (no environment),
        ``retired``, ``not-running`` (nothing of the workflow runs or waits there),
        ``offline`` (something runs there but the agent is not connected)."""
        record = self.registry.require(env)
        if record.retired is not None:
            raise RequestRefused("retired", f"environment {env!r} was retired: nothing runs there")
        mine = sorted(
            (
                d
                for d in self.book.in_state(env, *_ON_THE_AGENT, "queued")
                if d.workflow.name == workflow and not d.dry_run
            ),
            key=lambda d: (d.created, d.id),
        )
        on_agent = [d for d in mine if d.state != "queued"]
        if not mine:
            raise RequestRefused(
                "not-running",
                f"workflow {workflow!r} does not run on {env} (no deployment of it is running, "
                f"starting or queued there); see: edgeplane env show {env}",
            )
        if on_agent:
            self._require_online(env, f"undeploy {workflow} (its agent must stop it)")
        effects = Effects(writes=Writes(urgent=True))
        cancelled: list[Deployment] = []
        for deployment in (d for d in mine if d.state == "queued"):
            why = "undeployed by the operator before it was sent"
            ended = self._deployment_event(Cancelled, deployment, why)
            cancelled.append(ended.writes.deployments[-1])
            effects.extend(ended)
        if not on_agent:
            return CancelResult(deployment=cancelled[-1].info()), effects
        result = on_agent[-1]
        command = Cancel(id=new_id("c"), dep=result.id, workflow=workflow)
        effects.extend(self._operator_command(env, command, op="undeploy", workflow=workflow))
        return CancelResult(deployment=result.info(), cmd=command.id), effects

    # --- reading --------------------------------------------------------------------------
    def knows(self, env: str) -> bool:
        """Whether ``env`` has a record (retired ones too) or an agent seen under it."""
        return env in self.registry or self._presence.get(env) is not None

    def require_known(self, env: str) -> None:
        """:class:`RequestRefused` ``not-found`` for an id :meth:`knows` not, naming a
        known id close to it."""
        if not self.knows(env):
            known = [record.id for record in self.registry]
            known += [presence.env for presence in self._presence.records()]
            raise RequestRefused("not-found", unknown_environment(env, known))

    def env_info(self, env: str) -> EnvInfo:
        self.require_known(env)
        record = self.registry.get(env)
        presence = self._presence.get(env)
        inventory = self._inventory.get(env)
        missed = self._presence.missed_heartbeats(env)
        running = self.book.in_state(env, "running")
        return EnvInfo(
            **_record_fields(env, record, presence),
            missed_heartbeats=missed,
            steady=steady(presence, missed),
            **_runtime_fields(record, presence, inventory),
            running=[d.id for d in running],
            running_workflows=[f"{d.workflow.name} {d.workflow.version}" for d in running],
            restarting=[d.id for d in self.book.in_state(env, "restarting")],
            commands=[c.info() for c in self.book.commands_of(env)],
            **self._link_fields(env, presence),
        )

    def _link_fields(self, env: str, presence: EnvRecord | None) -> dict[str, Any]:
        """Open pressure episodes, and the link quality now (fresher than the view's)."""
        if presence is None:
            return {}
        link = self._presence.link_figures(env) or presence.link
        return {
            "pressure": list(presence.pressure),
            "missed_pct": None if link is None else link.missed_pct,
            "reconnects_1h": None if link is None else link.reconnects,
        }

    def env_list(self, project: str = "", include_retired: bool = False) -> list[EnvInfo]:
        envs = {record.id for record in self.registry}
        if not project:
            envs.update(p.env for p in self._presence.records())
        infos = [self.env_info(env) for env in sorted(envs)]
        return [
            info
            for info in infos
            if (include_retired or info.retired is None)
            and (not project or info.project == project)
        ]

    # --- helpers --------------------------------------------------------------------------
    def _send(self, deployment: Deployment) -> Effects:
        now = self._clock.time()
        expires = now + self._command_ttl
        command = Deploy(
            id=new_id("c"),
            expires=expires,
            dep=deployment.id,
            workflow=deployment.workflow,
            dry_run=deployment.dry_run,
        )
        sent = self.book.mark_sent(deployment.id, command.id, expires)
        effects = Effects(writes=Writes(deployments=[sent], urgent=True))
        effects.outgoing.append(self.command(deployment.env, command))
        return effects

    def command(self, env: str, command: Command) -> Outgoing:
        """``command`` for ``env``, unsigned: it names its environment and its expiry, which
        the signature the shell adds covers too."""
        ttl = self._command_ttl
        if command.expires is None:
            command = replace(command, expires=self._clock.time() + ttl)
        command = replace(command, env=env)
        self.book.note_command(env, command.id)
        topic, payload = self._root.cmd(env), encode(command)
        return Outgoing(topic, payload, False, expiry=max(1, round(ttl)), command=True)

    def _operator_command(
        self,
        env: str,
        command: Restart | Update | Retire | Cancel,
        *,
        op: str = "",
        workflow: str = "",
    ) -> Effects:
        """``command`` for ``env``, kept as pending until the agent answers it (``op`` and
        ``workflow``: what ``env show`` names it by, when not the command's own)."""
        outgoing = self.command(env, command)
        now = self._clock.time()
        op = op or str(type(command).__struct_config__.tag)
        workflow = workflow or (command.workflow if isinstance(command, Restart) else "")
        issued = self.book.issue(
            OperatorCommand(command.id, env, op, now, now + self._command_ttl, workflow)
        )
        return Effects(writes=Writes(commands=[issued], urgent=True), outgoing=[outgoing])

    def _require_online(self, env: str, what: str) -> None:
        presence = self._presence.get(env)
        if presence is None or presence.status != "online":
            raise RequestRefused("offline", f"{offline_sentence(env, presence)}; cannot {what}")

    def _deployment_event(self, kind: _OwnKind, deployment: Deployment, reason: str) -> Effects:
        fields = {"cmd": deployment.cmd, "dep": deployment.id, "reason": reason}
        return self._own_event(kind, deployment.env, **fields)

    def _own_event(self, kind: _OwnKind, env: str, **fields: Any) -> Effects:
        """An event of the controller's own stream: logged, folded and published like an
        agent's."""
        self._seq += 1
        now = self._clock.time()
        event = kind(env=env, seq=self._seq, src=CONTROLLER_SRC, ts=now, **fields)
        effects = Effects(writes=Writes(events=[LogEntry(event, now)], urgent=True))
        change = self.book.on_event(event)
        _write_change(effects, change)
        effects.outgoing.append(Outgoing(self._root.events(env), encode(event), False))
        effects.extend(self._dry_runs_ended(change.deployments))
        return effects


def _write_change(effects: Effects, change: Change) -> None:
    effects.writes.deployments.extend(change.deployments)
    effects.writes.commands.extend(change.commands)


def _no_incidents(env: str) -> int:
    return 0


def _unknown_view(record: Environment) -> EnvView:
    return EnvView(env=record.id, status="unknown", since=record.created)


def _record_fields(
    env: str, record: Environment | None, presence: EnvRecord | None
) -> dict[str, Any]:
    if record is None:
        created = presence.since if presence is not None else 0.0
        return {"id": env, "project": "", "stage": "", "location": "", "purpose": "",
                "created": created, "registered": False}  # fmt: skip
    return {
        "id": record.id,
        "project": record.project,
        "stage": record.stage,
        "location": record.location,
        "purpose": record.purpose,
        "labels": dict(record.labels),
        "created": record.created,
        "retired": record.retired,
    }


def _runtime_fields(
    record: Environment | None, presence: EnvRecord | None, inventory: ReportedInventory | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if inventory is not None:
        fields["models"] = {name: list(versions) for name, versions in inventory.models.items()}
        fields["platform"] = inventory.platform
    if record is not None and record.retired is not None:
        return {**fields, "status": "retired", "since": record.retired}
    if presence is None or presence.status == "unknown":
        since = record.created if record is not None else None
        return {**fields, "status": "unknown", "since": since}
    return {
        **fields,
        "status": presence.status,
        "since": presence.since,
        "last_seen": presence.last_seen,
        "interval": presence.interval,
        "flapping": presence.flapping,
    }
