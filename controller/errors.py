"""The controller's exceptions. Nothing outside :mod:`edgeplane.controller.mqtt` sees paho
or aiomqtt errors: they arrive as :class:`BrokerUnavailable`.

EdgeplaneError
├── ControllerError
│   ├── BrokerStartError     a broker could not be started or found
│   ├── BrokerAdminError     the broker's dynamic security plugin refused or did not answer
│   ├── SiteInitError        ``broker init`` could not write a site's broker directory
│   ├── StoreError           the SQLite database could not be opened or written
│   ├── CommandKeyError      the command key file is unreadable, invalid or not private
│   ├── AnotherController    another controller is active on the broker and topic root
│   └── NoControllerAnswer   an operator command got no answer in time
├── BrokerUnavailable        the MQTT connection failed or was lost (shared.errors)
└── RequestRefused           an operator request the controller refuses, ``code`` says why
                             (shared.errors)
"""

from __future__ import annotations

from typing import ClassVar

from edgeplane.shared.errors import BrokerUnavailable, EdgeplaneError, RequestRefused

__all__ = [
    "AnotherController",
    "BrokerAdminError",
    "BrokerStartError",
    "BrokerUnavailable",
    "CommandKeyError",
    "ControllerError",
    "NoControllerAnswer",
    "RequestRefused",
    "SiteInitError",
    "StoreError",
]


class ControllerError(EdgeplaneError):
    """Base class of the controller's errors."""


class BrokerStartError(ControllerError):
    """A broker could not be started (no binary, port taken, it exited)."""


class BrokerAdminError(ControllerError):
    """A command to the broker's dynamic security plugin failed; ``error`` is the plugin's
    own words (``Client already exists``), empty when no answer came."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error


class SiteInitError(ControllerError):
    """``edgeplane broker init`` refused or failed (a site already there, no plugin)."""


class StoreError(ControllerError):
    """The database could not be opened, migrated or written."""


class CommandKeyError(ControllerError):
    """The key that signs commands cannot be used: unreadable, invalid, or readable by
    group or others."""


class AnotherController(ControllerError):
    """Another controller is alive on the same broker and topic root: this one refused to
    start, or (both started at once) gave way to it. ``edgeplane controller run`` exits
    with :attr:`EXIT_STATUS`."""

    EXIT_STATUS: ClassVar[int] = 3


class NoControllerAnswer(ControllerError):
    """An operator command got no answer from a controller within its timeout."""
