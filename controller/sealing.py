"""Passwords handed to an operator without ever being readable on the wire.

The operator's command makes an ephemeral X25519 key pair (:class:`EphemeralKey`) and sends
the public half with its request; the controller seals the new password to it with
:func:`seal` (libsodium's sealed box, ``nacl.public.SealedBox``), and only the command that
asked can open it. The private half lives in that command's memory and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

__all__ = ["PUBLIC_KEY_BYTES", "EphemeralKey", "SealError", "seal"]

PUBLIC_KEY_BYTES: Final = 32


class SealError(ValueError):
    """A public key or a sealed value that is not what it should be."""


def seal(public_key: str, secret: str) -> str:
    """``secret`` sealed to the base64 X25519 ``public_key``, as base64."""
    box = SealedBox(PublicKey(_decode(public_key, "public key", PUBLIC_KEY_BYTES)))
    return base64.b64encode(box.encrypt(secret.encode())).decode("ascii")


class EphemeralKey:
    """One key pair for one request: :attr:`public` goes out, :meth:`open` reads the answer."""

    def __init__(self) -> None:
        self._private = PrivateKey.generate()

    @property
    def public(self) -> str:
        return base64.b64encode(bytes(self._private.public_key)).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return SealedBox(self._private).decrypt(_decode(sealed, "sealed value")).decode()
        except (CryptoError, UnicodeDecodeError) as exc:
            raise SealError("the sealed value could not be opened with this request's key") from exc


def _decode(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{what}: not base64") from None
    if size is not None and len(raw) != size:
        raise SealError(f"{what}: expected {size} bytes, got {len(raw)}")
    return raw
