"""Settings files that hold a new identity: an agent's bootstrap file (``env create
--output``) and an operator's settings (``operator add --output``).

A file is TOML, mode 0600 from its first byte. An existing file is refused unless
``force``; :func:`check_target` says so before anything is asked of the controller, so a
refusal never leaves a broker client whose password nobody has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from edgeplane.shared.errors import SettingsError

__all__ = ["check_target", "settings_toml", "write_private"]

_MODE: Final = 0o600


def check_target(path: Path, *, force: bool) -> None:
    """Refuse a file that exists (unless ``force``) or a directory that does not."""
    if path.is_dir():
        raise SettingsError(f"--output: {path} is a directory")
    if path.exists() and not force:
        raise SettingsError(f"--output: {path} exists; not overwritten (--force replaces it)")
    if not path.parent.is_dir():
        raise SettingsError(f"--output: no directory {path.parent}")


def settings_toml(header: str, values: Mapping[str, str]) -> str:
    """``key = "value"`` lines; a JSON string is a valid TOML basic string."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, *, force: bool) -> None:
    """Write ``path`` mode 0600: created exclusively, or with ``force`` through a new file
    renamed over the old one (never a moment readable by others, never half-written)."""
    target = path if not force else path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _MODE)
    except FileExistsError:
        raise SettingsError(
            f"--output: {path} exists; not overwritten (--force replaces it)"
        ) from None
    except OSError as exc:
        raise SettingsError(f"--output: cannot create {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), _MODE)  # the umask may have taken bits off; never added
            file.write(text)
        if target != path:
            os.replace(target, path)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise SettingsError(f"--output: cannot write {path}: {exc.strerror}") from exc
