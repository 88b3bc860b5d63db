"""The settings of the operator commands, as frozen dataclasses: each value from its flag, else
its ``EDGEPLANE_*`` variable, else the ``--config`` TOML file (or ``EDGEPLANE_CONFIG``), else
the default, as for the controller (:mod:`edgeplane.controller.daemon.settings`).

A bad value raises :class:`SettingsError` naming the setting and where it came from, which
the command line turns into one line and exit status 2. The file may hold only the
command's settings (a misspelt key is an error, not silently ignored).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from edgeplane.shared import settings as common
from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.identity import IDENTITY_SETTINGS, attach
from edgeplane.shared.settings import Setting
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "ANSWER_TIMEOUT",
    "OPERATOR_SETTINGS",
    "VIEW_SETTINGS",
    "VIEW_WAIT",
    "WATCH_SETTINGS",
    "OperatorSettings",
    "ViewSettings",
    "WatchSettings",
    "add_settings_flags",
    "load_operator_settings",
    "load_view_settings",
    "load_watch_settings",
]

ANSWER_TIMEOUT: Final = 5.0  # as controller.operator.client.DEFAULT_TIMEOUT (not imported: aiomqtt)
VIEW_WAIT: Final = 15.0
DEFAULT_TOPIC_ROOT: Final = TopicRoot()

_BROKER: Final = Setting(
    "broker", common.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"
)
_TOPIC_ROOT: Final = Setting("topic_root", common.topic_root, DEFAULT_TOPIC_ROOT, "topic root")

OPERATOR_SETTINGS: Final = (
    _BROKER,
    _TOPIC_ROOT,
    Setting("timeout", common.positive_float, ANSWER_TIMEOUT, "seconds to wait for the controller"),
    *IDENTITY_SETTINGS,
)
VIEW_SETTINGS: Final = (
    _BROKER,
    _TOPIC_ROOT,
    Setting("timeout", common.positive_float, VIEW_WAIT, "most seconds to wait for the views"),
    *IDENTITY_SETTINGS,
)
WATCH_SETTINGS: Final = (_BROKER, _TOPIC_ROOT, *IDENTITY_SETTINGS)


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """A command that asks the controller: where it is, and how long to wait for answers."""

    broker: BrokerUrl = DEFAULT_BROKER
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    timeout: float = ANSWER_TIMEOUT


@dataclass(frozen=True, slots=True)
class ViewSettings:
    """``edgeplane status``: where the views are, and the most seconds to wait for them."""

    broker: BrokerUrl = DEFAULT_BROKER
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    timeout: float = VIEW_WAIT


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """``edgeplane watch``: where the views are (it waits for them until Ctrl-C)."""

    broker: BrokerUrl = DEFAULT_BROKER
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT


Flags = argparse.Namespace | Mapping[str, Any]
_METAVARS: Final = {"broker": "URL", "timeout": "SECONDS"}


def load_operator_settings(
    flags: Flags, environ: Mapping[str, str] | None = None
) -> OperatorSettings:
    return OperatorSettings(**_resolve(OPERATOR_SETTINGS, flags, environ))


def load_view_settings(flags: Flags, environ: Mapping[str, str] | None = None) -> ViewSettings:
    return ViewSettings(**_resolve(VIEW_SETTINGS, flags, environ))


def load_watch_settings(flags: Flags, environ: Mapping[str, str] | None = None) -> WatchSettings:
    return WatchSettings(**_resolve(WATCH_SETTINGS, flags, environ))


def _resolve(
    settings: Sequence[Setting], flags: Flags, environ: Mapping[str, str] | None
) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    config_file = given.get("config") or environ.get("EDGEPLANE_CONFIG") or None
    return attach(common.resolve(settings, given, environ, config_file))


def add_settings_flags(
    parser: argparse.ArgumentParser, settings: Sequence[Setting], *, inherited: bool = False
) -> None:
    """One flag per setting, and ``--config``. A flag not given is None (the resolver then
    looks further); with ``inherited`` it is left out of the namespace instead, so that a
    subcommand does not overwrite what its parent command was given (``deployments --env X
    list``)."""
    absent = argparse.SUPPRESS if inherited else None
    common.add_flags(parser, settings, absent=absent, metavars=_METAVARS)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=absent,
        help="TOML file of these settings; env EDGEPLANE_CONFIG",
    )
