"""Every message on the wire, as frozen msgspec Structs.

Rules of evolution (the contract's promise to dashboards and old agents): readers ignore
unknown fields, and every field added after the first release gets a default.

Topics that carry several kinds of message use tagged unions: the agent's status topic is
tagged by its ``status`` field (``online`` / ``offline``), commands and events by ``type``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from edgeplane.shared.workflow import Workflow

__all__ = [
    "Accepted",
    "Ack",
    "AgentStatus",
    "Alert",
    "AlertKind",
    "AlertState",
    "Cancel",
    "Cancelled",
    "Check",
    "CheckKind",
    "Command",
    "CommandRejected",
    "ControllerStatus",
    "Credentials",
    "Deploy",
    "Distrust",
    "EnvView",
    "Event",
    "Expired",
    "Failed",
    "OfflineReason",
    "OfflineStatus",
    "OnlineStatus",
    "Overridden",
    "Ping",
    "Platform",
    "Pong",
    "Preflight",
    "Restart",
    "Retire",
    "RolledBack",
    "Running",
    "ServiceRestarted",
    "SignedCommand",
    "Started",
    "StepFinished",
    "StepStarted",
    "Stopped",
    "Succeeded",
    "Trust",
    "Update",
    "ViewStatus",
    "WorkflowProcess",
    "replace",
]

ENV_ID_REGEX: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

EnvId = Annotated[str, msgspec.Meta(pattern=ENV_ID_REGEX)]
# Counters stop at 2**53 - 1: exact in JavaScript dashboards, and fits SQLite INTEGER.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
UnixTime = Annotated[float, msgspec.Meta(ge=0)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
CommandId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DeploymentId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
OutputTail = Annotated[str, msgspec.Meta(max_length=4096)]

CheckKind = Literal["model", "datasource", "bucket", "secret", "endpoint"]

OfflineReason = Literal["connection-lost", "shutdown", "retired"]
ViewStatus = Literal["online", "offline", "unknown", "retired"]
AlertState = Literal["raised", "cleared"]
AlertKind = Literal[
    "flapping",
    "identity-conflict",
    "rollout-aborted",
    "cpu-pressure",
    "memory-pressure",
    "disk-pressure",
]


class Platform(msgspec.Struct, frozen=True, omit_defaults=True):
    """Facts about a runtime target that decide what can run there."""

    os: ShortText = ""  # platform.system().lower(): linux, darwin, windows
    arch: ShortText = ""  # platform.machine(): x86_64, aarch64, ...
    py: ShortText = ""  # Python version of the agent, e.g. 3.11.7
    agent: ShortText = ""  # agent version
    gpu: bool = False  # a GPU is visible (an NVIDIA device node or nvidia-smi)


# --- R/env/{env}/status -------------------------------------------------------------------
class OnlineStatus(
    msgspec.Struct, frozen=True, tag="online", tag_field="status", omit_defaults=True
):
    """The retained heartbeat. Short field names: constrained links pay for every byte."""

    env: EnvId
    bdseq: Count  # taken anew for every connection, kept on disk
    seq: Count  # restarts with every bdseq
    interval: Seconds  # seconds until the next heartbeat
    boot: ShortText  # changes with every start of the agent process
    cpu: Percent | None = None
    mem: Percent | None = None
    disk: Percent | None = None
    ver: ShortText = ""  # agent version
    up: Count = 0  # agent process uptime, whole seconds
    # Sent in the first online message of a connection and whenever they change, absent
    # from plain heartbeats (None: "unchanged since you last heard").
    models: dict[Name, list[ShortText]] | None = None  # model name -> versions held
    platform: Platform | None = None
    # Credential rotation: the agent's X25519 public key (base64; first online message of a
    # connection only) that new passwords are sealed to, and the generation of the broker
    # credential this connection logged in with (0: the enrolled one; absent when 0).
    box_key: ShortText = ""
    cred_gen: Count = 0
    # The proof of possession that came sealed with credential ``cred_gen`` (a random
    # one-time value, hex), sent only by a connection logged in with it: a rotation ends on
    # it, never on ``cred_gen`` alone. Absent for the enrolled credential.
    cred_proof: ShortText = ""
    # In the first online message after another runtime took this agent's session over:
    # that runtime's boot id ("unknown" when the broker said so without naming it).
    taken_over_by: ShortText = ""
    # In the first online message of a connection: the CONNECT attempts the broker refused
    # since the agent's last connection (a bad or rotated-away login, not authorised) and
    # the last refusal's reason; absent when none.
    refused: Count = 0
    refused_reason: ShortText = ""


class OfflineStatus(msgspec.Struct, frozen=True, tag="offline", tag_field="status"):
    """The will (``connection-lost``) or the clean-shutdown / retirement message."""

    env: EnvId
    bdseq: Count
    reason: OfflineReason


AgentStatus = OnlineStatus | OfflineStatus


# --- R/controller/status ------------------------------------------------------------------
class ControllerStatus(msgspec.Struct, frozen=True):
    """The controller's retained birth (``online``) and will (``offline``)."""

    status: Literal["online", "offline"]
    boot: ShortText = ""
    ver: ShortText = ""
    since: UnixTime | None = None
    # Counters, refreshed periodically while online and in the clean-stop message.
    envs: Count = 0  # environments known
    online: Count = 0  # of which judged online
    stale: Count = 0  # stale offline messages ignored since start
    dropped: dict[str, Count] = {}  # bad input dropped since start, by reason
    duplicates: Count = 0  # events received again (stored once) since start
    # The public key that signs every command (base64) and its key id: what an agent
    # needs to trust the controller (its `command_key` setting). Never the private key.
    command_key: ShortText = ""
    command_key_id: ShortText = ""
    # Command key rotation: the id of every key the controller signs with now (the current
    # one first; two while a rotation is rolling), and the rotation's state ("rolling",
    # "finished": the old key is dropped, agents are told to distrust it; "" none).
    command_key_ids: list[ShortText] = []
    command_key_rotation: ShortText = ""
    # Who runs it and when this message was made: ``host`` (the controller's host name,
    # named by a second controller that refuses to start beside it), ``at`` (unix seconds,
    # controller clock, when this status was published; in the will, when the connection
    # that carries it was made) and ``reason`` of an offline status: "shutdown" (a clean
    # stop) or "connection-lost" (the will); "" while online.
    host: ShortText = ""
    at: UnixTime | None = None
    reason: ShortText = ""
    # The webhook (--notify-url) since start: notices sent, given up (out of tries or
    # refused), and dropped from its full queue before a try. Zeros without a webhook.
    notify_sent: Count = 0
    notify_failed: Count = 0
    notify_dropped: Count = 0


# --- R/view/{env} ---------------------------------------------------------------------------
class EnvView(msgspec.Struct, frozen=True):
    """The controller's judged status of one environment, retained for dashboards.

    ``since`` is the controller's clock (unix seconds) at the last transition; ``reason``
    says what caused it (``heartbeat``, ``connection-lost``, ``shutdown``, ``retired``,
    ``heartbeat-timeout``), ``last_seen`` when the controller last heard a heartbeat.
    """

    env: EnvId
    status: ViewStatus
    since: UnixTime
    flapping: bool = False
    reason: ShortText = ""
    last_seen: UnixTime | None = None
    interval: Seconds | None = None
    # False for an agent that connects as an environment with no record: it is shown as
    # "unregistered" and never receives commands.
    registered: bool = True
    # The resources under pressure (an open cpu-, memory- or disk-pressure episode), by the
    # heartbeat's field names: "cpu", "mem", "disk".
    pressure: list[ShortText] = []
    # Link quality: the share of heartbeats missed over the last hour (percent, from seq
    # gaps and silences) and the reconnects in it; None until measured.
    missed_pct: Percent | None = None
    reconnects_1h: Count | None = None
    # The operations log's incidents of this environment not resolved yet.
    open_incidents: Count = 0


# --- R/alerts/{env} -------------------------------------------------------------------------
class Alert(msgspec.Struct, frozen=True):
    """One alert edge: ``raised`` once when an episode starts, ``cleared`` once when it ends."""

    kind: AlertKind
    state: AlertState
    env: EnvId
    ts: UnixTime
    detail: ShortText = ""


# --- R/env/{env}/cmd ------------------------------------------------------------------------
class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Every command carries an ``id`` (a command delivered twice runs once), ``env`` (the
    environment it is for) and ``expires`` (unix seconds): a command that arrives or would
    start after it is dropped and reported with an ``expired`` event. The controller also
    sets the MQTT 5 message expiry, so the broker drops it too. On the wire a command is
    always inside a :class:`SignedCommand`; the agent refuses a command without ``env`` or
    ``expires`` (both default to None only so that old payloads still decode)."""

    id: CommandId
    expires: UnixTime | None = None
    env: EnvId | None = None


class Ping(_Command, frozen=True, kw_only=True, tag="ping"):
    """Ask an agent to answer with a ``pong`` event: a liveness probe of the command path."""


class Deploy(_Command, frozen=True, kw_only=True, tag="deploy"):
    """Run ``workflow`` as deployment ``dep``: preflight, then (unless ``dry_run``) its
    steps. A dry run reports the preflight and runs nothing."""

    dep: DeploymentId
    workflow: Workflow
    dry_run: bool = False


class Update(_Command, frozen=True, kw_only=True, tag="update"):
    """Settings the agent applies at once and keeps across its restarts. ``config`` keys:
    ``heartbeat_interval``, ``log_level``, ``endpoints.NAME`` (an empty value removes it).
    ``labels`` are the record's labels, for the agent's information."""

    interval: Seconds | None = None
    config: dict[ShortText, ShortText] = {}
    labels: dict[ShortText, ShortText] = {}


class Restart(_Command, frozen=True, kw_only=True, tag="restart"):
    """Restart the running workflows, or only the one named ``workflow``."""

    workflow: ShortText = ""


class Cancel(_Command, frozen=True, kw_only=True, tag="cancel"):
    """Stop deployment ``dep`` for good: one still queued in the agent or in its preflight
    never starts, a running job is stopped (its process group killed), a running service is
    stopped and removed from what the agent starts again at boot. With ``workflow`` (an
    ``undeploy``), whatever runs of that workflow is stopped and removed, whichever its
    deployment (``dep`` is then the one the controller believes runs, or empty). The agent
    confirms each deployment it stopped with a ``cancelled`` event naming this command
    (``cmd``) and the deployment (``dep``); when nothing matches it answers ``rejected``."""

    dep: ShortText = ""
    workflow: ShortText = ""


class Retire(_Command, frozen=True, kw_only=True, tag="retire"):
    """Stop every workflow, publish offline/retired, clear the retained status, wipe the
    credentials and exit; the agent refuses to start again for this environment."""


class Credentials(_Command, frozen=True, kw_only=True, tag="credentials"):
    """A new broker credential, made beside the one in use: log in as ``username``
    (``{env}.{generation}``) from now on. ``sealed`` is the base64 of the JSON object
    ``{"password": ..., "proof": ...}`` sealed to the agent's ``box_key`` (a libsodium
    sealed box, PyNaCl ``SealedBox``): only the agent can read it. The agent keeps the
    previous credential until the new one works, and reports ``proof`` (``cred_proof``)
    while logged in with this one."""

    username: ShortText
    generation: Annotated[int, msgspec.Meta(ge=1, le=999_999_999)]
    sealed: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    box_key: ShortText = ""  # the agent key it is sealed to


class Trust(_Command, frozen=True, kw_only=True, tag="trust"):
    """Trust ``key`` (a base64 Ed25519 public key, the controller's new command key) too,
    from now on and across restarts; acknowledged (``ack``, op ``trust``). Sent signed with
    a key the agent trusts already, while the controller's command key is rotated."""

    key: ShortText


class Distrust(_Command, frozen=True, kw_only=True, tag="distrust"):
    """Stop trusting the key whose id is ``key`` (the controller's old command key, once a
    rotation is finished); acknowledged (``ack``, op ``distrust``). Refused when it is the
    key that signed this command or the only key the agent trusts."""

    key: ShortText


Command = Ping | Deploy | Update | Restart | Retire | Credentials | Trust | Distrust | Cancel


class SignedCommand(msgspec.Struct, frozen=True, tag="signed", tag_field="type"):
    """What the controller publishes on ``R/env/{env}/cmd``: a command signed with its
    Ed25519 key (PyNaCl ``SigningKey.sign``). ``key`` is the key id (the first 16 hex digits
    of the SHA-256 of the public key), ``signed`` the base64 of the 64-byte signature
    followed by the command's JSON, which the agent reads only once the signature holds."""

    key: ShortText
    signed: str


# --- R/env/{env}/events ---------------------------------------------------------------------
class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Common to every event.

    ``seq`` numbers the events of one stream ``src`` (the agent's outbox, which keeps it
    across restarts; ``controller`` for events the controller itself records): the
    controller stores each (env, src, seq) once. ``ts`` is the sender's clock, for people
    only. ``cmd`` and ``dep`` name the command and the deployment an event belongs to.
    """

    env: EnvId
    seq: Count
    src: ShortText = ""
    ts: UnixTime | None = None
    cmd: ShortText = ""
    dep: ShortText = ""


class WorkflowProcess(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One workflow the agent runs, as its ``pong`` reports it: ``kind`` ``job`` (the one
    the worker runs now) or ``service`` (kept running); ``running``: its process is up now
    (a service between two starts is not); ``restarts``: a service's restarts so far."""

    workflow: ShortText
    dep: ShortText = ""
    kind: Literal["job", "service"] = "job"
    running: bool = True
    restarts: Count = 0


class Pong(_Event, frozen=True, kw_only=True, tag="pong"):
    """The answer to a ``ping``. ``processes``: the workflows the agent runs now (empty
    when it never loaded its executor, or runs nothing; added later, so old agents send
    none); ``executor``: whether its executor is loaded."""

    processes: list[WorkflowProcess] = []
    executor: bool = False


class CommandRejected(_Event, frozen=True, kw_only=True, tag="rejected"):
    """A command the agent did not run: a bad payload, an unknown type, a failed
    preflight (for a deployment), an unknown workflow to restart, a retired agent."""

    reason: ShortText


class Accepted(_Event, frozen=True, kw_only=True, tag="accepted"):
    """A deployment command was taken; preflight follows."""

    workflow: ShortText
    version: ShortText
    dry_run: bool = False


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One preflight check, as judged on the target."""

    kind: CheckKind
    name: ShortText
    ok: bool
    detail: ShortText = ""
    ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # how long the check took


class Preflight(_Event, frozen=True, kw_only=True, tag="preflight"):
    """Every check of a workflow's ``requires``, all reported even when one fails."""

    ok: bool
    checks: list[Check] = []
    dry_run: bool = False


class Started(_Event, frozen=True, kw_only=True, tag="started"):
    """Preflight passed: the steps start now."""

    workflow: ShortText
    version: ShortText


class StepStarted(_Event, frozen=True, kw_only=True, tag="step-started"):
    step: ShortText
    index: Count


class StepFinished(_Event, frozen=True, kw_only=True, tag="step-finished"):
    """``exit_code`` None: the step could not be started or was killed by a signal;
    ``timed_out``: killed (the whole process group) after its timeout. The tails are the
    last lines of its output, with secret values masked."""

    step: ShortText
    index: Count
    exit_code: int | None
    duration: Annotated[float, msgspec.Meta(ge=0)]
    ok: bool
    timed_out: bool = False
    stdout: OutputTail = ""
    stderr: OutputTail = ""


class Succeeded(_Event, frozen=True, kw_only=True, tag="succeeded"):
    """Every step of a job exited 0."""

    duration: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Running(_Event, frozen=True, kw_only=True, tag="running"):
    """A service's last step is up (it survived its start-up grace period)."""


class Failed(_Event, frozen=True, kw_only=True, tag="failed"):
    reason: ShortText
    step: ShortText = ""


class RolledBack(_Event, frozen=True, kw_only=True, tag="rolled-back"):
    """The new version failed to start; the version that ran before is running again."""

    restored: ShortText  # the deployment id restored
    version: ShortText = ""
    reason: ShortText = ""


class ServiceRestarted(_Event, frozen=True, kw_only=True, tag="service-restarted"):
    """A service's process exited and was started again after ``delay`` seconds."""

    step: ShortText
    restarts: Count
    exit_code: int | None = None
    delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Stopped(_Event, frozen=True, kw_only=True, tag="stopped"):
    """A running workflow was stopped: replaced by a new deployment, restarted, retired."""

    reason: ShortText
    by: ShortText = ""  # the deployment that replaced it (it is restored if that one fails)


class Cancelled(_Event, frozen=True, kw_only=True, tag="cancelled"):
    """A deployment stopped for good at the operator's word (``deployments cancel``,
    ``undeploy``): by the agent, answering the ``cancel`` command ``cmd``, or, for one still
    queued in the controller, by the controller itself (``src`` ``controller``). Nothing
    brings it back: a service is no longer started again at the agent's boot."""

    reason: ShortText = ""


class Overridden(_Event, frozen=True, kw_only=True, tag="overridden"):
    """The controller's own record (``src`` ``controller``) of a deployment sent past a
    refusal of its gate at the operator's word (``deploy --force --reason``): ``check`` is
    the refusal overridden (``flapping``), ``reason`` the operator's."""

    check: ShortText
    reason: ShortText = ""


class Expired(_Event, frozen=True, kw_only=True, tag="expired"):
    """A command dropped unrun because its time was up (on the agent), or a queued
    deployment whose environment did not come online within its TTL (the controller)."""

    reason: ShortText = ""


class Ack(_Event, frozen=True, kw_only=True, tag="ack"):
    """The outcome of an ``update``, ``restart``, ``retire``, ``credentials``, ``trust`` or
    ``distrust`` command."""

    op: Literal["update", "restart", "retire", "credentials", "trust", "distrust"]
    ok: bool
    detail: ShortText = ""


Event = (
    Pong
    | CommandRejected
    | Accepted
    | Preflight
    | Started
    | StepStarted
    | StepFinished
    | Succeeded
    | Running
    | Failed
    | RolledBack
    | ServiceRestarted
    | Stopped
    | Cancelled
    | Overridden
    | Expired
    | Ack
)


_M = TypeVar("_M", bound=msgspec.Struct)


def replace(message: _M, **changes: Any) -> _M:
    """A copy of a (frozen) message with some fields changed."""
    return msgspec.structs.replace(message, **changes)
