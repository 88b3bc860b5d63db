"""Operator requests to the controller, and its replies: MQTT 5 request/response.

An operator command publishes one :data:`Request` (tagged by ``op``) to
``R/controller/req`` with QoS 1, a *response topic* ``R/controller/reply/{client}`` it has
subscribed to first, random *correlation data*, and a message expiry of a few seconds (a
request nobody took in time must not run later). The controller answers each request with
one :class:`Reply` on that response topic, echoing the correlation data. No answer within
the timeout means no controller: the command says so in one line and exits non-zero.

``Reply.result`` is raw JSON whose type depends on the request (see each request's doc);
:data:`RESULT_TYPES` maps each request type to it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from edgeplane.shared.checkup import Report
from edgeplane.shared.codec import MessageCodec
from edgeplane.shared.messages import (
    ControllerStatus,
    Count,
    EnvId,
    Event,
    Percent,
    Platform,
    Seconds,
    ShortText,
    UnixTime,
    ViewStatus,
)
from edgeplane.shared.workflow import Workflow

__all__ = [
    "MAX_REPLY",
    "REPLY",
    "REQUEST",
    "REQUEST_EXPIRY",
    "RESULT_TYPES",
    "TERMINAL_STATES",
    "CancelResult",
    "CommandInfo",
    "CommandKeyInfo",
    "CommandKeyRequest",
    "CommandState",
    "ControllerPing",
    "DeployRequest",
    "DeploymentCancel",
    "DeploymentInfo",
    "DeploymentList",
    "DeploymentShow",
    "DeploymentState",
    "EnvCreate",
    "EnvCreated",
    "EnvDiagnose",
    "EnvForget",
    "EnvInfo",
    "EnvList",
    "EnvRestart",
    "EnvRetire",
    "EnvRotateCredentials",
    "EnvShow",
    "EnvTimeline",
    "EnvUpdate",
    "ErrorCode",
    "EventList",
    "IncidentAck",
    "IncidentInfo",
    "IncidentList",
    "IncidentResolve",
    "IncidentShow",
    "IncidentStep",
    "IncidentSummary",
    "LoggedEvent",
    "OperatorAdd",
    "OperatorAdded",
    "OperatorInfo",
    "OperatorList",
    "OperatorRemove",
    "OperatorRotate",
    "OperatorRotateConfirm",
    "OperatorRotated",
    "Reply",
    "Request",
    "RolloutAction",
    "RolloutInfo",
    "RolloutList",
    "RolloutShow",
    "RolloutStart",
    "RolloutState",
    "SealedCredential",
    "TargetInfo",
    "TargetState",
    "TimelineEntry",
    "UndeployRequest",
    "WaveInfo",
    "WaveState",
]

REQUEST_EXPIRY: Final = 10  # seconds: the MQTT 5 message expiry of a request
# The largest reply: within the 1 MiB packets the shipped broker configs allow. A result
# that would be larger is refused with code "too-large" (ask for fewer with `limit`).
MAX_REPLY: Final = 1_000_000

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._/-]+$")]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Ttl = Annotated[float, msgspec.Meta(gt=0, le=30 * 86_400)]
# An ephemeral X25519 public key, base64 (44 characters): the controller seals the new
# password to it (controller.sealing), so the password is never readable on the wire.
SealTo = Annotated[str, msgspec.Meta(max_length=64)]
OperatorName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
ProjectName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")]

DeploymentState = Literal[
    "queued",  # waiting for the environment to come online (--when-online)
    "sent",  # published to the agent, not yet accepted
    "accepted",  # the agent took it; preflight runs
    "running",  # steps running (a job), or a service up
    "succeeded",  # a job's steps all exited 0
    "failed",  # a step failed, or a service could not start
    "rejected",  # refused by the agent (failed preflight, bad command)
    "rolled-back",  # the new version failed; the earlier one runs again
    "expired",  # the TTL passed before it could be sent or started
    "stopped",  # replaced, restarted or retired while running
    "checked",  # a dry run whose preflight report is in
    "restarting",  # stopped by an `env restart` that is still under way
    "cancelled",  # stopped for good at the operator's word (deployments cancel, undeploy)
]
TERMINAL_STATES: Final = frozenset(
    {"succeeded", "failed", "rejected", "rolled-back", "expired", "stopped", "checked", "cancelled"}
)
CommandState = Literal[
    "pending",  # sent, no answer yet
    "done",  # acknowledged ok
    "failed",  # acknowledged not ok (the detail says why)
    "rejected",  # refused by the agent
    "expired",  # the agent dropped it: it arrived after its expiry
    "unanswered",  # no answer came before it expired (and a grace): its outcome is unknown
]

ErrorCode = Literal[
    "invalid",  # the request itself is wrong (its message says which field)
    "not-found",  # no such environment / deployment
    "exists",  # an environment with that id exists already
    "retired",  # the environment is retired
    "offline",  # the environment is offline or was never seen
    "online",  # its agent is connected now (env-forget: stop that agent first)
    "flapping",  # the environment is flapping
    "missing-model",  # a required model is not in the last reported inventory
    "unavailable",  # the controller cannot do it now (shutting down, database error)
    "too-large",  # the result would not fit in one reply: ask for fewer (limit)
    "no-identities",  # the broker has no identities the controller administers (no broker init)
    "no-match",  # a rollout's selector matches no environment
    "conflict",  # the request does not fit the state it names (resume a running rollout)
    "final",  # the deployment has ended already: nothing to cancel
    "not-running",  # undeploy: the workflow does not run there
    # a critical workflow: the environment is flapping or missed heartbeats lately
    "unsteady",
    # a critical workflow: no passing dry run of this version there, recent enough
    "not-validated",
]

RolloutState = Literal[
    "running",  # waves go out
    "paused",  # by the operator: nothing more is sent until resume
    "awaiting-approval",  # --approve-each-wave: the next wave waits for rollout approve
    "rolling-back",  # aborted with --rollback-on-abort: the changed targets go back
    "aborted",  # the failures went over --max-failures, or the operator aborted it
    "succeeded",  # every wave done within --max-failures
    "failed",  # aborted, and the rollback could not restore every target
]
WaveState = Literal["pending", "running", "baking", "awaiting-approval", "done"]
TargetState = Literal[
    "pending",  # not sent yet
    "sent",  # its deployment is out (or queued for an offline target)
    "succeeded",  # the job succeeded, or the service runs
    "failed",  # refused by the gate, failed preflight, failed
    "timed-out",  # not done within --target-timeout
    "not-deployed",  # offline until --target-timeout: never sent
    "rolled-back",  # changed, then returned to what ran there before
]


# --- requests ------------------------------------------------------------------------------
class _Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    pass


class EnvCreate(_Request, frozen=True, kw_only=True, tag="env-create"):
    """Result: :class:`EnvInfo`. Without ``id`` the record is ``{stage}-{location}-{purpose}``.
    Creating the first environment of a project also creates ``{project}-cloud``."""

    id: ShortText = ""
    stage: Literal["dev", "staging", "prod"]
    location: ShortText
    purpose: ShortText
    project: ProjectName = "default"
    labels: dict[Label, LabelValue] = {}
    # Set: also enroll it at the broker (under `broker init`): its broker client is created
    # and the result (EnvCreated) carries its password sealed to this key.
    seal_to: SealTo = ""


class EnvList(_Request, frozen=True, kw_only=True, tag="env-list"):
    """Result: ``list[EnvInfo]``, by id: at most ``limit`` of them, with ids after
    ``after`` (to page through a large fleet)."""

    project: ShortText = ""
    include_retired: bool = False
    after: ShortText = ""
    limit: Limit = 500


class EnvShow(_Request, frozen=True, kw_only=True, tag="env-show"):
    """Result: :class:`EnvInfo`."""

    id: ShortText


class EnvUpdate(_Request, frozen=True, kw_only=True, tag="env-update"):
    """Result: :class:`EnvInfo`. Labels change on the record; ``interval`` and ``config``
    go to the agent in an ``update`` command (acknowledged by an ``ack`` event)."""

    id: ShortText
    labels: dict[Label, LabelValue] = {}
    remove_labels: list[Label] = []
    interval: Seconds | None = None
    config: dict[ShortText, ShortText] = {}


class EnvRestart(_Request, frozen=True, kw_only=True, tag="env-restart"):
    """Result: ``{"cmd": command id}``; the agent answers with an ``ack`` event."""

    id: ShortText
    workflow: ShortText = ""


class EnvRetire(_Request, frozen=True, kw_only=True, tag="env-retire"):
    """Result: :class:`EnvInfo` (retired). The agent, now or when it next connects, gets a
    ``retire`` command."""

    id: ShortText


class EnvForget(_Request, frozen=True, kw_only=True, tag="env-forget"):
    """Result: :class:`EnvInfo`, as it was before. For an id without a record (an agent
    started with a mistyped id): its view and retained status are cleared and the
    controller keeps nothing of it (presence, inventory, events). For a retired one, its
    leftovers: the retained status is cleared, its presence dropped; the record and its
    history stay. Refused for an active record (retire it) and while its agent is
    connected (code ``online``: it would come straight back)."""

    id: ShortText


class EnvRotateCredentials(_Request, frozen=True, kw_only=True, tag="env-rotate-credentials"):
    """Result: :class:`EnvInfo` with the rotation under way (``rotation_target`` is the new
    generation). Under ``broker init`` only: a new broker client is made beside the one in
    use, its password goes to the agent sealed to the agent's box key, and the old client
    is removed once the agent is online with the new one (an offline agent gets it when it
    returns). Asked again before the agent took it, the same generation is made anew.
    The password is sealed to the box key pinned at the agent's first online; ``repin``
    (the operator reinstalled the agent) pins the key of its current connection first."""

    id: ShortText
    repin: bool = False


class DeployRequest(_Request, frozen=True, kw_only=True, tag="deploy"):
    """Result: :class:`DeploymentInfo` (``sent`` or ``queued``). Refusals come back as a
    failed :class:`Reply` with a code and a sentence naming the cause."""

    env: ShortText
    workflow: Workflow
    when_online: bool = False
    ttl: Ttl = 3600.0  # how long a --when-online deployment may wait
    dry_run: bool = False
    # Send past the gate's flapping refusal (never past retired, unknown or offline);
    # ``reason`` is required with it and recorded with the deployment.
    force: bool = False
    reason: ShortText = ""
    # A dry run of the same workflow goes first; this deployment waits for it (``queued``,
    # its ``validation`` naming the dry run), is sent when it passes and ends ``failed``
    # naming the validation when it does not. Not with ``dry_run``.
    validate_first: bool = False


class DeploymentCancel(_Request, frozen=True, kw_only=True, tag="deployment-cancel"):
    """Result: :class:`CancelResult`. A deployment still queued in the controller ends
    ``cancelled`` at once (no command); one sent, accepted, running or restarting gets a
    ``cancel`` command, and ends ``cancelled`` when the agent confirms (a ``cancelled``
    event). Refused: ``not-found`` (no such deployment), ``final`` (it has ended already),
    ``offline`` (its environment's agent is not connected, so it cannot be stopped)."""

    id: ShortText


class UndeployRequest(_Request, frozen=True, kw_only=True, tag="undeploy"):
    """Result: :class:`CancelResult`. Stop ``workflow`` on ``env`` and remove it from what
    the agent starts again at boot: the deployment running it gets a ``cancel`` command
    naming the workflow, and ends ``cancelled`` when the agent confirms. Refused:
    ``not-found`` (no such environment), ``not-running`` (the workflow does not run
    there), ``offline``, ``retired``."""

    env: ShortText
    workflow: ShortText


class DeploymentList(_Request, frozen=True, kw_only=True, tag="deployment-list"):
    """Result: ``list[DeploymentInfo]``, newest first."""

    env: ShortText = ""
    limit: Limit = 50


class DeploymentShow(_Request, frozen=True, kw_only=True, tag="deployment-show"):
    """Result: :class:`DeploymentInfo` with its events."""

    id: ShortText


class EventList(_Request, frozen=True, kw_only=True, tag="event-list"):
    """Result: ``list[LoggedEvent]`` from the operations log, oldest first, with
    ``LoggedEvent.id`` greater than ``after`` (to page, or to resume a follow). A page
    holds fewer than ``limit`` when the events are large (the reply size limit): ask
    again from the last id until a page comes back empty."""

    env: ShortText = ""
    dep: ShortText = ""
    after: Count = 0
    limit: Limit = 200


class OperatorAdd(_Request, frozen=True, kw_only=True, tag="operator-add"):
    """Result: :class:`OperatorAdded`, the new operator's password sealed to ``seal_to``."""

    name: OperatorName
    role: Literal["admin", "viewer"]
    seal_to: SealTo


class OperatorList(_Request, frozen=True, kw_only=True, tag="operator-list"):
    """Result: ``list[OperatorInfo]``, by name."""


class OperatorRemove(_Request, frozen=True, kw_only=True, tag="operator-remove"):
    """Result: :class:`OperatorInfo` of the operator removed (its broker client is deleted:
    a connected session of it is closed). The last admin, and the requester, are refused."""

    name: OperatorName


class OperatorRotate(_Request, frozen=True, kw_only=True, tag="operator-rotate-credentials"):
    """Result: :class:`OperatorRotated`: a new broker client ``name.N`` beside the old one
    (same role), its password and a confirmation token sealed to ``seal_to``. Every older
    credential keeps working until :class:`OperatorRotateConfirm`. Asked again, the
    pending generation is replaced, except the one ``login`` (the user name the request's
    connection logged in with) is using."""

    name: OperatorName
    seal_to: SealTo
    login: ShortText = ""


class OperatorRotateConfirm(_Request, frozen=True, kw_only=True, tag="operator-rotate-confirm"):
    """Result: :class:`OperatorInfo`: ``generation`` works (the command logged in with
    it), so every other generation of ``name`` is deleted. ``proof``: the token opened
    from :attr:`OperatorRotated.sealed_proof`."""

    name: OperatorName
    generation: Count
    proof: ShortText


class CommandKeyRequest(_Request, frozen=True, kw_only=True, tag="command-key"):
    """Result: :class:`CommandKeyInfo`. ``action``: ``status`` (change nothing), ``rotate``
    (make a new command key and roll it out to every agent), ``finish`` (drop the old key
    now, even though some agents have not acknowledged the new one)."""

    action: Literal["status", "rotate", "finish"] = "status"


class ControllerPing(_Request, frozen=True, kw_only=True, tag="controller-ping"):
    """Result: :class:`~edgeplane.shared.messages.ControllerStatus`, the answering
    controller's own (online, its boot, host and since). Answered at once, before the
    retained state is synchronised: a controller that is starting asks it when the
    retained status of its topic root says another one is online, to learn whether that
    one is alive (it answers) or died (nobody answers)."""


class EnvDiagnose(_Request, frozen=True, kw_only=True, tag="env-diagnose"):
    """Result: :class:`~edgeplane.shared.checkup.Report`, the checks of environment ``id``
    in the documented troubleshooting order (process, network, credentials, resources,
    compatibility). ``timeout``: the time limit of each check, seconds (the ping's answer
    is waited for that long); the whole request takes at most a few times it."""

    id: ShortText
    timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0


class RolloutStart(_Request, frozen=True, kw_only=True, tag="rollout-start"):
    """Result: :class:`RolloutInfo` with its plan (every target, by wave). ``selector``
    matches environment records (stage, location, purpose, project, else a label); one
    matching nothing is refused with code ``no-match``. ``waves``: cumulative counts
    (``"5"``) or shares (``"10%"``); ``max_failures``: a count or a share of the targets
    finished. ``dry_run``: nothing is stored; the first wave's targets get a dry-run
    deployment each (their ids in the targets' ``dep``) and the plan comes back.
    Exactly one of ``workflow`` (deploy it) and ``undeploy`` (a workflow's name: take it
    off every target, as ``undeploy`` does; a target where it does not run is done as it
    is) is given."""

    workflow: Workflow | None = None
    undeploy: ShortText = ""
    selector: dict[Label, LabelValue]
    waves: list[ShortText] = msgspec.field(default_factory=lambda: ["1", "10%", "50%", "100%"])
    max_failures: ShortText = "10%"
    min_executed: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    bake: Annotated[float, msgspec.Meta(ge=0, le=7 * 86_400)] = 60.0
    target_timeout: Annotated[float, msgspec.Meta(gt=0, le=30 * 86_400)] = 300.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    rollback_on_abort: bool = False
    approve_each_wave: bool = False
    skip_offline: bool = False
    dry_run: bool = False
    # Each target's deployment waits for a dry run of its own (DeployRequest.validate_first).
    validate_first: bool = False


class RolloutList(_Request, frozen=True, kw_only=True, tag="rollout-list"):
    """Result: ``list[RolloutInfo]`` without targets, newest first."""

    limit: Limit = 50


class RolloutShow(_Request, frozen=True, kw_only=True, tag="rollout-show"):
    """Result: :class:`RolloutInfo` with its waves and every target."""

    id: ShortText


class RolloutAction(_Request, frozen=True, kw_only=True, tag="rollout-action"):
    """Result: :class:`RolloutInfo`. ``pause``: nothing more is sent; ``resume``: go on;
    ``abort``: stop for good (rolling back with ``rollback_on_abort``); ``approve``: start
    the wave that waits for approval. One that does not fit the state is refused with code
    ``conflict``."""

    id: ShortText
    action: Literal["pause", "resume", "abort", "approve"]


class IncidentList(_Request, frozen=True, kw_only=True, tag="incident-list"):
    """Result: ``list[IncidentInfo]``, newest first (by when each opened): ``env``'s (an
    environment the controller does not know is ``not-found``), changed at or after
    ``since`` (unix seconds), only those not resolved (``open_only``), of one ``kind``."""

    env: ShortText = ""
    since: UnixTime | None = None
    open_only: bool = False
    kind: ShortText = ""
    limit: Limit = 100


class IncidentShow(_Request, frozen=True, kw_only=True, tag="incident-show"):
    """Result: :class:`IncidentInfo` with its timeline."""

    id: ShortText


class IncidentAck(_Request, frozen=True, kw_only=True, tag="incident-ack"):
    """Result: :class:`IncidentInfo`. An open incident is acknowledged (it still resolves
    by itself when its condition ends); a resolved one is ``conflict``."""

    id: ShortText
    note: ShortText = ""


class IncidentResolve(_Request, frozen=True, kw_only=True, tag="incident-resolve"):
    """Result: :class:`IncidentInfo`. An open or acknowledged incident is resolved at the
    operator's word; a resolved one is ``conflict``."""

    id: ShortText
    note: ShortText = ""


class EnvTimeline(_Request, frozen=True, kw_only=True, tag="env-timeline"):
    """Result: ``list[TimelineEntry]``: ``env``'s presence transitions and alert edges,
    oldest first, at or after ``since`` (what ``events --env`` shows beside the log)."""

    env: ShortText
    since: UnixTime = 0.0
    limit: Limit = 1000


Request = (
    EnvCreate
    | EnvList
    | EnvShow
    | EnvUpdate
    | EnvRestart
    | EnvRetire
    | EnvForget
    | EnvRotateCredentials
    | DeployRequest
    | DeploymentList
    | DeploymentShow
    | DeploymentCancel
    | UndeployRequest
    | EventList
    | OperatorAdd
    | OperatorList
    | OperatorRemove
    | OperatorRotate
    | OperatorRotateConfirm
    | CommandKeyRequest
    | ControllerPing
    | EnvDiagnose
    | RolloutStart
    | RolloutList
    | RolloutShow
    | RolloutAction
    | IncidentList
    | IncidentShow
    | IncidentAck
    | IncidentResolve
    | EnvTimeline
)


# --- results -------------------------------------------------------------------------------
class CommandInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An operator command sent to an environment (``restart``, ``update``, ``retire``) and
    what the agent answered: ``state`` ``pending`` until its ``ack`` (``done`` or
    ``failed``), ``rejected`` or ``expired`` event, or ``unanswered`` once it expired
    without one. ``workflow``: a restart of that workflow only."""

    id: ShortText
    op: ShortText
    state: CommandState
    sent: UnixTime
    expires: UnixTime
    answered: UnixTime | None = None
    detail: ShortText = ""
    workflow: ShortText = ""


class EnvInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An environment record and what the controller knows of its runtime."""

    id: EnvId
    project: ShortText
    stage: ShortText
    location: ShortText
    purpose: ShortText
    labels: dict[str, str] = {}
    created: UnixTime
    retired: UnixTime | None = None
    status: ViewStatus = "unknown"
    since: UnixTime | None = None
    last_seen: UnixTime | None = None
    interval: Seconds | None = None
    flapping: bool = False
    models: dict[str, list[str]] = {}
    platform: Platform | None = None
    running: list[ShortText] = []  # deployments running there (ids)
    running_workflows: list[ShortText] = []  # what each of them runs: "name version"
    restarting: list[ShortText] = []  # deployments stopped by a restart still under way
    # The operator commands still pending there, then the last one answered (or expired
    # unanswered), oldest first.
    commands: list[CommandInfo] = []
    # False for an agent that connects as an environment with no record (then project,
    # stage, location and purpose are empty): it never receives commands.
    registered: bool = True
    # Under broker init: the generation of the broker credential in use (None: the broker
    # has no identities), since when, and the rotation under way ("" none; else creating,
    # created, sent or removing, see docs/security.md), to generation rotation_target.
    credential_generation: Count | None = None
    credential_since: UnixTime | None = None
    rotation_state: ShortText = ""
    rotation_target: Count = 0
    rotation_started: UnixTime | None = None
    # The latest connection reported a box key other than the pinned one (another runtime
    # with this identity, or a reinstalled agent: env rotate-credentials ID --repin).
    box_key_mismatch: bool = False
    # Heartbeats missed in the last 5 intervals (gaps in ``seq``, silence; None: no
    # heartbeat seen since the controller started), and whether the environment is
    # steady: online, not flapping, none missed (what a critical workflow needs).
    missed_heartbeats: Count | None = None
    steady: bool = False
    # Open pressure episodes (resources by the heartbeat's names: cpu, mem, disk) and the
    # link quality over the last hour (as in the view; None: not measured yet).
    pressure: list[ShortText] = []
    missed_pct: Percent | None = None
    reconnects_1h: Count | None = None
    # The operations log's incidents of this environment not resolved yet (open or
    # acknowledged): env show lists them.
    open_incidents: list[IncidentSummary] = []


class IncidentSummary(msgspec.Struct, frozen=True, kw_only=True):
    """An open incident as ``env show`` lists it."""

    id: ShortText
    kind: ShortText
    severity: ShortText
    state: ShortText
    opened: UnixTime
    count: Count = 1
    detail: ShortText = ""


class SealedCredential(msgspec.Struct, frozen=True, kw_only=True):
    """A new broker identity for the one who asked: ``sealed_password`` is the password
    sealed to the request's ``seal_to`` key (base64), ``ca_pem`` the CA the controller
    trusts for the broker (public), ``command_key`` the controller's public command key
    (base64; empty when it has none)."""

    username: ShortText
    sealed_password: Annotated[str, msgspec.Meta(max_length=512)]
    ca_pem: Annotated[str, msgspec.Meta(max_length=65_536)] = ""
    command_key: ShortText = ""


class EnvCreated(EnvInfo, frozen=True, kw_only=True):
    """The result of ``env-create``: the record, and its credential when ``seal_to`` was
    given."""

    credential: SealedCredential | None = None


class OperatorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``generation``: of the credential in use (0: as added); ``since``: when it was made
    (unix seconds, None: not recorded) and ``age`` by the controller's clock; ``pending``:
    a rotated generation not yet confirmed (0: none); ``due``: older than the controller's
    ``rotate_after``."""

    name: ShortText
    role: ShortText  # "admin" or "viewer"
    generation: Count = 0
    since: float | None = None
    age: float | None = None
    pending: Count = 0
    due: bool = False


class OperatorAdded(OperatorInfo, frozen=True, kw_only=True):
    credential: SealedCredential


class OperatorRotated(OperatorInfo, frozen=True, kw_only=True):
    """``credential``: the new generation ``rotated_to`` (user name ``name.N``);
    ``sealed_proof``: the token :class:`OperatorRotateConfirm` carries, sealed likewise."""

    rotated_to: Count
    credential: SealedCredential
    sealed_proof: Annotated[str, msgspec.Meta(max_length=512)]


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the operations log: an event as stored, once, with the controller's
    receipt time ``at`` and a log-wide increasing ``id``."""

    id: Count
    at: UnixTime
    event: Event


class DeploymentInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: ShortText
    env: EnvId
    workflow: ShortText
    version: ShortText
    kind: ShortText = "job"
    state: DeploymentState
    reason: ShortText = ""  # why it failed, was rejected, expired ...
    created: UnixTime
    updated: UnixTime
    expires: UnixTime | None = None  # a queued deployment's deadline
    dry_run: bool = False
    cmd: ShortText = ""  # the id of the deploy command
    events: list[LoggedEvent] = []  # filled by deployment-show only
    # The gate's refusal the operator overrode (deploy --force --reason), and why:
    # "flapping: REASON" ("" none).
    forced: ShortText = ""
    # The dry run that validated it (a critical workflow, or --validate-first), or the one
    # it waits for while ``queued`` with ``waiting`` ("" none).
    validation: ShortText = ""
    waiting: bool = False


class CancelResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``deployment-cancel`` and ``undeploy``: the deployment as it is now
    (``cancelled`` already when the controller ended it itself), and ``cmd``, the id of the
    ``cancel`` command sent to the agent ("" when none was needed), whose ``cancelled``
    event (or ``rejected``) ends it."""

    deployment: DeploymentInfo
    cmd: ShortText = ""


class CommandKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The controller's command keys and the rotation under way. ``key_id`` signs every
    command now (for agents that acknowledged ``next_key_id``, that one does); ``state``:
    ``rolling``, ``finished`` (the old key is dropped; agents are told to distrust it),
    ``done`` or ``""`` (never rotated). Agents by what they did: ``pending`` have not yet
    acknowledged the new key, ``trusted`` did (and still trust the old one too), ``done``
    trust only the new key, ``lost`` never took the new key before the old one was dropped:
    they refuse every command now and must be enrolled again."""

    key_id: ShortText
    next_key_id: ShortText = ""
    state: ShortText = ""
    started: UnixTime | None = None
    finished: UnixTime | None = None
    pending: list[ShortText] = []
    trusted: list[ShortText] = []
    done: list[ShortText] = []
    lost: list[ShortText] = []


class TargetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One environment of a rollout. ``dep``: its deployment (the rollout's only one
    there); ``previous``: the deployment of the same workflow that ran there before (what a
    rollback deploys again); ``rollback``: the rollback's deployment, ``rollback_state``
    ``sent``, ``done``, ``failed`` or ``none`` (nothing ran there before)."""

    env: EnvId
    wave: Count
    state: TargetState
    dep: ShortText = ""
    reason: ShortText = ""
    started: UnixTime | None = None
    finished: UnixTime | None = None
    previous: ShortText = ""
    rollback: ShortText = ""
    rollback_state: ShortText = ""


class WaveInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One wave: ``size`` targets; ``bake_until``: when its bake ends (baking)."""

    index: Count
    state: WaveState
    size: Count
    started: UnixTime | None = None
    finished: UnixTime | None = None
    bake_until: UnixTime | None = None


class RolloutInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout, its settings, waves and (for ``rollout-show`` and ``rollout-start``)
    its targets, by wave and id (the first 2,000: ``total`` says how many there are, each
    wave's ``size`` how many it holds). ``counts``: targets by state; ``failures``: those
    counted toward ``max_failures`` (failed, timed-out, and not-deployed unless
    ``skip_offline``)."""

    id: ShortText
    workflow: ShortText
    version: ShortText  # "" for an undeploy rollout
    selector: dict[str, str]
    state: RolloutState
    action: Literal["deploy", "undeploy"] = "deploy"
    reason: ShortText = ""
    created: UnixTime
    updated: UnixTime
    waves_spec: list[ShortText] = []
    max_failures: ShortText = ""
    min_executed: Count = 1
    bake: float = 0.0
    target_timeout: float = 0.0
    concurrency: Count = 1
    rollback_on_abort: bool = False
    approve_each_wave: bool = False
    skip_offline: bool = False
    dry_run: bool = False
    wave: Count = 0  # the wave under way (index)
    waves: list[WaveInfo] = []
    counts: dict[str, int] = {}
    failures: Count = 0
    finished: Count = 0
    total: Count = 0
    targets: list[TargetInfo] = []


class IncidentStep(msgspec.Struct, frozen=True, kw_only=True):
    """One transition of an incident: ``state`` opened, repeated, acknowledged or
    resolved; ``by`` the operator, or ``controller``."""

    state: ShortText
    at: UnixTime
    note: ShortText = ""
    by: ShortText = ""


class IncidentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One incident of the operations log: one episode of a problem of one environment
    (``kind``: offline, flapping, identity-conflict, heartbeats-missed, preflight-failed,
    deployment-failed, rolled-back, rollout-aborted, command-refused, credential-problem,
    or any other alert kind). ``count``: how often it happened in this episode."""

    id: ShortText
    env: EnvId
    kind: ShortText
    severity: Literal["critical", "warning", "info"]
    state: Literal["open", "acknowledged", "resolved"]
    opened: UnixTime
    updated: UnixTime
    detail: ShortText = ""
    count: Count = 1
    timeline: list[IncidentStep] = []


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A presence transition (``entry`` ``transition``: ``from_status``, ``to_status``,
    ``reason``) or an alert edge (``alert``: ``kind``, ``state``, ``detail``) of one
    environment, at the controller's time ``at``."""

    entry: Literal["transition", "alert"]
    env: EnvId
    at: UnixTime
    from_status: ShortText = ""
    to_status: ShortText = ""
    reason: ShortText = ""
    kind: ShortText = ""
    state: ShortText = ""
    detail: ShortText = ""


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The answer to one request. ``ok`` false: ``code`` and ``error`` (one sentence for
    people) say why, and ``result`` may hold details."""

    ok: bool
    code: ShortText = ""
    error: Annotated[str, msgspec.Meta(max_length=2048)] = ""
    result: msgspec.Raw = msgspec.Raw(b"null")


RESULT_TYPES: Final[dict[type[Any], Any]] = {
    EnvCreate: EnvCreated,
    EnvList: list[EnvInfo],
    EnvShow: EnvInfo,
    EnvUpdate: EnvInfo,
    EnvRestart: dict[str, str],
    EnvRetire: EnvInfo,
    EnvForget: EnvInfo,
    EnvRotateCredentials: EnvInfo,
    DeployRequest: DeploymentInfo,
    DeploymentList: list[DeploymentInfo],
    DeploymentShow: DeploymentInfo,
    DeploymentCancel: CancelResult,
    UndeployRequest: CancelResult,
    EventList: list[LoggedEvent],
    OperatorAdd: OperatorAdded,
    OperatorList: list[OperatorInfo],
    OperatorRemove: OperatorInfo,
    OperatorRotate: OperatorRotated,
    OperatorRotateConfirm: OperatorInfo,
    CommandKeyRequest: CommandKeyInfo,
    ControllerPing: ControllerStatus,
    EnvDiagnose: Report,
    RolloutStart: RolloutInfo,
    RolloutList: list[RolloutInfo],
    RolloutShow: RolloutInfo,
    RolloutAction: RolloutInfo,
    IncidentList: list[IncidentInfo],
    IncidentShow: IncidentInfo,
    IncidentAck: IncidentInfo,
    IncidentResolve: IncidentInfo,
    EnvTimeline: list[TimelineEntry],
}

# Codecs of the two rpc topics (here, not in shared.codec: the agent never needs them).
REQUEST: Final[MessageCodec[Request]] = MessageCodec(Request, "request")
REPLY: Final[MessageCodec[Reply]] = MessageCodec(Reply, "reply")
