"""Model versions (PEP 440): one rule for the controller's gate, the agent's preflight and
the workflow-file check, so that the two sides of the wire never disagree about whether a
model on a target satisfies a workflow.

A held version satisfies a specifier when ``SpecifierSet(spec).contains(version,
prereleases=True)``: a pre-release that is on the target is there on purpose, so it counts.
An empty specifier is satisfied by any held version. Versions that are not PEP 440 (a
directory named ``latest``) satisfy nothing but an empty specifier, and sort after the
others. :mod:`packaging` is imported on first use: an agent that never deploys never loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from edgeplane.shared.errors import InvalidVersionSpec

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

__all__ = ["best_match", "check_specifier", "is_version", "satisfies", "version_order"]


def check_specifier(text: str) -> None:
    """Raise :class:`InvalidVersionSpec` unless ``text`` is a PEP 440 specifier set
    (``">=2.1,<3"``; empty: any version)."""
    _specifier(text)


def is_version(text: str) -> bool:
    """Whether ``text`` is a PEP 440 version (``1.4.0``, ``3.0rc1``)."""
    return _version(text) is not None


def satisfies(version: str, specifier: str) -> bool:
    """Whether a held ``version`` satisfies ``specifier`` (see the module's rule)."""
    return best_match(specifier, [version]) is not None


def best_match(specifier: str, versions: Iterable[str]) -> str | None:
    """The highest of ``versions`` that satisfies ``specifier``, or None."""
    held = list(versions)
    if not specifier.strip():
        return max(held, key=version_order) if held else None
    wanted = _specifier(specifier)
    matching = [
        text for text in held if (v := _version(text)) is not None and wanted.contains(v, True)
    ]
    return max(matching, key=version_order) if matching else None


def version_order(text: str) -> tuple[int, Version | str]:
    """Sort key: PEP 440 versions in their order, then anything else by its text."""
    version = _version(text)
    return (1, text) if version is None else (0, version)


def _specifier(text: str) -> SpecifierSet:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise InvalidVersionSpec(text) from None


def _version(text: str) -> Version | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None
