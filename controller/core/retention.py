"""What is due for pruning (pure): the history tables' rows older than the retention age,
and each environment's beyond its newest ``per_env``.

The history tables are listed by the store (:mod:`edgeplane.controller.daemon.retention`,
``HISTORY``), each with what is never pruned however old. What is kept, and why:

- ``oplog``: the events of every deployment that is not final (a revivable one is folded
  again from its events at a restart), and the newest event of each stream (env, src),
  whose ``seq`` is the watermark the dedupe restarts from (:mod:`.oplog`): an old event
  sent again is never taken as new after its row is gone;
- ``transitions``: those inside the flap window (``:recent``), which the flap detector
  restores at a restart;
- ``alerts``: the latest edge of each (env, kind), from which an episode still open is
  restored at a restart;
- ``incidents``: the open and acknowledged ones (only resolved ones are pruned, by the
  time they last changed; their timelines go with them).

Deployments, commands and environment rows are state, not history: never pruned here.
Each step of a :func:`plan` is carried out by the store in bounded batches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PruneStep",
    "Retention",
    "parse_age",
]

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 7 * 86_400.0}
_AGE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


@dataclass(frozen=True, slots=True)
class PruneStep:
    """Delete ``table``'s rows (not kept) that are older than ``before`` (an age step,
    ``env`` ""), or ``env``'s beyond its newest ``keep_newest`` (a count step)."""

    table: str
    before: float | None = None
    env: str = ""
    keep_newest: int = 0


@dataclass(frozen=True, slots=True)
class Retention:
    """``max_age`` seconds (None: no age limit), ``per_env`` rows per environment and
    table (None: no count limit); ``protect`` seconds of the newest history (the flap
    window) are kept whatever the limits say, where the table's ``keep`` asks for it."""

    max_age: float | None = 30 * 86_400.0
    per_env: int | None = 10_000
    protect: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.per_env is not None

    def recent(self, now: float) -> float:
        """The start of the protected window."""
        return now - self.protect

    def plan(
        self, now: float, counts: Mapping[str, Mapping[str, int]], tables: Sequence[str]
    ) -> list[PruneStep]:
        """What is due now: per table an age step, then a count step for each environment
        over the limit (``counts``: table name -> env -> rows)."""
        steps: list[PruneStep] = []
        for table in tables:
            if self.max_age is not None:
                steps.append(PruneStep(table, before=now - self.max_age))
            if self.per_env is None:
                continue
            over = sorted(env for env, n in counts.get(table, {}).items() if n > self.per_env)
            steps.extend(PruneStep(table, env=env, keep_newest=self.per_env) for env in over)
        return steps


def parse_age(text: str) -> float | None:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds; ``0`` and ``off``: None
    (no age limit). ``ValueError`` naming what is wrong otherwise."""
    cleaned = text.strip().lower()
    if cleaned == "off":
        return None
    match = _AGE.fullmatch(cleaned)
    if match is None:
        raise ValueError(f"expected a duration such as 30d, 12h, 90m or 45s (or off), got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return seconds or None
