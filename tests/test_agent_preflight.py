"""Preflight on the agent: the pure judgements of models, secrets and endpoints, and the
probes of datasources (real sockets, a local HTTP server, the session's broker) and
buckets (real directories). Every check fails alone with its reason named."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplane.controller.broker.mosquitto import MosquittoProcess
from edgeplane.edge_agent.execution.preflight import (
    PreflightContext,
    check_endpoint,
    check_model,
    check_secret,
    clip,
    probe_bucket,
    probe_datasource,
    run_preflight,
    summarize_failures,
)
from edgeplane.shared.clock import ManualClock
from edgeplane.shared.messages import Check
from edgeplane.shared.workflow import (
    BucketNeed,
    DatasourceNeed,
    ModelNeed,
    Requires,
    Step,
    Workflow,
)

# --- models ----------------------------------------------------------------------------------

HELD = {"defect-detector": ["1.0", "1.5", "2.4"], "ocr": ["3.0rc1"], "empty": []}


@pytest.mark.parametrize(
    ("need", "ok", "detail"),
    [
        (ModelNeed(name="defect-detector", version=">=2.1,<3"), True, "2.4 satisfies >=2.1,<3"),
        (ModelNeed(name="defect-detector", version="==1.5"), True, "1.5 satisfies ==1.5"),
        (ModelNeed(name="defect-detector"), True, "have 1.0, 1.5, 2.4; any version will do"),
        (ModelNeed(name="defect-detector", version=">=3"), False, "have 1.0, 1.5, 2.4; need >=3"),
        (ModelNeed(name="ocr", version=">=2.9"), True, "3.0rc1 satisfies >=2.9"),
        (ModelNeed(name="ocr", version=">=3"), False, "have 3.0rc1; need >=3"),
        (ModelNeed(name="empty"), False, "have no versions; need any version"),
        (ModelNeed(name="missing", version=">=1"), False, "not in the models dir"),
        (ModelNeed(name="ocr", version="newest"), False, "invalid version specifier 'newest'"),
    ],
)
def test_model_judgement(need: ModelNeed, ok: bool, detail: str) -> None:
    assert check_model(need, HELD) == (ok, f"{need.name}: {detail}")


# --- secrets and endpoints -------------------------------------------------------------------


def test_secret_judgement_names_presence_never_values() -> None:
    assert check_secret("TOKEN", frozenset({"TOKEN"})) == (True, "present")
    assert check_secret("TOKEN", frozenset({"OTHER"})) == (False, "not in the agent's secrets file")
    assert check_secret("TOKEN", None) == (
        False,
        "no secrets file is configured on the agent (--secrets-file)",
    )


def test_endpoint_judgement() -> None:
    assert check_endpoint("api", {"api": "http://10.0.0.9"}) == (True, "configured")
    assert check_endpoint("api", {"api": ""})[0] is False
    assert check_endpoint("api", {}) == (
        False,
        "not configured on the agent ([endpoints] in its config file)",
    )


def test_failures_are_summarized_within_the_wire_limit() -> None:
    checks = [
        Check(kind="model", name="m", ok=False, detail="m: not in the models dir"),
        Check(kind="secret", name="S", ok=True, detail="present"),
        Check(kind="secret", name="T", ok=False, detail="not in the agent's secrets file"),
    ]
    assert summarize_failures(checks) == (
        "preflight failed: model m (m: not in the models dir);"
        " secret T (not in the agent's secrets file)"
    )
    long = [Check(kind="endpoint", name=f"e{i}", ok=False, detail="x" * 50) for i in range(9)]
    assert len(summarize_failures(long)) == 256
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 3) == "ab…"


# --- datasources: real sockets ---------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket that listens and never accepts or answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def closed_port() -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_tcp_source_that_listens_passes(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    assert probe_datasource(url) == (True, f"{url}: connected")


def test_tcp_source_that_refuses_fails() -> None:
    port = closed_port()
    assert probe_datasource(f"tcp://127.0.0.1:{port}") == (
        False,
        f"tcp://127.0.0.1:{port}: connection refused",
    )


def test_tcp_source_that_never_answers_times_out() -> None:
    """A listener whose accept queue is full drops further SYNs: connect hangs."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        assert probe_datasource(f"tcp://127.0.0.1:{port}", timeout=0.3) == (
            False,
            f"tcp://127.0.0.1:{port}: no answer within 0.3 s",
        )
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_mqtt_source_passes_on_a_real_broker(broker: MosquittoProcess) -> None:
    ok, detail = probe_datasource(broker.url)
    assert ok, detail
    assert detail == f"{broker.url}: MQTT broker accepted a connection"


def test_mqtt_source_that_does_not_speak_mqtt_fails(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert probe_datasource(f"mqtt://127.0.0.1:{port}", timeout=0.3) == (
        False,
        f"mqtt://127.0.0.1:{port}: no answer within 0.3 s",
    )


def test_mqtt_source_that_refuses_fails() -> None:
    port = closed_port()
    ok, detail = probe_datasource(f"mqtt://127.0.0.1:{port}")
    assert (ok, detail) == (False, f"mqtt://127.0.0.1:{port}: connection refused")


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /ok and /down answer 200 and 503; HEAD is not implemented (501)."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_source_answers_get_when_head_is_not_allowed(http_server: str) -> None:
    assert probe_datasource(f"{http_server}/ok") == (True, f"{http_server}/ok: HTTP 200 to GET")


def test_http_source_with_a_server_error_fails(http_server: str) -> None:
    assert probe_datasource(f"{http_server}/down") == (
        False,
        f"{http_server}/down: HTTP 503 to GET",
    )


def test_http_source_that_never_answers_times_out(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert probe_datasource(f"http://127.0.0.1:{port}/", timeout=0.3) == (
        False,
        f"http://127.0.0.1:{port}/: no answer within 0.3 s",
    )


def test_credentials_in_a_source_url_are_never_shown() -> None:
    port = closed_port()
    ok, detail = probe_datasource(f"http://reader:pa55word@127.0.0.1:{port}/feed?token=abc")
    assert not ok
    assert detail == f"http://127.0.0.1:{port}/feed: connection refused"


def test_file_source(tmp_path: Path) -> None:
    (tmp_path / "feed.csv").write_text("a,b\n")
    assert probe_datasource(f"file://{tmp_path}/feed.csv") == (
        True,
        f"{tmp_path}/feed.csv: a readable file",
    )
    assert probe_datasource(f"file://{tmp_path}") == (True, f"{tmp_path}: a readable directory")
    assert probe_datasource(f"file://{tmp_path}/nope.csv") == (
        False,
        f"{tmp_path}/nope.csv: No such file or directory",
    )


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ftp://files.local/x", "unsupported scheme 'ftp' in ftp://files.local/x"),
        ("camera-7", "unsupported scheme '' in camera-7"),
        ("tcp://10.0.0.5", "no port in tcp://10.0.0.5"),
        ("tcp://:554", "no host in tcp://:554"),
        ("tcp://cam:rtsp", "bad URL: Port could not be cast to integer value as 'rtsp'"),
        ("file://data/feed.csv", "file://data/feed.csv: a file:// URL names no host"),
    ],
)
def test_unusable_source_urls_are_named(url: str, detail: str) -> None:
    ok, got = probe_datasource(url)
    assert not ok
    assert got.startswith(detail), got


# --- buckets: real directories ---------------------------------------------------------------


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in: read-only by mode, or (as root,
    who ignores modes) /sys, which refuses new files to everyone."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    yield directory
    directory.chmod(0o700)


def test_bucket_read_lists_the_directory(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    assert probe_bucket(str(tmp_path), "read") == (True, f"{tmp_path}: listed (1 entries)")


def test_bucket_write_creates_and_removes_a_probe_file(tmp_path: Path) -> None:
    assert probe_bucket(str(tmp_path), "readwrite") == (
        True,
        f"{tmp_path}: listed (0 entries), created and removed a probe file",
    )
    assert list(tmp_path.iterdir()) == [], "no probe file left behind"


def test_bucket_that_cannot_be_written_fails(unwritable_dir: Path) -> None:
    ok, detail = probe_bucket(str(unwritable_dir), "write")
    assert not ok
    assert detail in (
        f"{unwritable_dir}: cannot create a file in it: Permission denied",
        f"{unwritable_dir}: cannot create a file in it: Read-only file system",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any directory")
def test_bucket_that_cannot_be_listed_fails(tmp_path: Path) -> None:
    secret = tmp_path / "closed"
    secret.mkdir(mode=0o300)
    try:
        assert probe_bucket(str(secret), "read") == (
            False,
            f"{secret}: cannot list it: Permission denied",
        )
    finally:
        secret.chmod(0o700)


def test_bucket_paths_that_are_not_directories_fail(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert probe_bucket(str(tmp_path / "nope"), "read") == (
        False,
        f"{tmp_path / 'nope'}: does not exist",
    )
    assert probe_bucket(str(tmp_path / "file"), "write") == (
        False,
        f"{tmp_path / 'file'}: not a directory",
    )
    assert probe_bucket("results", "read") == (False, "results: not an absolute path")


# --- the whole preflight ---------------------------------------------------------------------


def workflow(requires: Requires) -> Workflow:
    return Workflow(
        name="inspect", version="1.0", steps=[Step(name="s", run=["true"])], requires=requires
    )


def test_every_check_is_reported_in_order_even_when_some_fail(
    tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    requires = Requires(
        models=[ModelNeed(name="defect-detector", version=">=2"), ModelNeed(name="ocr")],
        datasources=[DatasourceNeed(name="camera", url=f"tcp://127.0.0.1:{port}")],
        buckets=[BucketNeed(name="results", path=str(tmp_path), access="write")],
        secrets=["TOKEN", "MISSING"],
        endpoints=["api"],
    )
    ctx = PreflightContext(
        models={"defect-detector": ["2.4"]},
        secrets=frozenset({"TOKEN"}),
        endpoints={"api": "http://10.0.0.9"},
        clock=ManualClock(),
    )
    checks = run_preflight(workflow(requires), ctx)
    assert [(c.kind, c.name, c.ok) for c in checks] == [
        ("model", "defect-detector", True),
        ("model", "ocr", False),
        ("datasource", "camera", True),
        ("bucket", "results", True),
        ("secret", "TOKEN", True),
        ("secret", "MISSING", False),
        ("endpoint", "api", True),
    ]
    assert checks[1].detail == "ocr: not in the models dir"
    assert all(c.ms == 0.0 for c in checks), "durations come from the injected clock"


def test_an_unusable_models_dir_is_named_in_the_model_checks() -> None:
    problem = "models directory '/m' cannot be listed: Permission denied"
    ctx = PreflightContext(models_problem=problem)
    [check] = run_preflight(workflow(Requires(models=[ModelNeed(name="ocr")])), ctx)
    assert not check.ok
    assert check.detail == "ocr: models directory '/m' cannot be listed: Permission denied"


def test_no_requirements_no_checks() -> None:
    assert run_preflight(workflow(Requires()), PreflightContext()) == []


def test_unreachable_sources_are_probed_concurrently(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sources = [
        DatasourceNeed(name=f"silent-{i}", url=f"{scheme}://127.0.0.1:{port}/")
        for i, scheme in enumerate(["mqtt", "http", "mqtt", "http"])
    ]
    started = time.monotonic()
    checks = run_preflight(workflow(Requires(datasources=sources)), PreflightContext(timeout=0.5))
    elapsed = time.monotonic() - started
    assert [c.ok for c in checks] == [False] * 4
    assert all(c.detail.endswith("no answer within 0.5 s") for c in checks), checks
    assert all(c.ms >= 400 for c in checks)
    assert elapsed < 1.5, f"four 0.5 s timeouts took {elapsed:.2f} s: not concurrent"
