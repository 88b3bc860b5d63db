"""Broker URLs: ``mqtt://HOST:PORT`` and ``mqtts://HOST:PORT`` (TLS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import msgspec

from edgeplane.shared.errors import InvalidBrokerUrl

if TYPE_CHECKING:
    from edgeplane.shared.identity import Identity

__all__ = ["DEFAULT_BROKER", "BrokerUrl"]

_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrl(msgspec.Struct, frozen=True):
    """Where the broker is and, once settings attached one, who we are to it (the
    identity is never part of the URL's text)."""

    scheme: str
    host: str
    port: int
    identity: Identity | None = None

    def with_identity(self, identity: Identity | None) -> BrokerUrl:
        return BrokerUrl(self.scheme, self.host, self.port, identity)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise InvalidBrokerUrl(f"invalid broker URL {text!r}: {exc}") from exc
        if "@" in parts.netloc:
            # Said without echoing the URL: the part before '@' may be a password.
            raise InvalidBrokerUrl(
                "invalid broker URL: no user name or password in it, use mqtt://HOST:PORT"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidBrokerUrl(f"invalid broker URL {text!r}: {exc}") from exc
        if port == 0:
            raise InvalidBrokerUrl(f"invalid broker URL {text!r}: port 0")
        if parts.scheme not in _DEFAULT_PORTS:
            raise InvalidBrokerUrl(
                f"invalid broker URL {text!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
            )
        if not parts.hostname:
            raise InvalidBrokerUrl(f"invalid broker URL {text!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidBrokerUrl(f"invalid broker URL {text!r}: unexpected path or query")
        if port is None:
            port = _DEFAULT_PORTS[parts.scheme]
        return cls(parts.scheme, parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


DEFAULT_BROKER: Final = BrokerUrl("mqtt", "127.0.0.1", 1883)
