"""The doctor's I/O: what is on disk, on the network and at the broker. Each probe returns
plain findings (or a check's result, by :mod:`.checks`); none changes the agent's state,
takes its lock or its MQTT session."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from edgeplane.edge_agent.config import AgentConfig
from edgeplane.edge_agent.doctor import checks as c
from edgeplane.edge_agent.errors import AgentError, BrokerUnavailable, StateDirError
from edgeplane.edge_agent.instance_lock import lock_holder
from edgeplane.edge_agent.outbox import OUTBOX_FILE, outbox_files
from edgeplane.edge_agent.session import probe_login
from edgeplane.edge_agent.state import check_not_retired
from edgeplane.shared.checkup import CheckResult
from edgeplane.shared.errors import EdgeplaneError
from edgeplane.shared.identity import Identity

__all__ = [
    "NETWORK_TIMEOUT",
    "Probes",
    "outbox_finding",
    "state_dir_finding",
]

NETWORK_TIMEOUT: Final = 8.0  # seconds: inside the 10 s limit of a check


def state_dir_finding(path: Path) -> c.StateDirFinding:
    """Whether a file can be made in ``path`` (or in its nearest existing parent when it
    does not exist yet, where the agent would make it)."""
    retired = ""
    try:
        check_not_retired(path)
    except AgentError as exc:
        retired = str(exc)
    exists = path.is_dir()
    if path.exists() and not exists:
        return c.StateDirFinding(str(path), False, False, "it is not a directory")
    target = path if exists else _existing_parent(path)
    if target is None or not target.is_dir():
        return c.StateDirFinding(str(path), exists, False, "no parent directory to make it in")
    probe = target / f".edgeplane-doctor-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        return c.StateDirFinding(str(path), exists, False, exc.strerror or str(exc), retired)
    return c.StateDirFinding(str(path), exists, True, "", retired)


def _existing_parent(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return parent
    return None


def outbox_finding(state_dir: Path) -> c.OutboxFinding:
    """The outbox's waiting events, read-only (the running agent keeps writing it)."""
    path = state_dir / OUTBOX_FILE
    if not path.exists():
        return c.OutboxFinding(exists=False)
    size = sum(file.stat().st_size for file in outbox_files(state_dir) if file.exists())
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            rows, first = db.execute("SELECT count(*), min(seq) FROM events").fetchone()
            oldest = None
            if first is not None:
                (payload,) = db.execute(
                    "SELECT payload FROM events WHERE seq = ?", (first,)
                ).fetchone()
                oldest = _event_time(payload)
        finally:
            db.close()
    except sqlite3.Error as exc:
        return c.OutboxFinding(exists=True, size=size, problem=str(exc))
    return c.OutboxFinding(exists=True, rows=int(rows), size=size, oldest=oldest)


def _event_time(payload: bytes) -> float | None:
    try:
        ts = json.loads(payload).get("ts")
    except (ValueError, AttributeError):
        return None
    return float(ts) if isinstance(ts, int | float) else None


class Probes:
    """Every probe of one doctor run, over one agent's settings. The network probes share
    what they found (the login, once tried, serves three checks)."""

    def __init__(self, settings: AgentConfig, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.identity = settings.broker.identity or Identity()
        self._clock = clock
        self._lock: c.LockFinding | None = None
        self._login: c.LoginFinding | None = None

    # process ------------------------------------------------------------------------------
    def state_dir(self) -> CheckResult:
        return c.judge_state_dir(state_dir_finding(self.settings.state_dir))

    def agent(self) -> CheckResult:
        return c.judge_lock(self.lock(), self.settings.env_id)

    def lock(self) -> c.LockFinding:
        if self._lock is None:
            try:
                holder = lock_holder(self.settings.state_dir)
            except StateDirError as exc:
                self._lock = c.LockFinding(held=False, problem=str(exc))
            else:
                held = holder is not None
                self._lock = c.LockFinding(
                    held, holder.pid if holder else 0, holder.env if holder else ""
                )
        return self._lock

    def outbox(self) -> CheckResult:
        return c.judge_outbox(outbox_finding(self.settings.state_dir), self._clock())

    # network ------------------------------------------------------------------------------
    def dns(self) -> CheckResult:
        host, port = self.settings.broker.host, self.settings.broker.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return c.result(
                "network",
                "dns",
                "fail",
                f"cannot resolve {host}: {exc.strerror or exc}",
                "check the broker URL's host name and this gateway's DNS (/etc/resolv.conf)",
            )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return c.result("network", "dns", "pass", f"{host} is {', '.join(addresses[:4])}")

    def tcp(self) -> CheckResult:
        broker = self.settings.broker
        try:
            with socket.create_connection((broker.host, broker.port), timeout=NETWORK_TIMEOUT):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            return c.result(
                "network",
                "tcp",
                "fail",
                f"cannot connect to {broker.host}:{broker.port}: {reason}",
                "is the broker running, on this port, and does a firewall let this gateway in?",
            )
        return c.result(
            "network", "tcp", "pass", f"{broker.host}:{broker.port} accepts connections"
        )

    def tls(self) -> CheckResult:
        broker = self.settings.broker
        if not broker.tls:
            return c.result("network", "tls", "skip", f"not used: {broker} is plain mqtt://")
        try:
            context = self.identity.tls_context()
            with (
                socket.create_connection(
                    (broker.host, broker.port), timeout=NETWORK_TIMEOUT
                ) as raw,
                context.wrap_socket(raw, server_hostname=broker.host) as tls,
            ):
                cert = tls.getpeercert() or {}
                version = tls.version() or "TLS"
        except ssl.SSLCertVerificationError as exc:
            return c.result(
                "network",
                "tls",
                "fail",
                f"the broker's certificate is not trusted: {exc.verify_message or exc}",
                "give the CA of the broker's certificate (ca_file, or the bootstrap file's "
                "ca_pem) and use the host name the certificate names",
            )
        except (OSError, ValueError) as exc:
            return c.result(
                "network", "tls", "fail", f"the TLS handshake failed: {exc}", "is it a TLS port?"
            )
        expires = ssl.cert_time_to_seconds(str(cert["notAfter"])) if "notAfter" in cert else None
        if expires is None:
            return c.result("network", "tls", "pass", f"{version}, certificate verified")
        judged = c.judge_cert("tls", "network", "the broker's certificate", expires, self._clock())
        return msgspec.structs.replace(judged, reason=f"{version}, verified; {judged.reason}"[:500])

    def mqtt_connect(self) -> CheckResult:
        return c.judge_mqtt_connect(self.login(), NETWORK_TIMEOUT)

    def round_trip(self) -> CheckResult:
        return c.judge_round_trip(self.login())

    def login(self) -> c.LoginFinding:
        """The trial connection, once: as ``{env}-doctor-{random}``, never as the agent's
        own client id while an agent of this identity may be connected. A broker that binds
        the identity to its client id (``broker init``'s) refuses that one; the doctor then
        tries the agent's client id only when it made sure no agent runs here."""
        if self._login is None:
            self._login = self._try_login()
        return self._login

    def _try_login(self) -> c.LoginFinding:
        env = self.settings.env_id
        doctor_id = f"{env}-doctor-{os.urandom(4).hex()}"
        first = self._connect(doctor_id)
        if first.code != 135 or self.settings.broker.identity is None:
            return first
        lock = self.lock()
        if lock.held or lock.problem:
            why = f"pid {lock.pid}" if lock.held else "the lock could not be read"
            return dataclasses.replace(
                first,
                not_tried=f"not verified: the broker refused the doctor's own client id "
                f"({first.refused}) and the agent's ({env}) is not tried while an agent may "
                f"hold it ({why})",
            )
        return self._connect(env)

    def _connect(self, client_id: str) -> c.LoginFinding:
        topic = self.settings.topic_root.controller_status()  # a filter every agent may use
        try:
            probe = probe_login(client_id, self.settings.broker, topic, NETWORK_TIMEOUT)
        except BrokerUnavailable as exc:
            return c.LoginFinding(
                answered=False, client_id=client_id, refused="", not_tried=str(exc)
            )
        return c.LoginFinding(
            answered=probe.answered,
            client_id=client_id,
            refused=probe.refused,
            code=probe.code,
            connect_seconds=probe.connect_seconds,
            round_trip=probe.round_trip,
        )

    # credentials --------------------------------------------------------------------------
    def credentials_login(self) -> CheckResult:
        return c.judge_login(self.login(), self.identity.username)

    def client_cert(self) -> CheckResult:
        path = self.identity.cert_file
        expires = None if path is None else certificate_expiry(path)
        if expires is None:
            return c.result(
                "credentials", "client-cert", "warn", f"cannot read the expiry of {path}"
            )
        return c.judge_cert(
            "client-cert", "credentials", f"the client certificate {path}", expires, self._clock()
        )

    def command_key(self) -> CheckResult:
        from edgeplane.edge_agent.trusted_keys import TrustedKeys

        try:
            keys = TrustedKeys(self.settings.state_dir, self.settings.trusted_keys())
        except (EdgeplaneError, ValueError) as exc:
            return c.judge_command_keys([], str(exc))
        return c.judge_command_keys(keys.key_ids())

    # resources ----------------------------------------------------------------------------
    def cpu(self) -> CheckResult:
        import psutil

        return c.judge_percent("cpu", "cpu", psutil.cpu_percent(interval=0.5), can_fail=False)

    def memory(self) -> CheckResult:
        import psutil

        return c.judge_percent("memory", "memory", psutil.virtual_memory().percent)

    def disk(self) -> CheckResult:
        import psutil

        where = self.settings.state_dir
        target = where if where.exists() else _existing_parent(where) or Path("/")
        percent = psutil.disk_usage(str(target)).percent
        return c.judge_percent("disk", f"disk of {target}", percent)

    def open_files(self) -> CheckResult:
        import psutil

        lock = self.lock()
        try:
            process = psutil.Process(lock.pid if lock.held and lock.pid else os.getpid())
            used = process.num_fds()
            soft, _hard = process.rlimit(psutil.RLIMIT_NOFILE)
        except (psutil.Error, OSError, AttributeError) as exc:
            return c.result("resources", "open-files", "warn", f"open files not counted: {exc}")
        whose = f"the agent (pid {process.pid})" if lock.held else "this process (no agent runs)"
        if soft <= 0:
            return c.result("resources", "open-files", "pass", f"{whose}: {used} open, no limit")
        checked = c.judge_percent("open-files", f"open files of {whose}", used / soft * 100)
        return msgspec.structs.replace(checked, reason=f"{checked.reason} ({used} of {soft})"[:500])


def certificate_expiry(path: Path) -> float | None:
    """When the PEM certificate in ``path`` expires (unix seconds), read by the ``ssl``
    module's own decoder; None when it cannot be read."""
    import _ssl

    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        not_after = decode(str(path)).get("notAfter")
    except (OSError, ValueError):
        return None
    return None if not_after is None else float(ssl.cert_time_to_seconds(not_after))
