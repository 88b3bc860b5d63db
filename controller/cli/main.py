"""``edgeplane``: the controller daemon and the operator commands.

Each subcommand lives in its own module ``controller/cmd_*.py`` with ``add_parser(subparsers)``,
which registers its flags and sets ``handler`` to a function ``(args) -> int``. Command
modules keep their heavy imports inside the handler, so ``edgeplane status`` does not pay
for the daemon's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol, cast

from edgeplane.shared import __version__
from edgeplane.shared.errors import EdgeplaneError, SettingsError

__all__ = ["main"]

# subcommand name -> module; a module may register nested subcommands itself.
COMMANDS: dict[str, str] = {
    "up": "edgeplane.controller.cli.up",
    "controller": "edgeplane.controller.cli.controller",
    "status": "edgeplane.controller.cli.status",
    "watch": "edgeplane.controller.cli.watch",
    "env": "edgeplane.controller.cli.env",
    "deploy": "edgeplane.controller.cli.deploy",
    "deployments": "edgeplane.controller.cli.deployments",
    "events": "edgeplane.controller.cli.events",
    "demo": "edgeplane.controller.cli.demo",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``edgeplane: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgeplane: {message} (see {self.prog} --help)\n")


class CommandModule(Protocol):
    def add_parser(self, subparsers: argparse._SubParsersAction[Any]) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeplane",
        description="Control plane for fleets of edge runtime targets, over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edgeplane {__version__}")
    # Subparsers are of the parser's own class (argparse's default), so they too report
    # usage errors in one line.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        module = cast(CommandModule, importlib.import_module(module_name))
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except EdgeplaneError as exc:
        print(f"edgeplane: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
