"""The agent's settings: each from its flag, ``EDGEPLANE_*`` variable, ``--config`` TOML
file or default (in that order), converted and checked before anything starts.

To add a setting, add one :class:`~shared.settings.Setting` to :data:`SETTINGS` and a
field of the same name to :class:`AgentConfig`.

The config file may also hold an ``[endpoints]`` table: named URLs a workflow may require::

    [endpoints]
    inference-api = "http://10.0.0.7:8080"

The controller can change some settings at run time (an ``update`` command): those are
:class:`Overrides`, checked here (:func:`plan_update`, pure), kept in the state directory
by :mod:`edge_agent.state` and laid over the local settings at every start
(:func:`with_overrides`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from edgeplane.shared import settings as s
from edgeplane.shared.broker_url import DEFAULT_BROKER, BrokerUrl
from edgeplane.shared.command_signature import parse_public_key
from edgeplane.shared.errors import SettingsError
from edgeplane.shared.identity import IDENTITY_SETTINGS, attach
from edgeplane.shared.logs import LogFormat
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "CONFIG_ENV_VAR",
    "LOG_LEVELS",
    "SETTINGS",
    "UPDATABLE_KEYS",
    "AgentConfig",
    "Overrides",
    "UpdateRefused",
    "add_arguments",
    "default_state_dir",
    "load_config",
    "plan_update",
    "with_overrides",
]

CONFIG_ENV_VAR: Final = "EDGEPLANE_CONFIG"
MAX_INTERVAL: Final = 86_400.0  # the wire type's limit on `interval`
MAX_KEEPALIVE: Final = 65_535  # MQTT's limit
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
ENDPOINTS_TABLE: Final = "endpoints"
# Like the names in a workflow's `requires` (shared.workflow.Name).
ENDPOINT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_URL: Final = 1024
UPDATABLE_KEYS: Final = ("heartbeat_interval", "log_level", "endpoints.NAME")


def default_state_dir(env_id: str, environ: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/edgeplane-agent/{env}``, or ``~/.local/state/edgeplane-agent/{env}``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgeplane-agent" / env_id


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


def _public_key(value: Any) -> str:
    text = s.text(value).strip()
    parse_public_key(text)
    return text


def _public_key_file(value: Any) -> str:
    """The public key in a file such as the controller's ``command-key.pub``."""
    path = s.path(value)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the public key in {str(path)!r}: {exc}") from exc
    try:
        return _public_key(text)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r} holds no public key: {exc}") from exc


def _public_keys(value: Any) -> tuple[str, ...]:
    """A TOML list of keys, or (flag, environment) keys separated by commas."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of base64 public keys, got {value!r}")
    return tuple(_public_key(item) for item in items if not isinstance(item, str) or item.strip())


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
    s.Setting("log_level", s.choice(*LOG_LEVELS), "info", "lowest level logged"),
    s.Setting(
        "models_dir",
        s.path,
        None,
        "directory of the models this target holds, as DIR/NAME/VERSION/ (reported to the "
        "controller, checked by preflight)",
    ),
    s.Setting(
        "secrets_file",
        s.path,
        None,
        "file of NAME=value lines, readable by its owner only; workflow steps see the "
        "secrets they require as environment variables",
    ),
    *IDENTITY_SETTINGS,
    s.Setting(
        "command_key",
        _public_key,
        None,
        "the controller's public key (base64, as `edgeplane controller run` logs it): the "
        "agent runs only commands it signed, and none without a key",
    ),
    s.Setting(
        "command_keys",
        _public_keys,
        None,
        "more trusted public keys (a TOML list, or separated by commas), e.g. the old and "
        "the new key while the controller's key is rotated",
    ),
    s.Setting(
        "command_key_file",
        _public_key_file,
        None,
        "a file holding the controller's public key (its COMMAND_KEY_FILE.pub), instead of "
        "--command-key",
    ),
)


class AgentConfig(msgspec.Struct, frozen=True):
    env_id: str
    state_dir: Path
    broker: BrokerUrl = DEFAULT_BROKER
    heartbeat_interval: float = 10.0
    topic_root: TopicRoot = msgspec.field(default_factory=TopicRoot)
    keepalive: int = 30
    takeover_backoff: float = 60.0
    log_format: LogFormat = "auto"
    log_level: str = "info"
    models_dir: Path | None = None
    secrets_file: Path | None = None
    endpoints: Mapping[str, str] = msgspec.field(default_factory=dict)  # name -> URL
    command_key: str | None = None  # base64 Ed25519 public keys whose commands it runs
    command_keys: tuple[str, ...] = ()

    def trusted_keys(self) -> list[bytes]:
        """Every public key the agent trusts to sign commands, once each."""
        keys = ([] if self.command_key is None else [self.command_key]) + list(self.command_keys)
        return [parse_public_key(key) for key in dict.fromkeys(keys)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``edge-agent run``: one per setting, and ``--config``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML file with any of the settings below (keys as in snake_case) and an "
        f"[endpoints] table of NAME = URL (named URLs workflows may require); "
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
    values = s.resolve(SETTINGS, given, environ, config_file, tables=(ENDPOINTS_TABLE,))
    values = attach(values)
    values["command_keys"] = values["command_keys"] or ()
    from_file = values.pop("command_key_file")
    if from_file is not None:
        values["command_keys"] = (*values["command_keys"], from_file)
    values["endpoints"] = _endpoints(s.read_table(config_file, ENDPOINTS_TABLE), config_file)
    if values["env_id"] is None:
        raise SettingsError(
            "--env-id: required (give --env-id, EDGEPLANE_ENV_ID or env_id in the config file)"
        )
    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir(values["env_id"], dict(environ))
    return AgentConfig(**values)


def _endpoints(table: Mapping[str, Any], config_file: str | None) -> dict[str, str]:
    endpoints: dict[str, str] = {}
    for name, url in table.items():
        problem = endpoint_problem(name, url)
        if problem:
            raise SettingsError(f"{config_file}: {ENDPOINTS_TABLE}.{name}: {problem}")
        endpoints[name] = url
    return endpoints


def endpoint_problem(name: str, url: Any) -> str:
    """Why ``name = url`` is not a valid endpoint ("" when it is)."""
    if not ENDPOINT_NAME.match(name):
        return (
            "expected a name of letters, digits, '.', '_' and '-' (64 at most, starting "
            "with a letter or digit)"
        )
    if not isinstance(url, str) or not url.strip():
        return f"expected a non-empty URL string, got {url!r}"
    if len(url) > MAX_URL:
        return f"URL over {MAX_URL} characters"
    return ""


# --- run-time changes from the controller -------------------------------------------------
class Overrides(msgspec.Struct, frozen=True):
    """Settings the controller changed (``update`` commands), laid over the local ones.

    ``endpoints`` maps a name to its URL, or to "" for an endpoint removed (also one that
    the config file defines)."""

    heartbeat_interval: float | None = None
    log_level: str | None = None
    endpoints: Mapping[str, str] = msgspec.field(default_factory=dict)
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)


class UpdateRefused(SettingsError):
    """An ``update`` the agent does not apply; the message names every bad key."""


def plan_update(
    current: Overrides,
    *,
    interval: float | None = None,
    config: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Overrides:
    """The overrides after an ``update``: all of it, or (:class:`UpdateRefused`) none."""
    config = config or {}
    unknown = sorted(key for key in config if not _updatable(key))
    if unknown:
        raise UpdateRefused(
            f"unknown config keys: {', '.join(unknown)} (known: {', '.join(UPDATABLE_KEYS)})"
        )
    problems: list[str] = []
    changes: dict[str, Any] = {}
    endpoints = dict(current.endpoints)
    if interval is not None:
        changes["heartbeat_interval"] = interval
    for key, value in config.items():
        try:
            if key == "heartbeat_interval":
                changes["heartbeat_interval"] = _interval(value)
            elif key == "log_level":
                changes["log_level"] = s.choice(*LOG_LEVELS)(value)
            else:
                endpoints[_endpoint_update(key, value)] = value.strip()
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise UpdateRefused("; ".join(problems))
    if labels is not None and labels:
        changes["labels"] = dict(labels)
    return msgspec.structs.replace(current, endpoints=endpoints, **changes)


def _updatable(key: str) -> bool:
    return key in ("heartbeat_interval", "log_level") or key.startswith(ENDPOINTS_TABLE + ".")


def _endpoint_update(key: str, value: str) -> str:
    name = key.removeprefix(ENDPOINTS_TABLE + ".")
    if value.strip():  # an empty value removes the endpoint
        problem = endpoint_problem(name, value)
        if problem:
            raise ValueError(problem)
    elif not ENDPOINT_NAME.match(name):
        raise ValueError(endpoint_problem(name, "-"))
    return name


def with_overrides(config: AgentConfig, overrides: Overrides) -> AgentConfig:
    """The settings in force: the local ones with the controller's changes laid over."""
    endpoints = {**config.endpoints, **overrides.endpoints}
    return msgspec.structs.replace(
        config,
        heartbeat_interval=overrides.heartbeat_interval or config.heartbeat_interval,
        log_level=overrides.log_level or config.log_level,
        endpoints={name: url for name, url in endpoints.items() if url},
    )
