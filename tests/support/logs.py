"""What edgeplane's standard library loggers log, captured as event dicts (like structlog's
``capture_logs``): ``event``, ``log_level`` and the call's fields."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from edgeplane.shared.logs import ROOT_LOGGER

__all__ = ["capture_logs"]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = dict(getattr(record, "fields", {}))
        entry["event"] = record.getMessage()
        entry["log_level"] = record.levelname.lower()
        self.entries.append(entry)


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Every event logged inside, at every level, in order."""
    logger = logging.getLogger(ROOT_LOGGER)
    capture = _Capture()
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture.entries
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
