"""The exceptions of the wire contract.

EdgeplaneError
├── InvalidId           an environment id that is not topic-safe
├── InvalidTopic        a topic outside the tree, or with a bad id in it
├── DecodeError         a payload that is not a valid message (``reason`` says why)
├── InvalidBrokerUrl    a ``--broker`` value that is not mqtt:// or mqtts://
├── InvalidVersionSpec  a model version specifier that is not PEP 440
├── SettingsError       a bad flag, environment variable or config-file value
├── WorkflowFileError   a workflow file that cannot be read or is not a valid workflow
├── BrokerUnavailable   the MQTT connection could not be made, or was lost
└── RequestRefused      an operator request the controller refused (``code`` says why)

``BrokerUnavailable`` and ``RequestRefused`` are raised on both sides of the wire (the
agent and the controller lose connections; the controller refuses a request and the
operator's client reports it), so they are defined here, once; each package's own
exception module lists them in its tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeplane.shared.rpc import ErrorCode

__all__ = [
    "BrokerUnavailable",
    "CommandRefused",
    "DecodeError",
    "EdgeplaneError",
    "InvalidBrokerUrl",
    "InvalidId",
    "InvalidTopic",
    "InvalidVersionSpec",
    "RequestRefused",
    "SettingsError",
    "WorkflowFileError",
]


class EdgeplaneError(Exception):
    """Base class of every error edgeplane raises on purpose."""


class InvalidId(EdgeplaneError, ValueError):
    """An environment id that does not match the contract's pattern."""


class InvalidTopic(EdgeplaneError, ValueError):
    """A topic that is not part of the edgeplane tree under the given root."""


class DecodeError(EdgeplaneError, ValueError):
    """A payload that could not be decoded into a valid message.

    ``reason`` is a short, stable slug (``too-large``, ``not-json``, ``schema``,
    ``env-mismatch``, ``bad-topic``) suitable for counting; the message says more.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandRefused(EdgeplaneError, ValueError):
    """A command the agent does not run because it cannot authenticate it.

    ``reason`` is a short, stable slug (``unsigned``, ``unknown-key``, ``bad-signature``,
    ``wrong-env``, ``no-expiry``, ``replayed``, ``no-command-key``) named in the agent's
    ``rejected`` event; the message says more.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidBrokerUrl(EdgeplaneError, ValueError):
    """A broker URL that is not ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT``."""


class SettingsError(EdgeplaneError, ValueError):
    """A setting with a bad value; the message names the setting and its source."""


class WorkflowFileError(EdgeplaneError, ValueError):
    """A workflow file that cannot be used: missing, unreadable, not YAML or JSON, or not a
    valid workflow. The message names the file, the field path (``where``, empty for the
    file as a whole) and what was expected::

        flow.yaml: steps[1].timeout: expected a number, got "soon"
    """

    def __init__(self, file: str, problem: str, where: str = "") -> None:
        super().__init__(f"{file}: {where}: {problem}" if where else f"{file}: {problem}")
        self.file = file
        self.where = where
        self.problem = problem


class InvalidVersionSpec(EdgeplaneError, ValueError):
    """A model version specifier that is not PEP 440 (``>=2.1,<3``; empty: any)."""

    def __init__(self, specifier: str) -> None:
        super().__init__(f"invalid version specifier {specifier!r}")
        self.specifier = specifier


class BrokerUnavailable(EdgeplaneError):
    """The connection to the broker could not be made, or was lost."""


class RequestRefused(EdgeplaneError):
    """A request refused with a code from :data:`edgeplane.shared.rpc.ErrorCode` and one
    sentence for people; the controller answers it as a failed reply, and the operator's
    client raises it again from that reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
