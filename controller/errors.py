"""The controller's exceptions. Nothing outside this package sees paho or aiomqtt errors.

ControllerError
├── BrokerStartError     a broker could not be started or found
├── BrokerUnavailable    the MQTT connection failed or was lost
├── StoreError           the SQLite database could not be opened or written
├── NoControllerAnswer   an operator command got no answer in time
└── RequestRefused       an operator request the controller refuses (``code`` says why)
"""

from __future__ import annotations

from edgeplane.shared.errors import EdgeplaneError
from edgeplane.shared.rpc import ErrorCode

__all__ = [
    "BrokerStartError",
    "BrokerUnavailable",
    "ControllerError",
    "NoControllerAnswer",
    "RequestRefused",
    "StoreError",
]


class ControllerError(EdgeplaneError):
    """Base class of the controller's errors."""


class BrokerStartError(ControllerError):
    """A broker could not be started (no binary, port taken, it exited)."""


class BrokerUnavailable(ControllerError):
    """The connection to the broker failed or was lost."""


class StoreError(ControllerError):
    """The database could not be opened, migrated or written."""


class NoControllerAnswer(ControllerError):
    """An operator command got no answer from a controller within its timeout."""


class RequestRefused(ControllerError):
    """A request refused with a code from :data:`shared.rpc.ErrorCode` and one sentence
    for people; the request handler turns it into a failed reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
