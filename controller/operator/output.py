"""What every operator command that talks to the controller shares: its flags, argument
types, and how it prints (tables and times for people, JSON for programs).

Exit status of every operator command: 0 on success; 1 when it failed (no broker, no
controller, a refusal, a failed deployment), with one line on stderr; 2 for usage errors
(bad flags or arguments, a bad workflow file), also one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from edgeplane.shared import settings as common
from edgeplane.shared.broker_url import DEFAULT_BROKER
from edgeplane.shared.errors import InvalidId
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.settings import Setting
from edgeplane.shared.topics import DEFAULT_ROOT, TopicRoot

__all__ = [
    "ANSWER_TIMEOUT",
    "OPERATOR_SETTINGS",
    "add_operator_flags",
    "ago",
    "env_id_arg",
    "key_value_arg",
    "label_arg",
    "label_key_arg",
    "print_json",
    "project_arg",
    "render_table",
    "seconds_arg",
    "short_text_arg",
    "to_json",
    "when",
]

_LABEL_KEY: Final = re.compile(r"[A-Za-z0-9._/-]{1,63}")  # as shared.rpc.Label
_PROJECT: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?")  # as shared.rpc.ProjectName

ANSWER_TIMEOUT: Final = 5.0  # as controller.operator.client.DEFAULT_TIMEOUT (not imported: aiomqtt)

OPERATOR_SETTINGS: Final = (
    Setting("broker", common.broker_url, DEFAULT_BROKER, "broker URL, mqtt://HOST:PORT"),
    Setting("topic_root", common.topic_root, TopicRoot(DEFAULT_ROOT), "topic root"),
    Setting("timeout", common.positive_float, ANSWER_TIMEOUT, "seconds to wait for the controller"),
)


def add_operator_flags(parser: argparse.ArgumentParser) -> None:
    common.add_flags(parser, OPERATOR_SETTINGS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


# --- argument types (argparse turns their ValueError into a usage error, exit 2) ----------
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


# --- output -------------------------------------------------------------------------------
def to_json(value: Any) -> str:
    import msgspec

    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def print_json(value: Any) -> None:
    print(to_json(value))


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def when(ts: float | None, *, clock: Callable[[], float] = time.time) -> str:
    """A timestamp for people: local time and how long ago, ``-`` for none."""
    if ts is None:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({ago(clock() - ts)})"


def ago(seconds: float) -> str:
    """``12s ago`` for a past moment, ``in 5m`` for a future one (negative ``seconds``)."""
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86_400:.0f}d"
