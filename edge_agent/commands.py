"""The command path: what arrives on ``R/env/{env}/cmd``, from bytes to action.

verify -> decode -> dedupe -> expiry -> dispatch, without MQTT: the agent (and the fleet
simulator) hand :meth:`CommandHandler.handle` a payload, and every outcome is an event
emitted to the injected :class:`~edge_agent.events.EventSink` (the outbox, so answers are
durable too):

- not a command this agent can authenticate: a ``rejected`` event whose reason starts with
  ``no-command-key`` (the agent was given no key: the log line says how to enrol it),
  ``unsigned``, ``unknown-key`` or ``bad-signature``. The command inside is not even
  decoded. A signed command for another environment (``wrong-env``) or without an expiry
  (``no-expiry``) is refused too;
- not a valid command (not JSON, a wrong schema, an unknown type, oversized): a
  ``rejected`` event naming the reason. Every rejection is counted per reason and logged
  at most once per reason a minute. A flood of garbage cannot become a flood of events:
  rejections are answered at a bounded rate, and those left unanswered are counted and
  logged. Only a rejection of a command the controller signed for this agent names the
  command (``cmd``), so a forged payload cannot fail a real deployment;
- a command id taken before (a QoS 1 redelivery, a resend, a replay): a ``rejected``
  event ``replayed`` that names no command, and it does not run again. Ids are kept on
  disk until their command expires, so a restart does not open the window again;
- past its ``expires`` on arrival: an ``expired`` event, and it does not run;
- ``ping``: a ``pong``; ``deploy``: handed to the executor, which reports every phase;
  ``update``: applied by the agent's callback and acknowledged (``ack``, op ``update``);
  ``restart``: handed to the executor, which acknowledges it; ``cancel``: handed to the
  executor, which answers ``cancelled`` for each deployment it stopped (or ``rejected``
  when nothing of it runs here); ``retire``: handed to the
  agent's retirement, after which every other command is rejected; ``credentials``: a
  rotated broker credential, kept by the agent's callback and acknowledged (``ack``, op
  ``credentials``), after which the agent logs in again with it; ``trust`` and
  ``distrust``: a command key added to or dropped from the keys the agent trusts (the
  injected :class:`KeyStore`, kept in its state directory), acknowledged (``ack``, op
  ``trust`` / ``distrust``). A distrust of the key that signed it is refused.

A command is remembered before it runs: one that the agent dies in the middle of taking
is not taken again (the controller sees no answer rather than a second run).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import msgspec

from edgeplane.edge_agent.errors import AgentError
from edgeplane.edge_agent.events import EventSink
from edgeplane.shared.clock import Clock
from edgeplane.shared.codec import COMMAND, DEFAULT_MAX_PAYLOAD, SIGNED_COMMAND
from edgeplane.shared.errors import CommandRefused, DecodeError
from edgeplane.shared.logs import get_logger
from edgeplane.shared.messages import (
    Ack,
    Cancel,
    Command,
    CommandRejected,
    Credentials,
    Deploy,
    Distrust,
    Event,
    Expired,
    Ping,
    Pong,
    Restart,
    Retire,
    Trust,
    Update,
    WorkflowProcess,
)

if TYPE_CHECKING:
    from edgeplane.shared.command_signature import CommandVerifier

__all__ = [
    "ENROL_HINT",
    "KNOWN_COMMANDS",
    "CommandHandler",
    "CommandLog",
    "Execution",
    "KeyStore",
    "MemoryCommandLog",
    "RateLimit",
    "UpdateOutcome",
]

KNOWN_COMMANDS: Final = frozenset(
    {"ping", "deploy", "update", "restart", "retire", "credentials", "trust", "distrust", "cancel"}
)
LOG_EVERY: Final = 60.0  # seconds between two log lines about one rejection reason
_SHORT_TEXT: Final = 256
ENROL_HINT: Final = (
    'no command key, so no command runs; enrol this agent: command_key = "<the '
    "controller's public key>\" in its settings file (the key is in the controller's "
    "start-up log and on R/controller/status)"
)

log = get_logger(__name__)

UpdateOutcome = tuple[bool, str]  # (ok, detail) of an applied or refused update


class CommandLog(Protocol):
    """The ids of the commands already taken (:class:`~edge_agent.outbox.Outbox` keeps
    them on disk)."""

    def seen(self, cmd_id: str) -> bool: ...

    def remember(self, cmd_id: str, until: float | None = None) -> None:
        """Keep ``cmd_id``, at least until ``until`` (unix seconds: its expiry)."""


class Execution(Protocol):
    """The part of :class:`edge_agent.execution.executor.Executor` the command path drives."""

    def submit(self, command: Deploy) -> None: ...

    def restart(self, workflow: str = "", cmd_id: str = "") -> None: ...

    def cancel(self, dep: str, workflow: str = "", cmd_id: str = "") -> None: ...

    @property
    def loaded(self) -> bool:
        """Whether the real executor is loaded (:meth:`processes` never loads it)."""
        ...

    def processes(self) -> list[WorkflowProcess]: ...


class KeyStore(Protocol):
    """The command keys an agent trusts, changed by ``trust`` and ``distrust`` commands
    (:class:`~edge_agent.trusted_keys.TrustedKeys` keeps them on disk)."""

    def keys(self) -> list[bytes]: ...

    def trust(self, public_key: str) -> UpdateOutcome: ...

    def distrust(self, name: str, signed_by: str) -> UpdateOutcome: ...


class MemoryCommandLog:
    """A :class:`CommandLog` in memory, the newest ``keep`` ids (for simulated agents)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, cmd_id: str) -> bool:
        return cmd_id in self._ids

    def remember(self, cmd_id: str, until: float | None = None) -> None:
        self._ids[cmd_id] = None
        self._ids.move_to_end(cmd_id)
        while len(self._ids) > self.keep:
            self._ids.popitem(last=False)


class _Envelope(msgspec.Struct):
    """The parts of a command readable even when the rest is wrong."""

    type: Any = None
    id: Any = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


class RateLimit:
    """A token bucket: ``rate`` per second on average, bursts of up to ``burst``."""

    def __init__(self, clock: Clock, rate: float = 10.0, burst: float = 20.0) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = clock.monotonic()

    def allow(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class CommandHandler:
    """Takes command payloads; answers through ``sink``; returns the events it emitted.

    ``command_keys`` are the public keys (32 bytes each) whose signatures it trusts (none:
    every command is refused); with ``key_store``, the keys are the store's, which
    ``trust`` and ``distrust`` commands change. ``executor`` runs deployments and
    restarts (None: this agent cannot run workflows, and says so). ``on_update`` applies
    an update and says how it went; ``on_retire`` starts the retirement (None: retiring
    is refused).
    """

    def __init__(
        self,
        env: str,
        clock: Clock,
        sink: EventSink,
        *,
        commands: CommandLog | None = None,
        command_keys: Sequence[bytes] = (),
        executor: Execution | None = None,
        on_update: Callable[[Update], UpdateOutcome] | None = None,
        on_retire: Callable[[Retire], None] | None = None,
        on_credentials: Callable[[Credentials], UpdateOutcome] | None = None,
        key_store: KeyStore | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        answer_limit: RateLimit | None = None,
    ) -> None:
        self.env = env
        self.max_payload = max_payload
        self.executor = executor
        self.rejected: Counter[str] = Counter()  # reason -> payloads rejected
        self.unanswered = 0  # rejections not answered because of the rate limit
        self.duplicates = 0  # commands dropped because their id was taken before
        self.retiring = False
        self._clock = clock
        self._sink = sink
        self._command_keys = tuple(command_keys)
        self._key_store = key_store
        self._verifier: CommandVerifier | None = None  # made at the first command
        self._verifier_keys: tuple[bytes, ...] = ()
        self._signed_by = ""  # the key id of the command being handled
        self._commands = MemoryCommandLog() if commands is None else commands
        self._on_update = on_update
        self._on_retire = on_retire
        self._on_credentials = on_credentials
        self._answer_limit = answer_limit or RateLimit(clock)
        self._logged_at: dict[str, float] = {}
        self._since_log: Counter[str] = Counter()

    def handle(self, payload: bytes) -> list[Event]:
        try:
            inner = self._verified(payload)
        except CommandRefused as exc:
            return self._reject(payload, exc.reason, exc.detail)
        except DecodeError as exc:
            return self._reject(payload, exc.reason, exc.detail)
        try:
            command = self._authentic_command(inner)
        except CommandRefused as exc:
            return self._reject(payload, exc.reason, exc.detail)
        except DecodeError as exc:
            return self._reject(inner, *self._explain(inner, exc), cmd=_command_id(inner))
        if self._commands.seen(command.id):
            return self._replayed(payload, command)
        self._commands.remember(command.id, until=command.expires)
        late = self._lateness(command)
        if late is not None:
            return self._expired(command, late)
        return self._dispatch(command)

    # authentication --------------------------------------------------------------------------
    def _verified(self, payload: bytes) -> bytes:
        """The command JSON inside a payload signed by a trusted key."""
        if not self._trusted():
            raise CommandRefused("no-command-key", ENROL_HINT)
        try:
            envelope = SIGNED_COMMAND.decode(payload, limit=self.max_payload)
        except DecodeError as exc:
            if exc.reason == "schema" and _command_type(payload) != "signed":
                raise CommandRefused("unsigned", "not a signed command") from exc
            raise
        inner = self._verifier_for_keys().open(envelope)
        self._signed_by = envelope.key
        return inner

    def _trusted(self) -> tuple[bytes, ...]:
        if self._key_store is None:
            return self._command_keys
        return tuple(self._key_store.keys())

    def _verifier_for_keys(self) -> CommandVerifier:
        keys = self._trusted()
        if self._verifier is None or keys != self._verifier_keys:
            # Here, not at the top: PyNaCl stays out of an idle agent's memory.
            from edgeplane.shared.command_signature import CommandVerifier

            self._verifier = CommandVerifier(keys)
            self._verifier_keys = keys
        return self._verifier

    def _authentic_command(self, inner: bytes) -> Command:
        command = COMMAND.decode(inner, limit=self.max_payload)
        if command.env != self.env:
            raise CommandRefused(
                "wrong-env", f"signed for environment {command.env!r}, this is {self.env!r}"
            )
        if command.expires is None:
            raise CommandRefused("no-expiry", "a signed command must say when it expires")
        return command

    def _replayed(self, payload: bytes, command: Command) -> list[Event]:
        self.duplicates += 1
        detail = f"command {command.id!r} was taken before (a redelivery or a replay), not again"
        return self._reject(payload, "replayed", detail)

    # the commands ----------------------------------------------------------------------------
    def _dispatch(self, command: Command) -> list[Event]:
        if self.retiring:
            return [self._refuse(command, "retired: this agent is retiring")]
        log.info("command", cmd=command.id, type=_type_of(command))
        match command:
            case Ping():
                return [self._pong(command)]
            case Deploy():
                return self._deploy(command)
            case Update():
                return [self._update(command)]
            case Restart():
                return self._restart(command)
            case Retire():
                return self._retire(command)
            case Credentials():
                return [self._credentials(command)]
            case Trust() | Distrust():
                return [self._key_change(command)]
            case Cancel():
                return self._cancel(command)

    def _pong(self, command: Ping) -> Event:
        """The answer to a ping, with the workflows running (none, and the executor left
        unloaded, when it was never loaded)."""
        executor = self.executor
        if executor is None or not executor.loaded:
            return self._sink.emit(Pong, cmd=command.id)
        return self._sink.emit(Pong, cmd=command.id, processes=executor.processes(), executor=True)

    def _deploy(self, command: Deploy) -> list[Event]:
        if self.executor is None:
            return [self._refuse(command, "this agent cannot run workflows")]
        try:
            self.executor.submit(command)
        except AgentError as exc:
            return [self._refuse(command, f"not accepted: {exc}")]
        return []  # the executor reports every phase

    def _update(self, command: Update) -> Event:
        if self._on_update is None:
            ok, detail = False, "this agent takes no updates"
        else:
            ok, detail = self._on_update(command)
        return self._sink.emit(Ack, cmd=command.id, op="update", ok=ok, detail=_short(detail))

    def _restart(self, command: Restart) -> list[Event]:
        if self.executor is None:
            detail = "this agent runs no workflows"
            return [self._sink.emit(Ack, cmd=command.id, op="restart", ok=False, detail=detail)]
        try:
            self.executor.restart(workflow=command.workflow, cmd_id=command.id)
        except AgentError as exc:
            detail = _short(f"not restarted: {exc}")
            return [self._sink.emit(Ack, cmd=command.id, op="restart", ok=False, detail=detail)]
        return []  # the executor acknowledges it

    def _cancel(self, command: Cancel) -> list[Event]:
        if not command.dep and not command.workflow:
            return [self._refuse(command, "a cancel must name a deployment or a workflow")]
        if self.executor is None:
            return [self._refuse(command, "this agent runs no workflows")]
        try:
            self.executor.cancel(command.dep, command.workflow, command.id)
        except AgentError as exc:
            return [self._refuse(command, f"not cancelled: {exc}")]
        return []  # the executor answers: cancelled, or rejected

    def _credentials(self, command: Credentials) -> Event:
        if self._on_credentials is None:
            ok, detail = False, "this agent takes no credentials"
        else:
            ok, detail = self._on_credentials(command)
        return self._sink.emit(Ack, cmd=command.id, op="credentials", ok=ok, detail=_short(detail))

    def _key_change(self, command: Trust | Distrust) -> Event:
        op: Literal["trust", "distrust"] = "trust" if isinstance(command, Trust) else "distrust"
        store = self._key_store
        if store is None:
            ok, detail = False, "this agent keeps no command keys of its own"
        elif isinstance(command, Trust):
            ok, detail = store.trust(command.key)
        else:
            ok, detail = store.distrust(command.key, self._signed_by)
        return self._sink.emit(Ack, cmd=command.id, op=op, ok=ok, detail=_short(detail))

    def _retire(self, command: Retire) -> list[Event]:
        if self._on_retire is None:
            detail = "this agent cannot retire"
            return [self._sink.emit(Ack, cmd=command.id, op="retire", ok=False, detail=detail)]
        self.retiring = True
        self._on_retire(command)
        return []  # the retirement acknowledges it once the workflows are stopped

    def _refuse(self, command: Command, reason: str) -> Event:
        dep = command.dep if isinstance(command, Deploy) else ""
        return self._sink.emit(CommandRejected, cmd=command.id, dep=dep, reason=_short(reason))

    # expiry ----------------------------------------------------------------------------------
    def _lateness(self, command: Command) -> float | None:
        """Seconds past the command's ``expires``, or None when it is in time."""
        if command.expires is None:
            return None
        late = self._clock.time() - command.expires
        return late if late > 0 else None

    def _expired(self, command: Command, late: float) -> list[Event]:
        dep = command.dep if isinstance(command, Deploy) else ""
        reason = f"arrived {late:.1f} s after it expired"
        log.warning("expired command dropped", cmd=command.id, type=_type_of(command), late=late)
        if not self._answer_limit.allow():  # an old command replayed in a loop, say
            self.unanswered += 1
            return []
        return [self._sink.emit(Expired, cmd=command.id, dep=dep, reason=reason)]

    # garbage ---------------------------------------------------------------------------------
    def _reject(self, payload: bytes, reason: str, detail: str, cmd: str = "") -> list[Event]:
        """``cmd``: the id of a command this agent authenticated, the rejection is its."""
        self.rejected[reason] += 1
        self._since_log[reason] += 1
        self._log_rejection(reason, detail, len(payload))
        if not self._answer_limit.allow():
            self.unanswered += 1
            return []
        text = _short(f"{reason}: {detail}")
        return [self._sink.emit(CommandRejected, reason=text, cmd=_short(cmd))]

    def _explain(self, payload: bytes, exc: DecodeError) -> tuple[str, str]:
        if exc.reason == "schema":
            kind = _command_type(payload)
            if isinstance(kind, str) and kind not in KNOWN_COMMANDS:
                return "unknown-command", f"unknown command type {kind[:64]!r}"
        return exc.reason, exc.detail

    def _log_rejection(self, reason: str, detail: str, size: int) -> None:
        now = self._clock.monotonic()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged_at[reason] = now
        log.warning(
            "command rejected",
            reason=reason,
            detail=_short(detail),
            size=size,
            rejected_since_last_log=self._since_log[reason],
            rejected_total=self.rejected[reason],
            unanswered_total=self.unanswered,
        )
        self._since_log[reason] = 0


def _type_of(command: Command) -> str:
    return str(type(command).__struct_config__.tag)


def _peek(payload: bytes, limit: int) -> _Envelope | None:
    if not payload or len(payload) > limit:
        return None
    try:
        return _envelope_decoder.decode(payload)
    except msgspec.MsgspecError:
        return None


def _command_type(payload: bytes) -> object:
    envelope = _peek(payload, DEFAULT_MAX_PAYLOAD)
    return None if envelope is None else envelope.type


def _command_id(payload: bytes, limit: int = DEFAULT_MAX_PAYLOAD) -> str:
    envelope = _peek(payload, limit)
    if envelope is None or not isinstance(envelope.id, str):
        return ""
    return envelope.id


def _short(text: str) -> str:
    return text if len(text) <= _SHORT_TEXT else text[: _SHORT_TEXT - 1] + "…"
