"""The settings of ``edgeplane controller run``: flag > ``EDGEPLANE_*`` > TOML file > default.

A bad value raises :class:`shared.errors.SettingsError` with one line naming the setting,
which the command line turns into exit status 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edgeplane.controller.core.notices import check_notify_url
from edgeplane.controller.core.retention import parse_age
from edgeplane.shared import settings as common
from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.codec import DEFAULT_MAX_PAYLOAD
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.identity import IDENTITY_SETTINGS, attach
from edgeplane.shared.resources import DEFAULT_THRESHOLDS, Resource, threshold_percent
from edgeplane.shared.topics import TopicRoot

if TYPE_CHECKING:  # shared.logs imports structlog: not for `edgeplane --help`
    from edgeplane.shared.logs import LogFormat

__all__ = ["CONTROLLER_SETTINGS", "ControllerSettings", "default_db_path", "load_settings"]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULT_TOPIC_ROOT: Final = TopicRoot()
COMMAND_KEY_FILE: Final = "command-key"
DEFAULT_RETENTION: Final = "30d"  # as --help shows it; converted in load_settings


def default_db_path() -> Path:
    """``$XDG_STATE_HOME/edgeplane/controller.db`` (``~/.local/state`` without it)."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "edgeplane" / "controller.db"


def whole_number(value: Any) -> int:
    """A whole number >= 0 (``--flap-low 0`` is a valid choice)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return number


def payload_limit(value: Any) -> int:
    number = common.positive_int(value)
    if number > 256 * 1024 * 1024:
        raise ValueError(f"expected at most 268435456 bytes (the MQTT limit), got {value!r}")
    return number


def notify_url(value: Any) -> str:
    return check_notify_url(common.text(value))


def retention_age(value: Any) -> float | None:
    """A duration (``30d``, ``12h``, ``90m``, ``45s``, or seconds); ``0`` or ``off``: none."""
    return parse_age(value if isinstance(value, str) else str(value))


def retention_count(value: Any) -> int | None:
    """A whole number >= 0, or ``off``; ``0`` or ``off``: no limit."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    return whole_number(value) or None


Setting = common.Setting
CONTROLLER_SETTINGS: Final = (
    Setting("broker", common.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"),
    Setting(
        "db",
        common.path,
        None,
        "SQLite database file (default: edgeplane/controller.db under $XDG_STATE_HOME or "
        "~/.local/state)",
    ),
    Setting("topic_root", common.topic_root, DEFAULT_TOPIC_ROOT, "topic root"),
    Setting("flap_window", common.positive_float, 600.0, "flapping window, seconds"),
    Setting("flap_high", common.positive_int, 6, "transitions in the window that raise flapping"),
    Setting("flap_low", whole_number, 2, "transitions in the window that clear flapping"),
    Setting("identity_window", common.positive_float, 600.0, "identity-conflict window, s"),
    Setting("identity_quiet", common.positive_float, 300.0, "quiet time that clears a conflict"),
    Setting(
        "cpu_threshold",
        threshold_percent,
        DEFAULT_THRESHOLDS["cpu"],
        "cpu percent that raises cpu-pressure after 3 heartbeats in a row (0 < x <= 100)",
    ),
    Setting(
        "memory_threshold",
        threshold_percent,
        DEFAULT_THRESHOLDS["mem"],
        "memory percent that raises memory-pressure after 3 heartbeats in a row",
    ),
    Setting(
        "disk_threshold",
        threshold_percent,
        DEFAULT_THRESHOLDS["disk"],
        "disk percent that raises disk-pressure after 3 heartbeats in a row",
    ),
    Setting("max_payload", payload_limit, DEFAULT_MAX_PAYLOAD, "largest accepted payload, bytes"),
    Setting("stats_interval", common.positive_float, 60.0, "seconds between status updates"),
    Setting("command_ttl", common.positive_float, 300.0, "seconds a command may wait for an agent"),
    Setting(
        "validation_max_age",
        common.positive_float,
        3600.0,
        "seconds a passing dry run validates a critical workflow's version on its environment",
    ),
    Setting(
        "lockout_grace",
        common.positive_float,
        35.0,
        "seconds a retired, online agent has to retire before its broker client is deleted",
    ),
    Setting(
        "rotate_after",
        common.positive_float,
        None,
        "under broker init: rotate an environment's broker credential on its own once it "
        "is this many seconds old (unset: only when an operator asks); an operator's "
        "credential that old is listed as due and warned about once a day",
    ),
    Setting(
        "command_key_file",
        common.path,
        None,
        "the Ed25519 key that signs every command, made (mode 0600) if missing (default: "
        "command-key beside the database; in memory for a :memory: database)",
    ),
    Setting(
        "notify_url",
        notify_url,
        None,
        "webhook: POST a JSON body for every incident edge to this http:// or https:// URL "
        "(user:password in it is sent as basic authentication, never logged)",
    ),
    Setting("notify_timeout", common.positive_float, 5.0, "seconds one webhook POST may take"),
    Setting(
        "notify_tries",
        common.positive_int,
        6,
        "webhook: tries of one notice (connection errors, 5xx and 429 are tried again with "
        "backoff, for 5 minutes at most) before it is given up",
    ),
    Setting(
        "retention",
        retention_age,
        DEFAULT_RETENTION,
        "prune events, transitions and alerts older than this (30d, 12h, 90m, seconds; "
        "0 or off: keep them for ever)",
    ),
    Setting(
        "retention_per_env",
        retention_count,
        10_000,
        "keep at most this many of each environment's events, transitions and alerts, the "
        "newest (0 or off: no limit)",
    ),
    Setting(
        "retention_every",
        common.positive_float,
        300.0,
        "seconds between two rounds of pruning",
    ),
    Setting("log_format", common.choice("auto", "console", "json"), "auto", "log format"),
    Setting("log_level", common.choice(*LOG_LEVELS), "info", "log level"),
    *IDENTITY_SETTINGS,
)


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    broker: BrokerUrl = DEFAULT_BROKER
    db: Path | None = None
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    flap_window: float = 600.0
    flap_high: int = 6
    flap_low: int = 2
    identity_window: float = 600.0
    identity_quiet: float = 300.0
    cpu_threshold: float = DEFAULT_THRESHOLDS["cpu"]
    memory_threshold: float = DEFAULT_THRESHOLDS["mem"]
    disk_threshold: float = DEFAULT_THRESHOLDS["disk"]
    max_payload: int = DEFAULT_MAX_PAYLOAD
    stats_interval: float = 60.0
    command_ttl: float = 300.0
    validation_max_age: float = 3600.0
    lockout_grace: float = 35.0
    rotate_after: float | None = None
    command_key_file: Path | None = None
    notify_url: str | None = None
    notify_timeout: float = 5.0
    notify_tries: int = 6
    retention: float | None = 30 * 86_400.0
    retention_per_env: int | None = 10_000
    retention_every: float = 300.0
    log_format: LogFormat = "auto"
    log_level: str = "info"

    @property
    def thresholds(self) -> dict[Resource, float]:
        """The pressure thresholds by the heartbeat's field names."""
        return {
            "cpu": self.cpu_threshold,
            "mem": self.memory_threshold,
            "disk": self.disk_threshold,
        }

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else default_db_path()

    @property
    def command_key_path(self) -> Path | None:
        """Where the command key is kept; None: in memory only (a ``:memory:`` database)."""
        if self.command_key_file is not None:
            return self.command_key_file
        if str(self.db_path) == ":memory:":
            return None
        return self.db_path.parent / COMMAND_KEY_FILE


def load_settings(
    flags: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> ControllerSettings:
    """Resolve every setting; ``flags.config`` (or ``EDGEPLANE_CONFIG``) names the TOML file."""
    environ = os.environ if environ is None else environ
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    config_file = given.get("config") or environ.get("EDGEPLANE_CONFIG") or None
    values = attach(common.resolve(CONTROLLER_SETTINGS, given, environ, config_file))
    if values["retention"] == DEFAULT_RETENTION:
        values["retention"] = retention_age(DEFAULT_RETENTION)
    settings = ControllerSettings(**values)
    if settings.flap_low >= settings.flap_high:
        raise SettingsError(
            f"--flap-low ({settings.flap_low}) must be below --flap-high ({settings.flap_high})"
        )
    return settings
