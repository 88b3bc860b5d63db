"""The agent logs through the standard library, the controller through structlog: both
write the same lines (JSON and console, plain and in colours), with secrets masked."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edgeplane.shared import logs
from edgeplane.shared.logs import (
    LogFormat,
    PipeSafeStream,
    RecentLogFile,
    bind_context,
    bound_context,
    configure_logging,
    configure_stdlib_logging,
    get_logger,
    redactor,
    set_level,
)

SECRET = "hunter2-secret"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Every test here configures logging for the whole process: undo it afterwards."""
    root, ours = logging.getLogger(), logging.getLogger(logs.ROOT_LOGGER)
    saved = (list(root.handlers), root.level, list(ours.handlers), ours.level, ours.propagate)
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(saved[3])
    ours.propagate = saved[4]
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logs.unbind_context(*logs.context())
    redactor.clear()


def the_events(
    log: Any, bind: Callable[..., object], bound: Callable[..., Any], set_to: Callable[[str], None]
) -> None:
    """The same calls, through either front end."""
    log.info("before any context")
    with bound(env="dev-a"):
        bind(bdseq=3)
        log.info(
            "agent starting",
            broker="mqtt://127.0.0.1:1883",
            endpoints=["a b", SECRET],
            models_dir=None,
            interval=1.5,
            path=Path("/tmp/x"),
            quoted='say "hi"',
            nested={"token": SECRET},
        )
        log.debug("not shown at info")
        log.warning("100% sure %s", retry_in=0.5)
        log.error(f"taken over: {SECRET} is in the message", env="shadowed")
        try:
            raise ValueError(f"bad value {SECRET}")
        except ValueError:
            log.exception("failed unexpectedly", cmd="c-1")
        set_to("debug")
        log.debug("shown at debug", seq=7)
        set_to("warning")
        log.info("not shown at warning")
    log.warning("after the context")


def structlog_lines(fmt: LogFormat, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(fmt, "info", cache=False)
    the_events(
        structlog.get_logger("test"),
        structlog.contextvars.bind_contextvars,
        structlog.contextvars.bound_contextvars,
        set_level,
    )
    structlog.contextvars.clear_contextvars()
    return stream.getvalue()


def stdlib_lines(fmt: LogFormat, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    configure_stdlib_logging(fmt, "info")
    the_events(get_logger("edgeplane.edge_agent.test"), bind_context, bound_context, set_level)
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("stream", [io.StringIO, Terminal], ids=["file", "terminal"])
def test_the_standard_library_writes_what_structlog_writes(
    fmt: LogFormat, stream: Callable[[], io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    redactor.add([SECRET])
    expected = STAMP.sub("TS", structlog_lines(fmt, stream(), monkeypatch))
    logging.getLogger(logs.ROOT_LOGGER).handlers.clear()
    actual = STAMP.sub("TS", stdlib_lines(fmt, stream(), monkeypatch))
    if fmt == "json":
        # structlog orders the bound context as its contextvars happen to iterate (by
        # hash); the standard library side keeps the order of binding.
        assert [json.loads(line) for line in actual.splitlines()] == [
            json.loads(line) for line in expected.splitlines()
        ]
    else:
        assert actual == expected
    assert SECRET not in actual
    assert len(actual.splitlines()) >= 7, "every event above the level shown"
    if stream is Terminal and fmt == "console":
        assert "\033[" in actual, "colours at a terminal"


def test_json_lines_carry_the_keys_and_the_context_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = stdlib_lines("json", io.StringIO(), monkeypatch).splitlines()
    assert lines[0].startswith('{"event": "before any context", "level": "info", "timestamp": "')
    assert re.fullmatch(
        r'\{"broker": "mqtt://127.0.0.1:1883", .*"event": "agent starting", "env": "dev-a", '
        r'"bdseq": 3, "level": "info", "timestamp": "[^"]+Z"\}',
        lines[1],
    )
    assert '"env": "shadowed"' in lines[3], "a field beats the bound context"
    assert '"env"' not in lines[-1], "the context ends with its block"
    assert '"bdseq": 3' in lines[-1], "what was bound inside stays, as with structlog"


def test_importing_the_logging_module_does_not_load_structlog() -> None:
    code = "import sys, edgeplane.shared.logs; print('structlog' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --- a reader that went away ---------------------------------------------------------------------
@pytest.fixture
def closed_pipe() -> Iterator[io.TextIOWrapper]:
    """The write end of a pipe whose reader is gone, as stderr is once ``| tee`` ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w", buffering=1) as stream:
        yield stream


def test_a_closed_pipe_makes_the_stream_quiet_for_every_writer(
    closed_pipe: io.TextIOWrapper,
) -> None:
    with pytest.raises(BrokenPipeError):
        os.write(closed_pipe.fileno(), b"x")
    stream = PipeSafeStream(closed_pipe)
    assert stream.write("a line\n") == len("a line\n")
    stream.flush()
    assert stream.reader_gone
    # Its descriptor writes nowhere now, also for a print or the flush at exit.
    assert os.write(closed_pipe.fileno(), b"x") == 1
    print("after", file=closed_pipe, flush=True)


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        if "lost" in text:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_another_write_error_loses_only_its_line() -> None:
    disk = _FullDisk()
    stream = PipeSafeStream(disk)
    stream.write("lost line\n")
    stream.write("kept line\n")
    assert disk.getvalue() == "kept line\n"
    assert not stream.reader_gone


@pytest.mark.parametrize("front_end", ["structlog", "stdlib"])
def test_logging_into_a_closed_pipe_neither_raises_nor_stops(
    front_end: str, closed_pipe: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", closed_pipe)
    if front_end == "structlog":
        configure_logging("json", "info")
        log: Any = structlog.get_logger("test")
    else:
        configure_stdlib_logging("json", "info")
        log = get_logger("edgeplane.edge_agent.test")
    log.info("stopping", phase="online")
    log.info("stopped")
    logging.getLogger("paho").warning("a library's line")
    assert os.write(closed_pipe.fileno(), b"x") == 1, "stderr writes nowhere now"


def test_the_recent_log_file_is_private_and_keeps_about_twice_its_size(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    handler = RecentLogFile(str(path), max_bytes=1000)
    try:
        for n in range(100):
            record = logging.LogRecord(
                "edgeplane.x", logging.INFO, __file__, 1, f"line {n}", (), None
            )
            handler.emit(record)
    finally:
        handler.close()
    older = tmp_path / "agent.log.1"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert path.stat().st_size <= 1100
    assert older.stat().st_size <= 1100
    newest = json.loads(path.read_text().splitlines()[-1])
    assert newest["event"] == "line 99"
    assert newest["level"] == "info"
