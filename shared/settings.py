"""Layered settings: command-line flag > ``EDGEPLANE_*`` environment variable > TOML file >
default. A bad value raises :class:`SettingsError` with one line naming the setting and
where the value came from, which the command-line entry points turn into exit status 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from edgeplane.shared.broker_url import BrokerUrl
from edgeplane.shared.errors import EdgeplaneError, SettingsError
from edgeplane.shared.ids import validate_env_id
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "ENV_PREFIX",
    "Setting",
    "add_flags",
    "broker_url",
    "choice",
    "env_id",
    "path",
    "positive_float",
    "positive_int",
    "read_table",
    "resolve",
    "text",
    "topic_root",
]

ENV_PREFIX = "EDGEPLANE_"


class Setting(msgspec.Struct, frozen=True):
    """One setting. ``convert`` takes a string (flag, environment) or a TOML value and
    returns the typed value, raising ``ValueError`` with a short explanation."""

    name: str  # snake_case: flag --kebab-case, variable EDGEPLANE_UPPER_CASE, TOML key as is
    convert: Callable[[Any], Any]
    default: Any
    help: str
    private: bool = False  # a file holding it must be readable by its owner only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


def add_flags(
    parser: argparse.ArgumentParser,
    settings: Sequence[Setting],
    *,
    absent: Any = None,
    metavars: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per setting, but none for a private one: a password on a command line
    is readable by everyone on the machine (``ps``), so it comes from the environment or a
    settings file. A flag not given is ``absent`` (None: "not given" is visible to the
    resolver; ``argparse.SUPPRESS``: left out of the namespace)."""
    for setting in settings:
        if setting.private:
            continue
        default = "" if setting.default is None else f" (default: {setting.default})"
        metavar = (metavars or {}).get(setting.name) or setting.name.split("_")[-1].upper()
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=absent,
            metavar=metavar,
            help=f"{setting.help}{default}; env {setting.env_var}",
        )


def resolve(
    settings: Sequence[Setting],
    flags: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    tables: Collection[str] = (),
) -> dict[str, Any]:
    """Resolve every setting from its highest-priority source and convert it.

    ``tables`` are keys of the TOML file that the caller reads itself (with
    :func:`read_table`), such as the agent's ``[endpoints]``."""
    environ = os.environ if environ is None else environ
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    file_values = _read_toml(Path(config_file)) if config_file else {}
    known = {s.name for s in settings} | {s.name.replace("_", "-") for s in settings}
    known |= set(tables)
    for key in file_values:
        if key not in known:
            raise SettingsError(f"{config_file}: unknown setting {key!r}")
    private = {s.name for s in settings if s.private}
    if config_file and private & {key.replace("-", "_") for key in file_values}:
        from edgeplane.shared.identity import check_private_file

        check_private_file(Path(config_file), "settings file")
    resolved: dict[str, Any] = {}
    for setting in settings:
        value, source = _pick(setting, given, environ, file_values, config_file)
        if source is None:
            resolved[setting.name] = setting.default
            continue
        try:
            resolved[setting.name] = setting.convert(value)
        except (ValueError, TypeError, EdgeplaneError) as exc:
            raise SettingsError(f"{source}: {exc}") from exc
    return resolved


def read_table(config_file: str | Path | None, name: str) -> dict[str, Any]:
    """The TOML table ``name`` of the config file (empty when there is no file or no such
    table); a value under ``name`` that is not a table raises :class:`SettingsError`."""
    if not config_file:
        return {}
    table = _read_toml(Path(config_file)).get(name, {})
    if not isinstance(table, dict):
        raise SettingsError(f"{config_file}: {name}: expected a table ([{name}]), got {table!r}")
    return table


def _pick(
    setting: Setting,
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
    config_file: str | Path | None,
) -> tuple[Any, str | None]:
    if given.get(setting.name) is not None:
        return given[setting.name], setting.flag
    if setting.env_var in environ:
        return environ[setting.env_var], setting.env_var
    for key in (setting.name, setting.name.replace("_", "-")):
        if key in file_values:
            return file_values[key], f"{config_file}: {key}"
    return None, None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only a process that reads a config file pays for the parser

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"--config: no such file {str(path)!r}") from exc
    except OSError as exc:
        raise SettingsError(f"--config: cannot read {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config: {path} is not valid TOML: {exc}") from exc


# --- converters ---------------------------------------------------------------------------
def positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive number, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def positive_int(value: Any) -> int:
    # int() would quietly turn bools into 0/1 and a TOML 2.5 into 2.
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a positive whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive whole number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def path(value: Any) -> Path:
    return Path(text(value)).expanduser()


def env_id(value: Any) -> str:
    return validate_env_id(text(value))


def broker_url(value: Any) -> BrokerUrl:
    return BrokerUrl.parse(text(value))


def topic_root(value: Any) -> TopicRoot:
    return TopicRoot(text(value))


def choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert
