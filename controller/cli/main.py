"""``edgeplane``: the controller daemon and the operator commands.

Each command lives in its own module of this package with ``add_parser(subparsers)``, which
registers its flags and sets ``handler`` to a function ``(args) -> int``. Command modules
keep their heavy imports (aiomqtt, aiosqlite, yaml, the daemon, the demo) inside the
handler, so that ``edgeplane status`` does not pay for the daemon, and so that ``--help``
works on an installation without the ``[controller]`` extra; a command that needs it then
says in one line what to install.

The flags many commands share (``--broker``, ``--topic-root``, ``--timeout``, ``--config``)
may come before the command as well as after it, for the commands that take them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from edgeplane.controller.cli import (
    broker,
    controller,
    demo,
    deploy,
    deployments,
    env,
    events,
    incidents,
    operators,
    rollout,
    status,
    undeploy,
    up,
    watch,
)
from edgeplane.shared import __version__
from edgeplane.shared.errors import EdgeplaneError, SettingsError

__all__ = ["build_parser", "main", "take_flags_before_command"]

# dest, flag, metavar, help: flags taken before the command, for the command to resolve.
COMMON_FLAGS: Final = (
    ("broker", "--broker", "URL", "the broker, mqtt://HOST:PORT or mqtts://HOST:PORT"),
    ("topic_root", "--topic-root", "ROOT", "the root of every edgeplane topic"),
    ("timeout", "--timeout", "SECONDS", "seconds to wait for the controller or the views"),
    ("config", "--config", "FILE", "TOML file of the command's settings"),
)

JSON_HELP: Final = "print JSON instead of text"
SIGPIPE_EXIT: Final = 128 + 13  # as a shell reports a command killed by SIGPIPE

# Top-level module -> the extra that installs it.
EXTRA_OF_MODULE: Final = {
    "aiomqtt": "controller",
    "aiosqlite": "controller",
    "cryptography": "controller",
    "iotcore": "controller",
    "structlog": "controller",
    "yaml": "controller",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``edgeplane: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgeplane: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Typed as the base class: to the commands, their parsers are argument parsers.
    parser: argparse.ArgumentParser = _Parser(
        prog="edgeplane",
        description="Control plane for fleets of edge runtime targets, over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edgeplane {__version__}")
    shared = parser.add_argument_group(
        "flags of several commands",
        "accepted here, before the command, by the commands that take them (see "
        "COMMAND --help for defaults); given after the command too, that one wins",
    )
    for name, flag, metavar, text in COMMON_FLAGS:
        shared.add_argument(flag, dest=f"before_{name}", metavar=metavar, help=text)
    shared.add_argument(
        "--json", dest="before_json", action="store_true", default=None, help=JSON_HELP
    )
    # Subparsers are of the parser's own class (argparse's default), so they too report
    # usage errors in one line.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up.add_parser(commands)
    controller.add_parser(commands)
    status.add_parser(commands)
    watch.add_parser(commands)
    env.add_parser(commands)
    deploy.add_parser(commands)
    deployments.add_parser(commands)
    rollout.add_parser(commands)
    undeploy.add_parser(commands)
    events.add_parser(commands)
    incidents.add_parser(commands)
    demo.add_parser(commands)
    broker.add_parser(commands)
    operators.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    take_flags_before_command(parser, args)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgeplane events | head`: the reader has what it wanted
        _quiet_stdout()
        return SIGPIPE_EXIT
    except EdgeplaneError as exc:
        from edgeplane.controller.operator.output import visible

        print(f"edgeplane: {visible(str(exc))}", file=sys.stderr)  # it may quote the wire
        return 2 if isinstance(exc, SettingsError) else 1
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        command = _command(args).removeprefix("edgeplane ")
        print(
            f"edgeplane: {command} needs the {extra} extra, which is not installed (no module "
            f"named {exc.name!r}): pip install 'edgeplane[{extra}]'",
            file=sys.stderr,
        )
        return 1
    return code


def take_flags_before_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Hand a common flag given before the command to the command, which takes it as its
    own (None: not given); refuse it for a command without that flag."""
    for name, flag, _, _ in COMMON_FLAGS:
        value = getattr(args, f"before_{name}")
        if value is None:
            continue
        if not hasattr(args, name):
            command = _command(args)
            parser.exit(
                2, f"edgeplane: {flag} does not apply to {command} (see {command} --help)\n"
            )
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.before_json:
        if not hasattr(args, "json"):
            command = _command(args)
            parser.exit(
                2, f"edgeplane: --json does not apply to {command} (see {command} --help)\n"
            )
        args.json = True


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what could not be
    written raises no second BrokenPipeError on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _command(args: argparse.Namespace) -> str:
    """``edgeplane env list``: the command as typed (a nested one's dest is COMMAND_command)."""
    words = ["edgeplane", args.command]
    nested = getattr(args, f"{args.command}_command", None)
    if nested:
        words.append(nested)
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
