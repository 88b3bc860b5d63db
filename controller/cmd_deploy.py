"""``edgeplane deploy``: placeholder until the command lands (issue 3, in progress)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "deploy", help="deploy a workflow to an environment (in progress)"
    )
    parser.set_defaults(handler=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    raise SystemExit("edgeplane deploy: not built yet")
