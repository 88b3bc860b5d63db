"""The agent's secrets file: ``NAME=value`` lines, readable by the agent's user only.

Format: one ``NAME=value`` per line; ``NAME`` is an environment variable name
(``^[A-Za-z_][A-Za-z0-9_]*$``); the value is everything after the first ``=``, with
surrounding spaces removed (quotes are not interpreted: they are part of the value). Blank
lines and lines starting with ``#`` are ignored. A name defined twice is an error.

:func:`load_secrets` refuses, with :class:`~edge_agent.errors.SecretsFileError` (a
``SettingsError``: ``edge-agent run`` exits 2 with one line), a file that is missing,
unreadable, not a regular file, readable by group or others, not UTF-8, or has a bad line.
Messages name the file and the line number, never a value or a line's text.

Every value is registered with the log redactor (:data:`shared.logs.redactor`) as it is
loaded, so no log line can show it. Values reach workflow steps only as environment
variables (:meth:`Secrets.env_for`), and step output is masked with :meth:`Secrets.mask`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from edgeplane.edge_agent.errors import SecretsFileError
from edgeplane.shared.logs import Redactor, redactor

__all__ = ["NAME_PATTERN", "Secrets", "load_secrets"]

NAME_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FILE_SIZE: Final = 1024 * 1024


class Secrets:
    """Named secret values. Its ``repr`` shows the names' count and the file, never values."""

    def __init__(self, values: Mapping[str, str], path: Path | None = None) -> None:
        self.path = path
        self._values = dict(values)
        self._masker = Redactor()
        self._masker.add(self._values.values())
        redactor.add(self._values.values())

    def names(self) -> frozenset[str]:
        return frozenset(self._values)

    def env_for(self, names: Iterable[str]) -> dict[str, str]:
        """The values of ``names`` (only those), keyed by name: a step's secret variables.
        A name that is not held raises :class:`SecretsFileError` naming it."""
        wanted = list(names)
        missing = sorted(set(wanted) - self._values.keys())
        if missing:
            raise SecretsFileError(f"secrets not in {self._where()}: {', '.join(missing)}")
        return {name: self._values[name] for name in wanted}

    def mask(self, text: str) -> str:
        """``text`` with every held value (of 3 or more characters) replaced by ``***``."""
        return self._masker.mask(text)

    def wipe(self) -> None:
        """Overwrite the file with zeros, flush it to disk and remove it; forget the values
        (used when the environment is retired)."""
        self._values.clear()
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SecretsFileError(f"cannot wipe {str(self.path)!r}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        except OSError as exc:
            raise SecretsFileError(f"cannot wipe {str(self.path)!r}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self.path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"<Secrets: {len(self._values)} names from {self._where()}>"

    def _where(self) -> str:
        return repr(str(self.path)) if self.path is not None else "the agent's secrets"


def load_secrets(path: Path | str) -> Secrets:
    """Read, check and parse the secrets file; see the module docstring for the rules."""
    path = Path(path)
    text = _read_private_file(path)
    return Secrets(_parse(text, path), path)


def _read_private_file(path: Path) -> str:
    where = repr(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise SecretsFileError(f"secrets file {where} does not exist") from exc
    except OSError as exc:
        raise SecretsFileError(f"secrets file {where} cannot be opened: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretsFileError(f"secrets file {where} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o044:
            raise SecretsFileError(
                f"secrets file {where} has mode {mode:04o}: it must not be readable by group"
                f" or others; run: chmod 600 {path}"
            )
        if info.st_size > MAX_FILE_SIZE:
            raise SecretsFileError(f"secrets file {where} is over {MAX_FILE_SIZE} bytes")
        data = os.read(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise SecretsFileError(f"secrets file {where} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretsFileError(f"secrets file {where} is not UTF-8 text") from exc


def _parse(text: str, path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, equals, value = stripped.partition("=")
        name = name.strip()
        if not equals or not NAME_PATTERN.match(name):
            # Never quote the line: it may be a value pasted without its name.
            raise SecretsFileError(
                f"secrets file {str(path)!r} line {number}: expected NAME=value, NAME made of"
                " letters, digits and _ (not starting with a digit)"
            )
        if name in values:
            raise SecretsFileError(
                f"secrets file {str(path)!r} line {number}: {name} is already defined on line"
                f" {first_line[name]}"
            )
        values[name] = value.strip()
        first_line[name] = number
    return values
