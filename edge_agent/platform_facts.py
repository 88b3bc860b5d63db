"""Facts about this runtime target that decide what can run here (OS, architecture,
Python, agent version, a visible GPU), reported in the agent's first online message.

Computed once per process: nothing in it changes while the agent runs, and heartbeats must
stay cheap. GPU detection looks for an NVIDIA device node or ``nvidia-smi`` on ``PATH``;
it never runs a subprocess.
"""

from __future__ import annotations

import functools
import os
import platform

from edgeplane.shared import __version__
from edgeplane.shared.messages import Platform

__all__ = ["gpu_visible", "platform_facts"]


@functools.cache
def platform_facts() -> Platform:
    return Platform(
        os=platform.system().lower(),
        arch=platform.machine(),
        py=platform.python_version(),
        agent=__version__,
        gpu=gpu_visible(),
    )


def gpu_visible(path: str | None = None) -> bool:
    """An NVIDIA device node exists, or ``nvidia-smi`` is on ``path`` (default ``$PATH``)."""
    return os.path.exists("/dev/nvidia0") or _on_path("nvidia-smi", path)


def _on_path(program: str, path: str | None) -> bool:
    """An executable ``program`` in a directory of ``path`` (the test ``shutil.which``
    makes; shutil itself, with its compression modules, is more than an idle agent needs)."""
    directories = (os.environ.get("PATH", os.defpath) if path is None else path).split(os.pathsep)
    return any(
        os.access(candidate, os.X_OK) and not os.path.isdir(candidate)
        for candidate in (os.path.join(d, program) for d in directories if d)
    )
