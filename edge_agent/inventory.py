"""The models this agent holds: directories ``DIR/{name}/{version}/`` in ``--models-dir``.

:func:`scan_models` lists them afresh on every call (a directory listing is cheap, and the
agent reports its inventory only when it changes). Files and hidden entries (``.name``) are
ignored at both levels, so a half-copied ``.tmp`` directory or a README is no model.

Errors: a models directory that is missing, not a directory or cannot be listed raises
:class:`~edge_agent.errors.ModelsDirError` naming it; the caller logs it and reports an
empty inventory. A single model's directory that cannot be listed is skipped with a
warning, so one bad entry does not hide every other model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

from edgeplane.edge_agent.errors import ModelsDirError
from edgeplane.shared.clock import Clock
from edgeplane.shared.logs import get_logger
from edgeplane.shared.versions import version_order

__all__ = ["MODELS_LOG_GAP", "InventoryScanner", "scan_models"]

MODELS_LOG_GAP: Final = 600.0  # seconds between two log lines about an unusable models dir

log = get_logger(__name__)


def scan_models(models_dir: Path | None) -> dict[str, list[str]]:
    """Model name -> versions held, names sorted, versions in PEP 440 order (versions that
    are not PEP 440 come after, in string order). No models dir configured: ``{}``."""
    if models_dir is None:
        return {}
    models: dict[str, list[str]] = {}
    for name in _subdirectories(models_dir, strict=True):
        models[name] = sorted(_subdirectories(models_dir / name, strict=False), key=version_order)
    return models


def _subdirectories(directory: Path, *, strict: bool) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return sorted(
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=True)
            )
    except OSError as exc:
        problem = f"models directory {str(directory)!r} cannot be listed: {exc.strerror}"
        if strict:
            raise ModelsDirError(problem) from exc
        log.warning("model skipped", reason=problem)
        return []


class InventoryScanner:
    """The inventory for each heartbeat: :func:`scan_models` of ``models_dir``, or nothing
    (and a log line every :data:`MODELS_LOG_GAP` seconds at most) while it is unusable."""

    def __init__(self, models_dir: Path, clock: Clock) -> None:
        self.models_dir = models_dir
        self._clock = clock
        self._logged_at = -math.inf

    def __call__(self) -> dict[str, list[str]]:
        try:
            return scan_models(self.models_dir)
        except ModelsDirError as exc:
            now = self._clock.monotonic()
            if now - self._logged_at >= MODELS_LOG_GAP:
                self._logged_at = now
                log.warning("no model inventory", reason=str(exc))
            return {}
