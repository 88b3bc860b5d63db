"""``edgeplane up``: a broker, the controller and the default cloud environment's agent, in
the foreground until Ctrl-C or SIGTERM (see :mod:`edgeplane.controller.broker.stack`).

The broker, in order of preference: the one given with ``--broker`` (neither started nor
stopped); one already listening on ``127.0.0.1:PORT``; a private mosquitto; the embedded
broker of the ``iotcore`` package. ``--broker-kind mosquitto|embedded`` insists on starting
that one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from edgeplane.shared.errors import SettingsError
from edgeplane.shared.settings import Setting

if TYPE_CHECKING:
    from edgeplane.controller.broker.stack import StackSettings

__all__ = ["add_parser", "settings_of"]


def _port(value: object) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {value!r}")
    return port


def _settings() -> tuple[Setting, ...]:
    from edgeplane.shared import settings as s
    from edgeplane.shared.topics import TopicRoot

    kinds = s.choice("auto", "mosquitto", "embedded")
    return (
        Setting(
            "broker",
            s.broker_url,
            None,
            "use this broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of finding or "
            "starting one",
        ),
        Setting(
            "broker_kind",
            kinds,
            "auto",
            "auto: a broker already on the port, else mosquitto, else the embedded one; "
            "mosquitto or embedded: start that one",
        ),
        Setting("port", _port, 1883, "loopback MQTT port to find or start a broker on"),
        Setting(
            "ws_port",
            _port,
            9001,
            "loopback MQTT-over-WebSockets port of a started mosquitto, for browser "
            "dashboards; 0 for none",
        ),
        Setting("topic_root", s.topic_root, TopicRoot(), "root of every edgeplane topic"),
        Setting(
            "state_dir",
            s.path,
            None,
            "where the controller database, the agent state and a started broker's data live "
            "(default: $XDG_STATE_HOME/edgeplane or ~/.local/state/edgeplane)",
        ),
        Setting(
            "heartbeat_interval",
            s.positive_float,
            10.0,
            "seconds between the default agent's heartbeats",
        ),
        Setting(
            "log_format",
            s.choice("auto", "console", "json"),
            "auto",
            "log format of up and its children (console at a terminal, else json)",
        ),
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edgeplane.shared.settings import add_flags

    parser = subparsers.add_parser(
        "up",
        help="run a broker, the controller and the default cloud agent in the foreground",
        description="Run a broker (found, given or started), the controller and the "
        "'default-cloud' environment's agent until Ctrl-C or SIGTERM. The development "
        "broker it starts listens on loopback only and has no authentication; a site's "
        "broker comes from `edgeplane broker init`.",
    )
    add_flags(parser, _settings(), metavars={"broker": "URL", "topic_root": "ROOT"})
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of these settings; env EDGEPLANE_CONFIG"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgeplane.controller.broker.stack import run_local_stack
    from edgeplane.shared.logs import configure_logging

    settings = settings_of(args)
    configure_logging(settings.log_format)  # type: ignore[arg-type]
    return run_local_stack(settings)


def settings_of(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> StackSettings:
    """The typed settings (flag > ``EDGEPLANE_*`` > ``--config`` file > default); a bad one
    is a :class:`SettingsError`."""
    from edgeplane.controller.broker.stack import StackSettings
    from edgeplane.controller.broker.state_dir import default_state_dir
    from edgeplane.shared.settings import resolve

    environ = os.environ if environ is None else environ
    config_file = args.config or environ.get("EDGEPLANE_CONFIG") or None
    values = resolve(_settings(), args, environ, config_file)
    if values["broker"] is None and values["port"] == 0:
        raise SettingsError("--port: 0 is not a port a broker can be found or started on")
    state_dir = values.pop("state_dir") or default_state_dir()
    values["ws_port"] = values["ws_port"] or None
    return StackSettings(state_dir=state_dir.expanduser().resolve(), **values)
