"""Argument types of the operator commands, and the flags they all take.

argparse turns an argument type's ``ArgumentTypeError`` into a usage error: one line on
stderr and exit status 2, before anything is sent.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

from edgeplane.controller.operator.settings import OPERATOR_SETTINGS, add_settings_flags
from edgeplane.shared import settings as common
from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import InvalidBrokerUrl, InvalidId
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.settings import Setting

__all__ = [
    "StoreOnce",
    "add_json_flag",
    "add_operator_flags",
    "add_output_flags",
    "broker_url_arg",
    "env_id_arg",
    "key_value_arg",
    "label_arg",
    "label_key_arg",
    "project_arg",
    "seconds_arg",
    "short_text_arg",
]

_LABEL_KEY: Final = re.compile(r"[A-Za-z0-9._/-]{1,63}")  # as shared.rpc.Label
_PROJECT: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?")  # as shared.rpc.ProjectName


def add_operator_flags(
    parser: argparse.ArgumentParser,
    settings: tuple[Setting, ...] = OPERATOR_SETTINGS,
    *,
    inherited: bool = False,
) -> None:
    """The settings' flags with ``--config``, and ``--json``. ``inherited``: the parser is a
    subcommand whose parent takes the same flags (see :func:`add_settings_flags`)."""
    add_settings_flags(parser, settings, inherited=inherited)
    add_json_flag(parser, inherited=inherited)


def add_json_flag(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if inherited else False,
        help="print JSON instead of text",
    )


def add_output_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--output FILE`` (a new settings file, mode 0600) and ``--force``."""
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help=f"write {what} (mode 0600) to FILE"
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")


def broker_url_arg(value: str) -> BrokerUrl:
    try:
        return BrokerUrl.parse(value)
    except InvalidBrokerUrl as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class StoreOnce(argparse.Action):
    """A flag that takes one value: given twice, a usage error naming it (argparse would
    keep the last one and drop the others without a word)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        seen = f"_given_{self.dest}"
        if getattr(namespace, seen, False):
            parser.error(f"argument {option_string}: given twice (this command takes one)")
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, values)


def env_id_arg(value: str) -> str:
    try:
        return validate_env_id(value)
    except InvalidId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_value_arg(value: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, rest


def label_key_arg(value: str) -> str:
    if not _LABEL_KEY.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid label name {value!r}: 1-63 letters, digits, '.', '_', '/' or '-'"
        )
    return value


def label_arg(value: str) -> tuple[str, str]:
    """``KEY=VALUE`` with a label name as the controller accepts it."""
    key, text = key_value_arg(value)
    label_key_arg(key)
    if len(text) > 256:
        raise argparse.ArgumentTypeError(f"label {key!r}: at most 256 characters")
    return key, text


def project_arg(value: str) -> str:
    if not _PROJECT.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid project {value!r}: 1-42 lowercase letters, digits and inner hyphens"
        )
    return value


def seconds_arg(limit: float) -> Callable[[str], float]:
    """A positive number of seconds, at most ``limit``."""

    def convert(value: str) -> float:
        try:
            seconds = float(common.positive_float(value))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if seconds > limit:
            raise argparse.ArgumentTypeError(f"at most {limit:g} seconds, got {value}")
        return seconds

    return convert


def short_text_arg(value: str) -> str:
    if not value.strip() or len(value) > 256:
        raise argparse.ArgumentTypeError(f"expected 1-256 characters, got {len(value)}")
    return value
