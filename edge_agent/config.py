"""The agent's settings: each from its flag, ``EDGEPLANE_*`` variable, ``--config`` TOML
file or default (in that order), converted and checked before anything starts.

To add a setting, add one :class:`~shared.settings.Setting` to :data:`SETTINGS` and a
field of the same name to :class:`AgentConfig`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edge_agent.state import default_state_dir
from shared import settings as s
from shared.broker_url import DEFAULT_BROKER, BrokerUrl
from shared.errors import SettingsError
from shared.topics import TopicRoot

__all__ = ["CONFIG_ENV_VAR", "SETTINGS", "AgentConfig", "add_arguments", "load_config"]

CONFIG_ENV_VAR: Final = "EDGEPLANE_CONFIG"
# shared.logs.LogFormat, spelled out: importing shared.logs here would load structlog (and
# its imports) before the agent knows whether it needs them.
LogFormat = Literal["auto", "console", "json"]
MAX_INTERVAL: Final = 86_400.0  # the wire type's limit on `interval`
MAX_KEEPALIVE: Final = 65_535  # MQTT's limit


def _interval(value: Any) -> float:
    seconds = s.positive_float(value)
    if seconds > MAX_INTERVAL:
        raise ValueError(f"expected at most {MAX_INTERVAL:.0f} seconds, got {value!r}")
    return seconds


def _keepalive(value: Any) -> int:
    seconds = s.positive_int(value)
    if seconds > MAX_KEEPALIVE:
        raise ValueError(f"expected at most {MAX_KEEPALIVE} seconds, got {value!r}")
    return seconds


SETTINGS: Final = (
    s.Setting("env_id", s.env_id, None, "environment id, also the MQTT client id (required)"),
    s.Setting("broker", s.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT or mqtts://"),
    s.Setting(
        "state_dir",
        s.path,
        None,
        "directory for the agent's state (default: edgeplane-agent/ENV under "
        "$XDG_STATE_HOME or ~/.local/state)",
    ),
    s.Setting("heartbeat_interval", _interval, 10.0, "seconds between heartbeats"),
    s.Setting("topic_root", s.topic_root, TopicRoot(), "root of the topic tree"),
    s.Setting("keepalive", _keepalive, 30, "MQTT keepalive, seconds"),
    s.Setting(
        "takeover_backoff",
        s.positive_float,
        60.0,
        "after another runtime took over this environment's identity, wait between half "
        "this and this many seconds (doubling on repeats) before connecting again",
    ),
    s.Setting("log_format", s.choice("auto", "console", "json"), "auto", "log format"),
    s.Setting(
        "log_level", s.choice("debug", "info", "warning", "error"), "info", "lowest level logged"
    ),
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    env_id: str
    state_dir: Path
    broker: BrokerUrl = DEFAULT_BROKER
    heartbeat_interval: float = 10.0
    topic_root: TopicRoot = field(default_factory=TopicRoot)
    keepalive: int = 30
    takeover_backoff: float = 60.0
    log_format: LogFormat = "auto"
    log_level: str = "info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``edge-agent run``: one per setting, and ``--config``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML file with any of the settings below (keys as in snake_case); "
        f"env {CONFIG_ENV_VAR}",
    )
    s.add_flags(parser, SETTINGS)


def load_config(
    flags: argparse.Namespace | Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Resolve every setting; raise :class:`SettingsError` naming the first bad one."""
    environ = os.environ if environ is None else environ
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    config_file = given.get("config") or environ.get(CONFIG_ENV_VAR) or None
    values = s.resolve(SETTINGS, given, environ, config_file)
    if values["env_id"] is None:
        raise SettingsError(
            "--env-id: required (give --env-id, EDGEPLANE_ENV_ID or env_id in the config file)"
        )
    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir(values["env_id"], dict(environ))
    return AgentConfig(**values)
