"""Logging setup: configure once at the entry point, then ``structlog.get_logger()``.

Readable console output at a terminal, one JSON object per line otherwise (or when asked
with ``--log-format json``). A redaction processor replaces every registered secret value
with ``***`` before anything is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["LogFormat", "Redactor", "configure_logging", "redactor", "set_level"]

LogFormat = Literal["auto", "console", "json"]


class Redactor:
    """A structlog processor that masks known secret values anywhere in an event."""

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


def configure_logging(fmt: LogFormat = "auto", level: str = "info", *, cache: bool = True) -> None:
    """Configure structlog (and stdlib logging underneath) for the whole process.

    ``cache=False`` lets :func:`set_level` change the level later (the edge agent, whose
    level the controller may change), at the cost of a logger lookup per log call."""
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
        wrapper_class=_filtering(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    # Libraries that log through the standard library (paho, aiomqtt) go to stderr too,
    # at warning level so that their per-packet chatter stays out.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")


def set_level(level: str) -> None:
    """Log from ``level`` up from now on (loggers configured with ``cache=False``)."""
    structlog.configure(wrapper_class=_filtering(level))


def _filtering(level: str) -> Any:
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    return structlog.make_filtering_bound_logger(numeric_level)
