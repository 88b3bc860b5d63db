"""``edgeplane broker init DIR``: prepare a site's broker (see
:mod:`edgeplane.controller.broker.site` and docs/security.md).

Exit status: 0 written; 1 refused or failed (one line on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return port


def _host(text: str) -> str:
    from edgeplane.controller.broker.site import validate_host

    try:
        return validate_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="prepare a site's mosquitto (TLS, passwords, per-identity ACLs)",
        description="Prepare a site's mosquitto broker.",
    )
    actions = parser.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="write a broker directory: config, CA, server certificate, first identities",
        description="Write DIR/mosquitto.conf (TLS, no anonymous access, the dynamic "
        "security plugin), a CA and the broker's certificate, DIR/controller.toml (the "
        "controller's identity) and DIR/admin.toml (the first operator, role admin). "
        "Run the broker with: mosquitto -c DIR/mosquitto.conf",
    )
    init.add_argument("directory", metavar="DIR", type=Path, help="the site directory (0700)")
    init.add_argument("--port", type=_port, default=8883, help="MQTT over TLS port (default: 8883)")
    init.add_argument("--ws-port", type=_port, help="also MQTT over secure WebSockets on this port")
    init.add_argument(
        "--host",
        dest="hosts",
        metavar="NAME",
        type=_host,
        action="append",
        help="a name or address clients reach the broker by, for its certificate; repeat "
        "for more; the first goes in the settings files; without --host: localhost, "
        "127.0.0.1 and this machine's host name",
    )
    init.add_argument(
        "--topic-root", metavar="ROOT", help="root of every edgeplane topic (default: edgeplane/v1)"
    )
    init.add_argument(
        "--plugin",
        metavar="FILE",
        type=Path,
        help="mosquitto's dynamic security plugin, when it is not in the usual lib directories",
    )
    init.add_argument(
        "--force", action="store_true", help="overwrite a site already in DIR (new CA, passwords)"
    )
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    from edgeplane.controller.broker.site import SiteOptions, default_hosts, init_site, summary
    from edgeplane.shared.errors import EdgeplaneError, SettingsError
    from edgeplane.shared.topics import TopicRoot

    try:
        root = TopicRoot(args.topic_root) if args.topic_root is not None else TopicRoot()
    except EdgeplaneError as exc:
        raise SettingsError(f"--topic-root: {exc}") from exc
    options = SiteOptions(
        directory=args.directory,
        port=args.port,
        ws_port=args.ws_port,
        hosts=tuple(dict.fromkeys(args.hosts)) if args.hosts else default_hosts(),
        topic_root=root,
        force=args.force,
        plugin=args.plugin,
    )
    print(summary(init_site(options)))
    return 0
