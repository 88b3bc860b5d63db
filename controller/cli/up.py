"""``edgeplane up``: a broker, the controller and the default cloud environment's agent, in
the foreground until Ctrl-C or SIGTERM (see :mod:`edgeplane.controller.broker.stack`).

The broker, in order of preference: the one given with ``--broker`` (neither started nor
stopped); one already listening on ``127.0.0.1:PORT``; a private mosquitto; the embedded
broker of the ``iotcore`` package. ``--broker-kind mosquitto|embedded`` insists on starting
that one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edgeplane.shared.errors import EdgeplaneError, SettingsError

if TYPE_CHECKING:
    from edgeplane.controller.broker.stack import StackSettings

__all__ = ["add_parser", "settings_of"]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a broker, the controller and the default cloud agent in the foreground",
        description="Run a broker (found, given or started), the controller and the "
        "'default-cloud' environment's agent until Ctrl-C or SIGTERM.",
    )
    _add_broker_flags(parser)
    parser.add_argument(
        "--topic-root",
        metavar="ROOT",
        help="root of every edgeplane topic (default: edgeplane/v1)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        help="where the controller database, the agent state and a started broker's data "
        "live (default: $XDG_STATE_HOME/edgeplane or ~/.local/state/edgeplane)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        metavar="SECONDS",
        type=_interval,
        default=10.0,
        help="seconds between the default agent's heartbeats (default: 10)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default="auto",
        help="log format of up and its children (default: console at a terminal, else json)",
    )
    parser.set_defaults(handler=run)


def _add_broker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="use this broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of "
        "finding or starting one",
    )
    parser.add_argument(
        "--broker-kind",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="auto: a broker already on the port, else mosquitto, else the embedded one; "
        "mosquitto or embedded: start that one (default: auto)",
    )
    parser.add_argument(
        "--port",
        metavar="PORT",
        type=_port,
        default=1883,
        help="loopback MQTT port to find or start a broker on (default: 1883)",
    )
    parser.add_argument(
        "--ws-port",
        metavar="PORT",
        type=_port,
        default=9001,
        help="MQTT-over-WebSockets port of a started mosquitto, for browser dashboards; "
        "0 for none (default: 9001)",
    )


def run(args: argparse.Namespace) -> int:
    from edgeplane.controller.broker.stack import run_local_stack
    from edgeplane.shared.logs import configure_logging

    configure_logging(args.log_format)
    return run_local_stack(settings_of(args))


def settings_of(args: argparse.Namespace) -> StackSettings:
    """The typed settings of the flags; a bad one is a :class:`SettingsError`."""
    from edgeplane.controller.broker.stack import StackSettings
    from edgeplane.controller.broker.state_dir import default_state_dir
    from edgeplane.shared.broker_url import BrokerUrl
    from edgeplane.shared.topics import TopicRoot

    try:
        topic_root = TopicRoot(args.topic_root) if args.topic_root is not None else TopicRoot()
    except EdgeplaneError as exc:
        raise SettingsError(f"--topic-root: {exc}") from exc
    try:
        broker = BrokerUrl.parse(args.broker) if args.broker is not None else None
    except EdgeplaneError as exc:
        raise SettingsError(f"--broker: {exc}") from exc
    if broker is None and args.port == 0:
        raise SettingsError("--port: 0 is not a port a broker can be found or started on")
    return StackSettings(
        state_dir=(args.state_dir or default_state_dir()).expanduser().resolve(),
        broker=broker,
        topic_root=topic_root,
        broker_kind=args.broker_kind,
        port=args.port,
        ws_port=args.ws_port or None,
        heartbeat_interval=args.heartbeat_interval,
        log_format=args.log_format,
    )
