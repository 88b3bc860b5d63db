"""``edge-agent doctor --bundle FILE``: a tar.gz (mode 0600) of what support needs, with
nothing secret in it: the report (JSON and text), the settings with every password, key and
token replaced by ``<redacted>``, the outbox's size, versions and platform, and a note on
where the agent's log is (it logs to stderr only: the service manager keeps it)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import msgspec

from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.doctor.probes import outbox_finding
from edgeplane.edge_agent.state import RECENT_LOG
from edgeplane.shared import __version__
from edgeplane.shared.checkup import Report, render_text
from edgeplane.shared.command_signature import key_id, parse_public_key

__all__ = ["REDACTED", "redacted_settings", "write_bundle"]

REDACTED: Final = "<redacted>"
TOP: Final = "edge-agent-doctor"
LOG_TAIL: Final = 256 * 1024  # bytes of the agent's recent log in the bundle
LOG_NOTE: Final = """agent.log here is the end of the agent's own recent log (STATE_DIR/agent.log
and agent.log.1, JSON lines, secrets it knows masked); there is none when no agent ran on
this state directory since it began to keep one. Everything it wrote to stderr is where its
service manager keeps that output:

    journalctl -u edge-agent --since -1h      # systemd (use the unit's own name)
    docker logs --since 1h CONTAINER           # a container

Before sending it, look it over: the agent masks the secrets it knows, not what a workflow
step printed on its own.
"""
_PACKAGES: Final = ("edgeplane", "paho-mqtt", "msgspec", "psutil", "packaging", "pynacl")


def redacted_settings(settings: AgentConfig) -> dict[str, Any]:
    """The settings as JSON data, every secret replaced: the password, the command keys
    (their key ids instead), the endpoints' URLs (scheme and host only)."""
    data: dict[str, Any] = msgspec.to_builtins(
        msgspec.structs.replace(settings, broker=settings.broker.with_identity(None)),
        enc_hook=str,
    )
    data["broker"] = str(settings.broker)
    identity = settings.broker.identity
    if identity is not None:
        data["username"] = identity.username
        data["password"] = None if identity.password is None else REDACTED
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(identity, name)
            data[name] = None if value is None else str(value)
        data["ca_pem"] = None if identity.ca_pem is None else "<a PEM certificate>"
    keys = [k for k in [settings.command_key, *settings.command_keys] if k]
    data["command_key"] = REDACTED if settings.command_key else None
    data["command_keys"] = [REDACTED for _ in settings.command_keys]
    data["command_key_ids"] = [_key_id(key) for key in keys]
    data["endpoints"] = {name: _url_host(url) for name, url in settings.endpoints.items()}
    return data


def _key_id(text: str) -> str:
    try:
        return key_id(parse_public_key(text))
    except ValueError:
        return REDACTED


def _url_host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    return f"{parts.scheme}://{host}{port} ({REDACTED} path and query)" if host else REDACTED


def _versions() -> dict[str, str]:
    found = {"edge-agent": __version__, "python": sys.version.split()[0]}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["platform"] = platform.platform()
    found["machine"] = platform.machine()
    return found


def _outbox(settings: AgentConfig) -> dict[str, Any]:
    found = outbox_finding(settings.state_dir)
    return {
        "path": str(settings.state_dir / "outbox.db"),
        "exists": found.exists,
        "rows": found.rows,
        "bytes": found.size,
        "oldest": found.oldest,
        "problem": found.problem,
    }


def write_bundle(path: Path, report: Report, settings: AgentConfig) -> None:
    """Write the bundle to ``path``, private from its first byte."""
    members = {
        "report.json": msgspec.json.format(msgspec.json.encode(report), indent=2),
        "report.txt": render_text(report).encode("utf-8"),
        "settings.json": _json(redacted_settings(settings)),
        "outbox.json": _json(_outbox(settings)),
        "versions.json": _json(_versions()),
        "LOG.txt": LOG_NOTE.encode("utf-8"),
    }
    log = _recent_log(settings.state_dir)
    if log:
        members["agent.log"] = log
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before
    with os.fdopen(fd, "wb") as file, tarfile.open(fileobj=file, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))


def _recent_log(state_dir: Path) -> bytes:
    """The last :data:`LOG_TAIL` bytes of the agent's recent log, whole lines only."""
    text = b""
    for name in (f"{RECENT_LOG}.1", RECENT_LOG):
        with contextlib.suppress(OSError):
            text += (state_dir / name).read_bytes()[-LOG_TAIL:]
    if len(text) > LOG_TAIL:
        text = text[-LOG_TAIL:]
        text = text[text.find(b"\n") + 1 :]
    return text


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"
