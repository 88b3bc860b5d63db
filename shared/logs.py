"""Logging: one line per event, readable at a terminal or one JSON object per line, with
every registered secret value masked (``***``) before anything is rendered.

Two front ends write the same lines (keys ``event``, ``level``, ``timestamp`` in ISO 8601
UTC, the bound context such as ``env`` and ``bdseq``, and the call's keyword fields):

- the standard library, for the edge agent, which must stay light (structlog imports
  asyncio): :func:`get_logger` gives an :class:`EventLogger` (``log.info("event",
  key=value)``), :func:`bound_context` / :func:`bind_context` add context, and
  :func:`configure_stdlib_logging` configures it at the entry point;
- structlog, for the controller and the fleet simulator: :func:`configure_logging`
  (structlog is imported there, never by importing this module) configures structlog and
  the standard library side too, so agent modules used in such a process log alike.

Console output is ``timestamp [level] event key=value ...`` (keys sorted, colours at a
terminal), as structlog's ``ConsoleRenderer`` draws it.

Both write through a :class:`PipeSafeStream`: when the reader of stderr goes away (``| tee``
ended by the Ctrl-C that stops us, a terminal hung up), logging goes quiet instead of
raising into the code that logs, so a process keeps running, or stops cleanly, without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Final, Literal, TextIO, TypeAlias, cast

__all__ = [
    "ROOT_LOGGER",
    "EventFormatter",
    "EventLogger",
    "LogFormat",
    "PipeSafeStream",
    "RecentLogFile",
    "Redactor",
    "bind_context",
    "bound_context",
    "configure_logging",
    "configure_stdlib_logging",
    "context",
    "get_logger",
    "redactor",
    "set_level",
    "unbind_context",
]

LogFormat = Literal["auto", "console", "json"]
ROOT_LOGGER: Final = "edgeplane"  # the standard library loggers of edgeplane's modules
_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]


class Redactor:
    """Masks known secret values anywhere in an event (also a structlog processor)."""

    MASK = "***"

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        self._secrets.update(v for v in values if len(v) >= 3)
        # Longest first: a secret that contains another must not be half-masked.
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every registered secret value replaced by ``***``."""
        masked: str = self._mask(text)
        return masked

    def clear(self) -> None:
        self._secrets.clear()
        self._ordered = []

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event
        for key, value in event.items():
            event[key] = self._mask(value)
        return event

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._ordered:
                if secret in value:
                    value = value.replace(secret, self.MASK)
            return value
        if isinstance(value, (list, tuple)):
            # A plain list or tuple back, also for subclasses such as named tuples.
            masked = [self._mask(v) for v in value]
            return masked if isinstance(value, list) else tuple(masked)
        if isinstance(value, dict):
            return {k: self._mask(v) for k, v in value.items()}
        return value


redactor = Redactor()


# --- the bound context ----------------------------------------------------------------------
# A new mapping on every change (never changed in place): a copied context keeps its own.
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "edgeplane_log_context", default=None
)


def context() -> Mapping[str, Any]:
    """What :func:`bind_context` bound in this thread (or task)."""
    return _context.get() or {}


def bind_context(**values: Any) -> None:
    """Add ``values`` to every line logged from now on in this thread (or task)."""
    _context.set({**context(), **values})


def unbind_context(*keys: str) -> None:
    _context.set({k: v for k, v in context().items() if k not in keys})


@contextlib.contextmanager
def bound_context(**values: Any) -> Iterator[None]:
    """``values`` on every line logged inside; afterwards those keys are as they were
    before (keys bound inside by :func:`bind_context` stay, as with structlog)."""
    before = context()
    previous = {key: before[key] for key in values if key in before}
    bind_context(**values)
    try:
        yield
    finally:
        unbind_context(*(key for key in values if key not in previous))
        bind_context(**previous)


# --- the standard library front end ------------------------------------------------------------
class EventLogger:
    """``log.info("event", key=value)`` over a standard library logger."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled."""
        self._log(logging.ERROR, event, fields, exc_info=True)

    def _log(
        self, level: int, event: str, fields: dict[str, Any], *, exc_info: bool = False
    ) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})


def get_logger(name: str) -> EventLogger:
    """The logger of module ``name`` (``__name__``: under :data:`ROOT_LOGGER`)."""
    return EventLogger(logging.getLogger(name))


class EventFormatter(logging.Formatter):
    """Renders a record as structlog's JSON or console renderer would the same event."""

    def __init__(self, *, as_json: bool, colors: bool = False) -> None:
        super().__init__()
        self.as_json = as_json
        self.styles = _COLORS if colors else _PLAIN

    def format(self, record: logging.LogRecord) -> str:
        event = self.event_of(record)
        if self.as_json:
            return json.dumps(event, default=repr)
        return _render_console(event, self.styles)

    @staticmethod
    def event_of(record: logging.LogRecord) -> dict[str, Any]:
        """The event dict, in structlog's key order: the fields, ``event``, the context,
        ``level``, ``timestamp`` (and ``exception``), secrets masked."""
        event: dict[str, Any] = dict(getattr(record, "fields", {}))
        event["event"] = record.getMessage()
        for key, value in context().items():
            event.setdefault(key, value)
        event["level"] = record.levelname.lower()
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        event["timestamp"] = stamp.isoformat().replace("+00:00", "Z")
        if record.exc_info and record.exc_info[0] is not None:
            event["exception"] = _format_exception(record.exc_info)
        redactor(None, event["level"], event)
        return event


def _format_exception(exc_info: _ExcInfo) -> str:
    text = "".join(traceback.format_exception(*exc_info))
    return text.removesuffix("\n")


# --- the console line, as structlog.dev.ConsoleRenderer draws it ------------------------------
_EVENT_WIDTH: Final = 30
_LEVEL_WIDTH: Final = len("exception")  # the longest level name structlog knows
_COLUMNS: Final = ("timestamp", "level", "event", "logger", "logger_name")
_RESET, _BRIGHT, _DIM = "\033[0m", "\033[1m", "\033[2m"
_RED, _YELLOW, _GREEN = "\033[31m", "\033[33m", "\033[32m"
_BLUE, _CYAN, _MAGENTA = "\033[34m", "\033[36m", "\033[35m"
_LEVELS: Final = {
    "critical": _RED,
    "exception": _RED,
    "error": _RED,
    "warn": _YELLOW,
    "warning": _YELLOW,
    "info": _GREEN,
    "debug": _GREEN,
    "notset": "\033[41m",
}
_COLORS: Final = {
    "reset": _RESET,
    "bright": _BRIGHT,
    "timestamp": _DIM,
    "logger": _BRIGHT + _BLUE,
    "key": _CYAN,
    "value": _MAGENTA,
    **{f"level_{name}": style + _BRIGHT for name, style in _LEVELS.items()},
}
_PLAIN: Final = dict.fromkeys(_COLORS, "")


def _render_console(event: dict[str, Any], styles: Mapping[str, str]) -> str:
    reset = styles["reset"]
    exception = event.pop("exception", None)
    columns = {key: event.pop(key) for key in _COLUMNS if key in event}
    parts = []
    if "timestamp" in columns:
        parts.append(f"{styles['timestamp']}{columns['timestamp']}{reset}")
    if "level" in columns:
        level = str(columns["level"])
        style = styles.get(f"level_{level}", "")
        parts.append(f"[{style}{level:<{_LEVEL_WIDTH}}{reset}]")
    if "event" in columns:
        parts.append(f"{styles['bright']}{columns['event']!s:<{_EVENT_WIDTH}}{reset}")
    parts += [
        f"[{styles['logger']}{columns[key]}{reset}]" for key in _COLUMNS[3:] if key in columns
    ]
    parts += [
        f"{styles['key']}{key}{reset}={styles['value']}{_repr(event[key])}{reset}"
        for key in sorted(event)
    ]
    line = " ".join(parts).rstrip(" ")
    return line if exception is None else f"{line}\n{exception}"


def _repr(value: Any) -> str:
    if isinstance(value, str) and not set(value) & {" ", "\t", "=", "\r", "\n", '"', "'"}:
        return value
    return repr(value)


# --- the output stream -------------------------------------------------------------------------
# The errors of a stream nobody reads any more: a closed pipe, a hung-up terminal.
_READER_GONE: Final = frozenset({errno.EPIPE, errno.EIO, errno.ECONNRESET})


class PipeSafeStream:
    """A text stream (stderr, stdout) that never raises into its writer.

    Once its reader is gone (:data:`_READER_GONE`), its file descriptor is pointed at
    /dev/null: every later write, whoever makes it (a ``print``, the interpreter's flush at
    exit, a library's logging), succeeds and goes nowhere. Any other write error loses the
    one line it was writing."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self._stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def isatty(self) -> bool:
        return not self.reader_gone and self._stream.isatty()

    def _failed(self, exc: OSError) -> None:
        if exc.errno not in _READER_GONE:
            return
        self.reader_gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            # io.UnsupportedOperation (no descriptor) is an OSError and a ValueError.
            _discard_writes_to(self._stream.fileno())


def _discard_writes_to(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class RecentLogFile(logging.FileHandler):
    """The latest events as JSON lines (masked like every line) in a file of the process's
    own, mode 0600: at most about twice ``max_bytes`` on disk, the older half in
    ``NAME.1``. What ``edge-agent doctor --bundle`` sends support."""

    def __init__(self, path: str, max_bytes: int = 512 * 1024) -> None:
        _private_file(path)
        super().__init__(path, encoding="utf-8")
        self.max_bytes = max_bytes
        self.setFormatter(EventFormatter(as_json=True))

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.stream
        if stream is not None and stream.tell() >= self.max_bytes:
            stream.close()
            self._rotate()
        super().emit(record)

    def _rotate(self) -> None:
        # (if it cannot move, the one file goes on rather than losing what comes next)
        with contextlib.suppress(OSError):
            os.replace(self.baseFilename, self.baseFilename + ".1")
            _private_file(self.baseFilename)
        self.stream = self._open()


def _private_file(path: str) -> None:
    """``path`` made if missing, readable by its owner only."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


# --- configuration ---------------------------------------------------------------------------
_structlog_levels = False  # set_level must reconfigure structlog too


def configure_stdlib_logging(
    fmt: LogFormat = "auto", level: str = "info", *, recent: str | None = None
) -> None:
    """Configure the standard library loggers of edgeplane (under :data:`ROOT_LOGGER`):
    events at ``level`` and above to stderr, as JSON or console lines per ``fmt``, and to
    the :class:`RecentLogFile` ``recent`` too, when given (a file that cannot be opened
    is said on stderr, and the process logs on without it)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    stderr = PipeSafeStream(sys.stderr)
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(EventFormatter(as_json=use_json, colors=sys.stderr.isatty()))
    logger = logging.getLogger(ROOT_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(_numeric(level))
    if recent is not None:
        try:
            logger.addHandler(RecentLogFile(recent))
        except OSError as exc:
            logger.warning(
                "no recent-log file", extra={"fields": {"path": recent, "error": str(exc)}}
            )
    # Libraries that log through the standard library (paho, aiomqtt) go to stderr too,
    # at warning level so that their per-packet chatter stays out.
    logging.basicConfig(
        handlers=[logging.StreamHandler(stderr)],
        level=logging.WARNING,
        format="%(name)s: %(message)s",
    )


def configure_logging(fmt: LogFormat = "auto", level: str = "info", *, cache: bool = True) -> None:
    """Configure structlog for the whole process, and the standard library side alike.

    ``cache=False`` lets :func:`set_level` change structlog's level later, at the cost of
    a logger lookup per log call."""
    global _structlog_levels
    import structlog  # here: importing this module must not load structlog (and asyncio)

    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_numeric(level)),
        # It prints to the stream (write and flush): all a PipeSafeStream has of TextIO.
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, PipeSafeStream(sys.stderr))),
        cache_logger_on_first_use=cache,
    )
    _structlog_levels = not cache
    configure_stdlib_logging(fmt, level)


def set_level(level: str) -> None:
    """Log from ``level`` up from now on (structlog: if configured with ``cache=False``)."""
    logging.getLogger(ROOT_LOGGER).setLevel(_numeric(level))
    if _structlog_levels:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_numeric(level)))


def _numeric(level: str) -> int:
    return logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
