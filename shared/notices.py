"""The JSON bodies the controller's webhook (``--notify-url``) is sent, one per POST.

Each is a frozen Struct tagged by its ``type``, so a receiver tells them apart by that one
field; new fields get defaults and new kinds get their own tag (readers ignore what they do
not know). docs/operations.md shows them.
"""

from __future__ import annotations

import msgspec

from edgeplane.shared.messages import ShortText, UnixTime

__all__ = ["AlertNotice"]


class AlertNotice(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="alert"):
    """An alert edge, as ``R/alerts/{env}`` carries it: ``{"type": "alert", "kind",
    "state", "env", "ts", "detail"}``."""

    kind: ShortText
    state: ShortText
    env: ShortText
    ts: UnixTime
    detail: str = ""
