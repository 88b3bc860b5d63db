"""Preflight: every check of a workflow's ``requires``, judged on the target before anything
runs. Every check is reported (kind, name, ok, detail, ms), also when another one fails.

The judgement of models, secrets and endpoints is pure (:func:`check_model`,
:func:`check_secret`, :func:`check_endpoint` take data and return ``(ok, detail)``). Datasources
and buckets are probed (:func:`probe_datasource`, :func:`probe_bucket`), concurrently, so a
preflight with several unreachable sources takes about one timeout, not their sum.

Datasource URLs:

``tcp://HOST:PORT``       a TCP connection is accepted
``http(s)://...``         a HEAD request (GET if HEAD is not allowed) answers below 500
``mqtt://HOST[:PORT]``    TCP, then an MQTT 3.1.1 CONNECT answered by a CONNACK (any code:
                          the broker speaks MQTT; the code is named in the detail)
``file:///PATH``          the path exists and is readable

Buckets: ``read`` lists the directory; ``write`` creates and removes a probe file
(``.edgeplane-probe-<random>``) in it; ``readwrite`` does both. Bucket paths are absolute.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

from edgeplane.shared.clock import Clock, SystemClock
from edgeplane.shared.errors import InvalidVersionSpec
from edgeplane.shared.messages import Check, CheckKind
from edgeplane.shared.versions import best_match, version_order
from edgeplane.shared.workflow import BucketAccess, BucketNeed, DatasourceNeed, ModelNeed, Workflow

__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "PreflightContext",
    "check_endpoint",
    "check_model",
    "check_secret",
    "clip",
    "probe_bucket",
    "probe_datasource",
    "run_preflight",
    "summarize_failures",
]

DEFAULT_CHECK_TIMEOUT: Final = 3.0
MAX_DETAIL: Final = 256  # Check.detail, CommandRejected.reason: the wire's ShortText
SCHEMES: Final = ("tcp", "http", "https", "mqtt", "file")
MQTT_PORT: Final = 1883

Verdict = tuple[bool, str]


@dataclass(frozen=True)
class PreflightContext:
    """What the agent knows locally. ``secrets`` None: no secrets file configured.
    ``models_problem``: why the models dir could not be listed (then ``models`` is empty)."""

    models: Mapping[str, Sequence[str]] = field(default_factory=dict)
    secrets: frozenset[str] | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_CHECK_TIMEOUT
    clock: Clock = field(default_factory=SystemClock)
    models_problem: str = ""


def run_preflight(workflow: Workflow, ctx: PreflightContext) -> list[Check]:
    """Every check of ``workflow.requires`` in the order: models, datasources, buckets,
    secrets, endpoints (each in the order written). Probes run concurrently."""
    needs = workflow.requires
    jobs: list[tuple[CheckKind, str, Callable[[], Verdict]]] = []
    for model in needs.models:
        jobs.append(("model", model.name, _bind_model(model, ctx)))
    for source in needs.datasources:
        jobs.append(("datasource", source.name, _bind_datasource(source, ctx.timeout)))
    for bucket in needs.buckets:
        jobs.append(("bucket", bucket.name, _bind_bucket(bucket)))
    for secret in needs.secrets:
        jobs.append(("secret", secret, _bind_secret(secret, ctx.secrets)))
    for endpoint in needs.endpoints:
        jobs.append(("endpoint", endpoint, _bind_endpoint(endpoint, ctx.endpoints)))
    if not jobs:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(8, len(jobs)), thread_name_prefix="preflight"
    )
    try:
        futures = [pool.submit(_timed, run, ctx.clock) for _, _, run in jobs]
        # A probe stuck where no socket timeout reaches (name resolution) is abandoned.
        concurrent.futures.wait(futures, timeout=ctx.timeout + 2.0)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    checks = []
    for (kind, name, _), future in zip(jobs, futures, strict=True):
        if future.done():
            ok, detail, ms = future.result()
        else:
            ok, detail, ms = False, f"no answer within {_seconds(ctx.timeout)}", ctx.timeout * 1e3
        checks.append(Check(kind=kind, name=name, ok=ok, detail=clip(detail), ms=round(ms, 1)))
    return checks


def summarize_failures(checks: Sequence[Check], limit: int = MAX_DETAIL) -> str:
    """``preflight failed: model defect-detector (have 1.0; need >=2), secret X (...)``,
    clipped to ``limit`` characters."""
    failed = [f"{c.kind} {c.name} ({c.detail})" for c in checks if not c.ok]
    return clip("preflight failed: " + "; ".join(failed), limit)


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timed(run: Callable[[], Verdict], clock: Clock) -> tuple[bool, str, float]:
    started = clock.monotonic()
    try:
        ok, detail = run()
    except Exception as exc:  # a probe bug must fail its check, not the preflight
        ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
    return ok, detail, (clock.monotonic() - started) * 1e3


def _bind_model(need: ModelNeed, ctx: PreflightContext) -> Callable[[], Verdict]:
    if ctx.models_problem and need.name not in ctx.models:
        return lambda: (False, clip(f"{need.name}: {ctx.models_problem}"))
    return lambda: check_model(need, ctx.models)


def _bind_datasource(need: DatasourceNeed, timeout: float) -> Callable[[], Verdict]:
    return lambda: probe_datasource(need.url, timeout)


def _bind_bucket(need: BucketNeed) -> Callable[[], Verdict]:
    return lambda: probe_bucket(need.path, need.access)


def _bind_secret(name: str, held: frozenset[str] | None) -> Callable[[], Verdict]:
    return lambda: check_secret(name, held)


def _bind_endpoint(name: str, endpoints: Mapping[str, str]) -> Callable[[], Verdict]:
    return lambda: check_endpoint(name, endpoints)


# --- pure judgements -------------------------------------------------------------------------


def check_model(need: ModelNeed, held: Mapping[str, Sequence[str]]) -> Verdict:
    """Held, and some held version satisfies ``need.version`` (the rule of
    :mod:`edgeplane.shared.versions`, which the controller's gate keeps too)."""
    versions = held.get(need.name)
    if versions is None:
        return False, f"{need.name}: not in the models dir"
    try:
        best = best_match(need.version, versions)
    except InvalidVersionSpec:
        return False, f"{need.name}: invalid version specifier {need.version!r}"
    have = ", ".join(sorted(versions, key=version_order)) or "no versions"
    if best is not None and not need.version:
        return True, f"{need.name}: have {have}; any version will do"
    if best is not None:
        return True, f"{need.name}: {best} satisfies {need.version}"
    return False, f"{need.name}: have {have}; need {need.version or 'any version'}"


def check_secret(name: str, held: frozenset[str] | None) -> Verdict:
    if held is None:
        return False, "no secrets file is configured on the agent (--secrets-file)"
    if name in held:
        return True, "present"
    return False, "not in the agent's secrets file"


def check_endpoint(name: str, endpoints: Mapping[str, str]) -> Verdict:
    if endpoints.get(name):
        return True, "configured"
    return False, "not configured on the agent ([endpoints] in its config file)"


# --- probes at the edge ----------------------------------------------------------------------


def probe_datasource(url: str, timeout: float = DEFAULT_CHECK_TIMEOUT) -> Verdict:
    """Reach ``url`` from here; see the module docstring for what each scheme means."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return False, f"bad URL: {exc}"
    scheme = parts.scheme.lower()
    shown = _without_credentials(parts)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return False, f"{shown}: a file:// URL names no host (file:///absolute/path)"
        return _probe_file(parts.path)
    if scheme not in SCHEMES:
        return False, f"unsupported scheme {scheme!r} in {shown} (use {', '.join(SCHEMES)})"
    if not parts.hostname:
        return False, f"no host in {shown}"
    if scheme in ("http", "https"):
        return _probe_http(parts, shown, timeout)
    port = parts.port or (MQTT_PORT if scheme == "mqtt" else None)
    if port is None:
        return False, f"no port in {shown}"
    if scheme == "mqtt":
        return _probe_mqtt(parts.hostname, port, shown, timeout)
    return _probe_tcp(parts.hostname, port, shown, timeout)


def _probe_tcp(host: str, port: int, shown: str, timeout: float) -> Verdict:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{shown}: connected"
    except OSError as exc:
        return False, f"{shown}: {_socket_problem(exc, timeout)}"


def _probe_mqtt(host: str, port: int, shown: str, timeout: float) -> Verdict:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_mqtt_connect_packet())
            answer = _recv_exactly(sock, 4)
            if answer[0] >> 4 != 2 or answer[1] != 2:
                return False, f"{shown}: answered, but not with an MQTT CONNACK"
            code = answer[3]
            if code == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
                return True, f"{shown}: MQTT broker accepted a connection"
            reason = _CONNACK_CODES.get(code, f"code {code}")
            return True, f"{shown}: MQTT broker answered (CONNACK: {reason})"
    except ConnectionError as exc:
        if isinstance(exc, ConnectionRefusedError):
            return False, f"{shown}: {_socket_problem(exc, timeout)}"
        return False, f"{shown}: connection closed without a CONNACK"
    except OSError as exc:
        return False, f"{shown}: {_socket_problem(exc, timeout)}"


_CONNACK_CODES: Final = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def _mqtt_connect_packet() -> bytes:
    """A minimal MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, a random client id."""
    client_id = f"edgeplane-probe-{secrets.token_hex(4)}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = struct.pack("!H", len(client_id)) + client_id
    remaining = len(variable) + len(payload)  # < 128: one length byte
    return bytes([0x10, remaining]) + variable + payload


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def _probe_http(parts: SplitResult, shown: str, timeout: float) -> Verdict:
    import base64  # lazily: most workflows need no HTTP, and the agent stays light
    import urllib.error
    import urllib.request

    # urllib does not take user:password from the URL: send it as basic authentication.
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    for method in ("HEAD", "GET"):
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, OSError):
                return False, f"{shown}: {_socket_problem(reason, timeout)}"
            return False, f"{shown}: {reason}"
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError):
                return False, f"{shown}: {_socket_problem(exc, timeout)}"
            return False, f"{shown}: {exc}"
        if method == "HEAD" and status in (405, 501):
            continue  # HEAD not allowed: ask again with GET
        return status < 500, f"{shown}: HTTP {status} to {method}"
    return False, f"{shown}: unreachable"  # pragma: no cover - the loop always returns


def _probe_file(path: str) -> Verdict:
    if not path:
        return False, "file:// URL without a path"
    try:
        if os.path.isdir(path):
            os.listdir(path)
            return True, f"{path}: a readable directory"
        with open(path, "rb") as handle:
            handle.read(1)
        return True, f"{path}: a readable file"
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"


def _socket_problem(exc: OSError, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {_seconds(timeout)}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc)


def _without_credentials(parts: SplitResult) -> str:
    """The URL as shown in a detail: never the user:password part."""
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _seconds(value: float) -> str:
    return f"{value:g} s"


def probe_bucket(path: str, access: BucketAccess) -> Verdict:
    """``read``: the directory can be listed; ``write``: a probe file can be created and
    removed in it; ``readwrite``: both."""
    directory = Path(path)
    if not directory.is_absolute():
        return False, f"{path}: not an absolute path"
    if not directory.exists():
        return False, f"{path}: does not exist"
    if not directory.is_dir():
        return False, f"{path}: not a directory"
    done = []
    if access in ("read", "readwrite"):
        try:
            count = len(os.listdir(directory))
        except OSError as exc:
            return False, f"{path}: cannot list it: {exc.strerror}"
        if not os.access(directory, os.R_OK | os.X_OK):
            return False, f"{path}: not readable"
        done.append(f"listed ({count} entries)")
    if access in ("write", "readwrite"):
        probe = directory / f".edgeplane-probe-{secrets.token_hex(4)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            return False, f"{path}: cannot create a file in it: {exc.strerror}"
        done.append("created and removed a probe file")
    return True, f"{path}: " + ", ".join(done)
