"""Keeping the idle agent small: standard-library modules that a library imports at the top
but that an agent never uses are imported only when something really uses them.

paho-mqtt's client module imports :mod:`urllib.request` (and with it ``http.client``,
``email`` and more: about 3 MB of memory) for one purpose: reading a proxy from the
environment when the optional PySocks package is installed. An agent does not install it,
so :func:`defer_unused_imports`, called by ``edge-agent run`` before the agent's modules are
imported, puts a stand-in module in its place. The stand-in imports the real module the
first time any of its attributes is read (``from urllib.request import urlopen``,
``urllib.request.getproxies()``), so code that does use it works as usual, only later.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading
import types
from typing import Any, Final

__all__ = ["DEFERRED", "Deferred", "defer_unused_imports"]

DEFERRED: Final = ("urllib.request",)


class Deferred(types.ModuleType):
    """A module that becomes the real one when an attribute is first read."""

    _lock = threading.Lock()  # two threads reading at once load it once

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.load(), attribute)

    def load(self) -> types.ModuleType:
        name = self.__name__
        with Deferred._lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            # Those who bound the stand-in (paho's `urllib.request`) see the real module's
            # names from now on; everyone else gets the real module from sys.modules.
            self.__dict__.update(real.__dict__)
            return real


def defer_unused_imports(names: tuple[str, ...] = DEFERRED) -> None:
    """Put a :class:`Deferred` stand-in for each module in ``names`` not imported yet."""
    for name in names:
        if name in sys.modules:
            continue
        stand_in = Deferred(name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stand_in
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(importlib.import_module(parent), child, stand_in)
