"""``edgeplane broker init``: a directory that ``mosquitto -c DIR/mosquitto.conf`` runs as a
site's broker (TLS, no anonymous access, dynamic security), with the controller's and the
first operator's settings files.

What it writes is described in docs/security.md. The directory and the data directory are
0700, keys and files holding a password 0600; certificates and the config 0644 (inside a
0700 directory). A directory that already holds a site is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import pwd
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edgeplane.controller.broker.certs import make_ca, make_server_cert
from edgeplane.controller.broker.dynsec import (
    ADMIN_USER,
    find_dynsec_plugin,
    new_password,
    site_dynsec,
)
from edgeplane.controller.broker.site_conf import SiteLayout, render_site_config
from edgeplane.controller.core.acl import CONTROLLER_USER
from edgeplane.controller.errors import SiteInitError
from edgeplane.shared.topics import TopicRoot

__all__ = [
    "DEFAULT_SITE_PORT",
    "SiteOptions",
    "SiteResult",
    "default_hosts",
    "init_site",
    "summary",
    "validate_host",
]

DEFAULT_SITE_PORT: Final = 8883
_PRIVATE: Final = 0o600
_PUBLIC: Final = 0o644
_DIR: Final = 0o700
_DNS_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def default_hosts() -> tuple[str, ...]:
    """localhost, 127.0.0.1 and this machine's host name (when it is a valid DNS name)."""
    hosts = ["localhost", "127.0.0.1"]
    with contextlib.suppress(ValueError):
        hosts.append(validate_host(socket.gethostname()))
    return tuple(dict.fromkeys(hosts))


def validate_host(host: str) -> str:
    """An IP address or a DNS name, as a certificate's subject alternative name takes it."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class SiteOptions:
    """What ``broker init`` was asked for."""

    directory: Path
    port: int = DEFAULT_SITE_PORT
    ws_port: int | None = None
    hosts: tuple[str, ...] = field(default_factory=default_hosts)
    topic_root: TopicRoot = field(default_factory=TopicRoot)
    force: bool = False
    plugin: Path | None = None  # None: looked for in the usual lib directories


@dataclass(frozen=True, slots=True)
class SiteResult:
    """What ``broker init`` wrote, for its summary."""

    layout: SiteLayout
    options: SiteOptions
    user: str
    plugin: Path

    @property
    def broker_url(self) -> str:
        host = self.options.hosts[0]
        host = f"[{host}]" if ":" in host else host
        return f"mqtts://{host}:{self.options.port}"


def init_site(options: SiteOptions, now: datetime.datetime | None = None) -> SiteResult:
    """Write the site. Raises :class:`SiteInitError` with a clear reason."""
    _check(options)
    layout = SiteLayout(options.directory.expanduser().resolve())
    _refuse_existing(layout, options.force)
    plugin = options.plugin or find_dynsec_plugin()
    _make_dir(layout.root)
    _make_dir(layout.data)
    user = pwd.getpwuid(os.geteuid()).pw_name
    result = SiteResult(layout, options, user, plugin)
    _write_certificates(layout, options.hosts, now or datetime.datetime.now(datetime.UTC))
    _write_identities(result)
    config = render_site_config(
        layout,
        user=user,
        plugin=plugin,
        port=options.port,
        ws_port=options.ws_port,
        written_by="`edgeplane broker init`",
    )
    _write(layout.config, config, _PUBLIC)
    return result


def _check(options: SiteOptions) -> None:
    for name, port in (("--port", options.port), ("--ws-port", options.ws_port)):
        if port is not None and not 0 < port < 65536:
            raise SiteInitError(f"{name}: expected a port number 1-65535, got {port}")
    if options.ws_port is not None and options.ws_port == options.port:
        raise SiteInitError(f"--ws-port: {options.ws_port} is already the MQTT port (--port)")
    if not options.hosts:
        raise SiteInitError("--host: the server certificate needs at least one host name")
    for host in options.hosts:
        try:
            validate_host(host)
        except ValueError as exc:
            raise SiteInitError(f"--host: {exc}") from exc


_SITE_FILES: Final = ("config", "dynsec", "ca_key", "ca_cert", "controller_toml", "admin_toml")


def _refuse_existing(layout: SiteLayout, force: bool) -> None:
    if layout.root.exists() and not layout.root.is_dir():
        raise SiteInitError(f"{layout.root} exists and is not a directory")
    found = [getattr(layout, name).name for name in _SITE_FILES if getattr(layout, name).exists()]
    if found and not force:
        raise SiteInitError(
            f"{layout.root} already holds a site ({', '.join(found)}): not overwritten; "
            "--force writes a new CA and new passwords, which every gateway, the controller "
            "and every operator of the old site must then be given"
        )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=_DIR, parents=True, exist_ok=True)
        os.chmod(path, _DIR)  # mkdir's mode passes through the umask, and an old dir keeps its
    except OSError as exc:
        raise SiteInitError(f"cannot create {path}: {exc.strerror}") from exc


def _write(path: Path, content: str | bytes, mode: int) -> None:
    """Write ``path`` with ``mode`` from its first byte (never readable wider meanwhile),
    replacing a file already there; a symbolic link in its place is refused."""
    data = content.encode() if isinstance(content, str) else content
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, mode)
        try:
            os.fchmod(fd, mode)  # an existing file keeps its mode through open(); the umask too
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SiteInitError(f"cannot write {path}: {exc.strerror}") from exc


def _write_certificates(layout: SiteLayout, hosts: Sequence[str], now: datetime.datetime) -> None:
    ca = make_ca("edgeplane site CA", now)
    server = make_server_cert(ca, hosts, now)
    _write(layout.ca_key, ca.key_pem, _PRIVATE)
    _write(layout.ca_cert, ca.cert_pem, _PUBLIC)
    _write(layout.server_key, server.key_pem, _PRIVATE)
    _write(layout.server_cert, server.cert_pem, _PUBLIC)


def _toml(values: dict[str, str]) -> str:
    # A JSON string is a valid TOML basic string (the same escapes, \uXXXX included).
    return "".join(
        f"{key} = {json.dumps(value, ensure_ascii=False)}\n" for key, value in values.items()
    )


def _write_identities(result: SiteResult) -> None:
    layout, root = result.layout, str(result.options.topic_root)
    controller_password, admin_password = new_password(), new_password()
    dynsec = site_dynsec(result.options.topic_root, controller_password, admin_password)
    _write(layout.dynsec, json.dumps(dynsec, indent=2) + "\n", _PRIVATE)
    common = {"broker": result.broker_url, "topic_root": root}
    tls = {"ca_file": str(layout.ca_cert)}
    controller = {
        **common,
        "username": CONTROLLER_USER,
        "password": controller_password,
        **tls,
        "db": str(layout.controller_db),
    }
    admin = {**common, "username": ADMIN_USER, "password": admin_password, **tls}
    header = "# {what}, written by `edgeplane broker init` (mode 0600: it holds a password).\n"
    _write(
        layout.controller_toml,
        header.format(what="The controller's identity and settings") + _toml(controller),
        _PRIVATE,
    )
    _write(
        layout.admin_toml,
        header.format(what="The first operator's identity (role admin)") + _toml(admin),
        _PRIVATE,
    )


def summary(result: SiteResult) -> str:
    """What was written and the exact next commands, for the terminal."""
    layout, options = result.layout, result.options
    listeners = f"MQTT over TLS on port {options.port}"
    if options.ws_port is not None:
        listeners += f", secure WebSockets on port {options.ws_port}"
    rows = [
        ("mosquitto.conf", f"{listeners}; no anonymous access; runs as {result.user}"),
        ("dynamic-security.json", f"clients {CONTROLLER_USER} and {ADMIN_USER}, their roles"),
        ("ca.crt, ca.key", "the site's CA; keep ca.key: it signs client certificates"),
        ("server.crt, server.key", "the broker's certificate for " + ", ".join(options.hosts)),
        ("controller.toml", f"the controller's identity, {result.broker_url}"),
        ("admin.toml", f"the first operator, {ADMIN_USER} (role admin)"),
        ("data/", "the broker's persistence"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"wrote a site's broker in {layout.root} (keys and passwords mode 0600):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in rows]
    lines += [
        "next:",
        f"  mosquitto -c {layout.config}",
        f"  edgeplane controller run --config {layout.controller_toml}",
        f"  edgeplane env list --config {layout.admin_toml}",
    ]
    return "\n".join(lines)
