"""Who a process is to the broker: a user name and password, the CA that vouches for the
broker's certificate, and optionally a client certificate.

Every command reads these settings (``username``, ``password``, ``ca_file`` or ``ca_pem``,
``cert_file``, ``key_file``) and attaches them to its broker URL with :func:`attach`; the
one MQTT module of each package turns them into a login and a TLS context.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from edgeplane.shared import settings as s
from edgeplane.shared.errors import SettingsError

if TYPE_CHECKING:
    import ssl

    from edgeplane.shared.broker_url import BrokerUrl

__all__ = ["IDENTITY_SETTINGS", "Identity", "Password", "attach", "check_private_file"]


class Password:
    """A password that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Password('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Password) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Identity(msgspec.Struct, frozen=True):
    username: str | None = None
    password: Password | None = None
    ca_file: Path | None = None
    ca_pem: str | None = None  # the CA inline: a bootstrap file is then all a gateway needs
    cert_file: Path | None = None
    key_file: Path | None = None

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the broker against ``ca_file``/``ca_pem`` (the system's trust store
        without either) and presents the client certificate when there is one."""
        import ssl

        context = ssl.create_default_context(
            cafile=None if self.ca_file is None else str(self.ca_file), cadata=self.ca_pem
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            context.load_cert_chain(
                str(self.cert_file), None if self.key_file is None else str(self.key_file)
            )
        return context


def _password(value: Any) -> Password:
    return Password(s.text(value))


def _pem(value: Any) -> str:
    text = s.text(value)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError("expected a PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def _readable_file(value: Any) -> Path:
    path = s.path(value)
    if not path.is_file():
        raise ValueError(f"no such file {str(path)!r}")
    return path.resolve()


def _private_file(value: Any) -> Path:
    path = _readable_file(value)
    check_private_file(path, "key file")
    return path


IDENTITY_SETTINGS: Final = (
    s.Setting("username", s.text, None, "user name at the broker"),
    s.Setting("password", _password, None, "password at the broker", private=True),
    s.Setting("ca_file", _readable_file, None, "CA certificate(s) that sign the broker's"),
    s.Setting("ca_pem", _pem, None, "the CA certificate itself, PEM (settings files)"),
    s.Setting("cert_file", _readable_file, None, "client certificate, PEM"),
    s.Setting("key_file", _private_file, None, "client certificate's key, PEM, mode 0600"),
)
_NAMES: Final = tuple(setting.name for setting in IDENTITY_SETTINGS)


def attach(resolved: dict[str, Any]) -> dict[str, Any]:
    """``resolved`` settings with the identity settings taken out and attached to
    ``resolved["broker"]``. Refuses a password over plain ``mqtt://`` to another host: it
    would cross the network readable."""
    values = {name: resolved.pop(name, None) for name in _NAMES}
    broker: BrokerUrl = resolved["broker"]
    identity = Identity(**values)
    if identity.password is not None and identity.username is None:
        raise SettingsError("password: given without a username")
    if identity.cert_file is None and identity.key_file is not None:
        raise SettingsError("key_file: given without a cert_file")
    if identity.password is not None and not broker.tls and not _loopback(broker.host):
        raise SettingsError(
            f"broker: {broker} is plain text and a password would cross the network "
            "readable; use mqtts://"
        )
    if broker.tls:
        _check_tls(identity)
    if identity != Identity():
        resolved["broker"] = broker.with_identity(identity)
    return resolved


def _check_tls(identity: Identity) -> None:
    try:
        identity.tls_context()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        names = [n for n in ("ca_file", "ca_pem", "cert_file", "key_file") if getattr(identity, n)]
        raise SettingsError(f"{', '.join(names) or 'tls'}: cannot set up TLS: {exc}") from exc


def check_private_file(path: Path, what: str) -> None:
    """Raise :class:`SettingsError` when group or others may read or write ``path``."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise SettingsError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from exc
    if mode & 0o077:
        raise SettingsError(
            f"{what} {str(path)!r} has mode {mode:04o}: it holds a password or key and must "
            f"not be open to group or others; run: chmod 600 {path}"
        )


def _loopback(host: str) -> bool:
    import ipaddress  # off the agent's idle path: only a password over mqtt:// gets here

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
