"""The JSON bodies the controller's webhook (``--notify-url``) is sent, one per POST.

Each is a frozen Struct tagged by its ``type``, so a receiver tells them apart by that one
field; new fields get defaults and new kinds get their own tag (readers ignore what they do
not know). docs/operations.md shows them.
"""

from __future__ import annotations

import msgspec

from edgeplane.shared.rpc import IncidentInfo

__all__ = ["IncidentNotice"]


class IncidentNotice(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="incident"):
    """One edge of an incident, sent once the controller has stored it: ``{"type":
    "incident", "edge", "incident"}``. ``edge`` is ``opened``, ``repeated``,
    ``acknowledged`` or ``resolved``; ``incident`` is the incident after it (as
    ``edgeplane --json incidents show`` prints it, timeline included)."""

    edge: str
    incident: IncidentInfo
