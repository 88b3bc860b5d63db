"""Signed commands: the controller signs every command with an Ed25519 key (PyNaCl, i.e.
libsodium), and the agent runs only commands that a key it trusts signed.

The signature covers the command's JSON as the controller encoded it, and so its ``id``,
``env`` and ``expires`` too; the agent decodes the command only from the bytes the
signature vouches for (:meth:`CommandVerifier.open`). The envelope on the wire is
:class:`~edgeplane.shared.messages.SignedCommand`.

PyNaCl is imported inside the functions that need it: the agent pays for it (about 3 MB)
only once the first command arrives, never while it is idle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from edgeplane.shared.codec import SIGNED_COMMAND, encode
from edgeplane.shared.errors import CommandRefused
from edgeplane.shared.messages import SignedCommand

if TYPE_CHECKING:
    from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "KEY_BYTES",
    "CommandSigner",
    "CommandVerifier",
    "key_id",
    "parse_public_key",
]

KEY_BYTES: Final = 32  # an Ed25519 public key, and the seed of a signing key
KEY_ID_DIGITS: Final = 16


def key_id(public_key: bytes) -> str:
    """The short name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_DIGITS]


def parse_public_key(text: str) -> bytes:
    """The 32 bytes of a base64 Ed25519 public key; ``ValueError`` saying what is wrong."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"expected a base64 Ed25519 public key, got {text[:64]!r}") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"expected a base64 Ed25519 public key ({KEY_BYTES} bytes), got {len(raw)} bytes"
        )
    return raw


class CommandSigner:
    """The controller's signing key. ``seed``: the key's 32 secret bytes."""

    def __init__(self, seed: bytes) -> None:
        from nacl.signing import SigningKey

        self._key: SigningKey = SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> CommandSigner:
        from nacl.signing import SigningKey

        return cls(bytes(SigningKey.generate()))

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")

    def seal(self, command: bytes) -> bytes:
        """The envelope of ``command`` (its JSON) to publish: the command signed."""
        from nacl.encoding import Base64Encoder

        signed = self._key.sign(command, encoder=Base64Encoder)
        return encode(SignedCommand(key=self.key_id, signed=signed.decode("ascii")))

    def __repr__(self) -> str:  # never the seed, in a log line or a traceback
        return f"CommandSigner(key_id={self.key_id!r})"


class CommandVerifier:
    """The public keys an agent trusts (more than one while a key is rotated)."""

    def __init__(self, public_keys: Iterable[bytes]) -> None:
        from nacl.signing import VerifyKey

        self._keys: dict[str, VerifyKey] = {key_id(k): VerifyKey(k) for k in public_keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def open(self, envelope: SignedCommand) -> bytes:
        """The command JSON that ``envelope`` carries, once its signature is checked;
        :class:`CommandRefused` (``unknown-key``, ``bad-signature``) otherwise."""
        from nacl.encoding import Base64Encoder
        from nacl.exceptions import BadSignatureError

        key = self._keys.get(envelope.key)
        if key is None:
            raise CommandRefused(
                "unknown-key",
                f"signed by key {envelope.key[:32]!r}; this agent trusts "
                f"{', '.join(self.key_ids) or 'no key'}",
            )
        try:
            return key.verify(envelope.signed.encode("ascii", "replace"), encoder=Base64Encoder)
        except BadSignatureError:
            raise CommandRefused("bad-signature", "the signature does not match") from None
        except (binascii.Error, ValueError):
            raise CommandRefused("bad-signature", "the signed part is not base64") from None

    def open_payload(self, payload: bytes, limit: int) -> bytes:
        """:meth:`open` of a payload (the envelope's JSON)."""
        return self.open(SIGNED_COMMAND.decode(payload, limit=limit))
