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
import shutil

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
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi", path=path) is not None
