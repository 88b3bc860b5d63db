"""The command key of the tests' controllers, and commands signed with it (or not) as a
test publishes them by hand.

Every controller a test starts uses :data:`TEST_SIGNER`'s key (its key file written
before it starts, :func:`write_key_file`) and every agent trusts :data:`PUBLIC_KEY`, so a
test's hand-made command is what the controller would have sent when it is
:func:`signed`."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from edgeplane.shared.codec import COMMAND, DEFAULT_MAX_PAYLOAD, encode
from edgeplane.shared.command_signature import CommandSigner, CommandVerifier
from edgeplane.shared.errors import EdgeplaneError
from edgeplane.shared.messages import Command, replace

__all__ = [
    "OTHER_SIGNER",
    "PUBLIC_KEY",
    "TEST_SEED",
    "TEST_SIGNER",
    "opened",
    "opened_json",
    "signed",
    "write_key_file",
]

TEST_SEED: Final = b"edgeplane-tests-command-key-0001"
TEST_SIGNER: Final = CommandSigner(TEST_SEED)
PUBLIC_KEY: Final = TEST_SIGNER.public_key_b64
OTHER_SIGNER: Final = CommandSigner(b"edgeplane-tests-some-other-key-2")  # trusted by no one
_VERIFIER: Final = CommandVerifier([TEST_SIGNER.public_key])


def write_key_file(path: Path, seed: bytes = TEST_SEED) -> Path:
    """The command key file a controller reads (mode 0600), unless there is one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(base64.b64encode(seed).decode("ascii") + "\n")
    return path


def signed(
    command: Command | Mapping[str, Any] | bytes | str,
    env: str | None = None,
    *,
    signer: CommandSigner = TEST_SIGNER,
    ttl: float = 300.0,
) -> bytes:
    """The envelope the controller would publish for ``command``. A Struct or a mapping
    gets ``env`` (when given) and an expiry ``ttl`` seconds ahead when it has none; bytes
    or text are signed as they are."""
    if isinstance(command, str):
        command = command.encode()
    if isinstance(command, bytes):
        return signer.seal(command)
    if isinstance(command, Mapping):
        fields = {"env": env, "expires": time.time() + ttl, **command}
        return signer.seal(json.dumps({k: v for k, v in fields.items() if v is not None}).encode())
    if env is not None and command.env is None:
        command = replace(command, env=env)
    if command.expires is None:
        command = replace(command, expires=time.time() + ttl)
    return signer.seal(encode(command))


def opened(payload: bytes) -> Command:
    """The command inside an envelope a tests' controller published (its signature
    checked: a payload not signed with the tests' key fails the test)."""
    return COMMAND.decode(_VERIFIER.open_payload(payload, DEFAULT_MAX_PAYLOAD))


def opened_json(payload: bytes) -> bytes:
    """The command JSON inside an envelope signed with the tests' key; any other payload
    as it is."""
    try:
        return _VERIFIER.open_payload(payload, DEFAULT_MAX_PAYLOAD)
    except EdgeplaneError:
        return payload
