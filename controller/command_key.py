"""The controller's command key: the Ed25519 signing key (PyNaCl) every command it sends is
signed with, kept in a file of its own (the base64 of the key's 32-byte seed, one line).

The file is made, mode 0600, the first time it is needed; one that group or others can
read is refused, as is anything that is not such a key. Only the public key and its id
ever leave this module (logs, ``R/controller/status``, the agents' settings, and
``FILE.pub`` beside the key: the base64 public key, for enrolling agents).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from edgeplane.controller.errors import CommandKeyError
from edgeplane.shared.command_signature import KEY_BYTES, CommandSigner

__all__ = [
    "load_command_key",
    "load_next_key",
    "make_next_key",
    "next_key_file",
    "promote_next_key",
    "public_key_file",
]


def public_key_file(path: Path) -> Path:
    """Where the public half of the key in ``path`` is written."""
    return path.with_name(path.name + ".pub")


def next_key_file(path: Path) -> Path:
    """Where the new key waits while the key in ``path`` is rotated."""
    return path.with_name(path.name + ".next")


def make_next_key(path: Path) -> CommandSigner:
    """A new key in :func:`next_key_file` (one left there before, never used, is replaced)."""
    target = next_key_file(path)
    try:
        target.unlink(missing_ok=True)
    except OSError as exc:
        raise CommandKeyError(f"cannot replace {target}: {exc.strerror}") from exc
    _create(target)
    return CommandSigner(_read_seed(target))


def load_next_key(path: Path) -> CommandSigner | None:
    """The new key waiting beside ``path`` (None: there is none)."""
    target = next_key_file(path)
    return CommandSigner(_read_seed(target)) if target.exists() else None


def promote_next_key(path: Path) -> CommandSigner:
    """The new key moved over the old one in ``path`` (the old key is gone)."""
    target = next_key_file(path)
    try:
        os.replace(target, path)
    except OSError as exc:
        raise CommandKeyError(f"cannot move {target} to {path}: {exc.strerror}") from exc
    return load_command_key(path)


def load_command_key(path: Path | None) -> CommandSigner:
    """The key in ``path``, made there first if there is none; a new key kept in memory
    only for ``path`` None. :class:`CommandKeyError` names the file and what is wrong."""
    if path is None:
        return CommandSigner.generate()
    if not path.exists():
        _create(path)
    signer = CommandSigner(_read_seed(path))
    _write_public(public_key_file(path), signer.public_key_b64)
    return signer


def _write_public(path: Path, public_key: str) -> None:
    try:
        if path.read_text(encoding="ascii").strip() == public_key:
            return
    except (OSError, UnicodeDecodeError):
        pass
    try:
        path.write_text(public_key + "\n", encoding="ascii")
    except OSError as exc:
        raise CommandKeyError(f"cannot write the public key file {path}: {exc.strerror}") from exc


def _create(path: Path) -> None:
    from nacl.signing import SigningKey

    seed = bytes(SigningKey.generate())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # made by another process meanwhile: read that one
    except OSError as exc:
        raise CommandKeyError(f"cannot create the command key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as file:
        file.write(base64.b64encode(seed).decode("ascii") + "\n")


def _read_seed(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CommandKeyError(
                f"the command key file {path} has mode {mode:04o}: group or others can read "
                f"it; make it private (chmod 600 {path})"
            )
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise CommandKeyError(f"cannot read the command key file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise CommandKeyError(f"{path}: not a command key (expected one base64 line)") from None
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CommandKeyError(f"{path}: not a command key (expected one base64 line)") from None
    if len(seed) != KEY_BYTES:
        raise CommandKeyError(
            f"{path}: not a command key (expected the base64 of {KEY_BYTES} bytes, got {len(seed)})"
        )
    return seed
