"""Retention: the history tables pruned in the background (``--retention``,
``--retention-per-env``).

Every ``every`` seconds (and once soon after the start) :class:`Pruner` asks the pure rule
(:class:`~edgeplane.controller.core.retention.Retention`) what is due and deletes it in
batches of at most :data:`BATCH` rows, each a DELETE of its own run by the store's writer
between its batches (:meth:`Store.delete_batch`), so pruning never holds the database for
long nor mixes with the writes of the receive path. :data:`HISTORY` is the table of what
is pruned and what is never: one :class:`History` per table (the incidents add one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import structlog

from edgeplane.controller.core.retention import PruneStep, Retention
from edgeplane.controller.daemon.store import Store
from edgeplane.shared.clock import Clock

__all__ = ["BATCH", "FIRST_ROUND", "HISTORY", "History", "Pruner"]

BATCH: Final = 1000  # rows per DELETE
PAUSE: Final = 0.01  # seconds between two batches: the receive path's writes go between
FIRST_ROUND: Final = 30.0  # seconds after the start (restore and sync go first)

log: Final = structlog.get_logger("controller")

_OPEN_DEPLOYMENTS: Final = (
    "SELECT id FROM deployments WHERE revivable = 1 OR last_seq = -2"
    " OR state IN ('queued', 'sent', 'accepted', 'running', 'restarting')"
)


@dataclass(frozen=True, slots=True)
class History:
    """A history table: ``at`` its time column (what the age is measured by), ``newest``
    the column that orders an environment's rows (what the count keeps the top of), and
    ``keep``: the rows never pruned however old, an SQL condition over the row, which may
    use ``:recent`` (the start of the protected window, the flap window)."""

    table: str
    at: str = "at"
    newest: str = "rowid"
    keep: str = "0"


HISTORY: Final[tuple[History, ...]] = (
    # The events of a deployment not final (folded again at a restart), and the newest
    # event of each stream (env, src): its seq is the dedupe's watermark at a restart.
    History(
        "oplog",
        newest="id",
        keep=f"(dep != '' AND dep IN ({_OPEN_DEPLOYMENTS})) OR NOT EXISTS (SELECT 1 FROM"
        " oplog AS later WHERE later.env = oplog.env AND later.src = oplog.src"
        " AND later.seq > oplog.seq)",
    ),
    # Those inside the flap window: the flap detector restores them at a restart.
    History("transitions", newest="at", keep="at >= :recent"),
    # The latest edge of each (env, kind): an episode still open (a disk full for weeks) is
    # restored from it at a restart.
    History(
        "alerts",
        newest="at",
        keep="NOT EXISTS (SELECT 1 FROM alerts AS later WHERE later.env = alerts.env"
        " AND later.kind = alerts.kind AND later.id > alerts.id)",
    ),
    # Resolved incidents only (their timelines go with them: a trigger of the schema); an
    # open or acknowledged one is kept however old.
    History("incidents", at="updated", newest="updated", keep="state != 'resolved'"),
)


def delete_sql(history: History, step: PruneStep) -> str:
    """The bounded DELETE of one batch of ``step``."""
    table, newest = history.table, history.newest
    if step.env:
        edge = (
            f"(SELECT {newest} FROM {table} WHERE env = :env"
            f" ORDER BY {newest} DESC LIMIT 1 OFFSET :keep_newest)"
        )
        due = f"env = :env AND {newest} <= {edge}"
        order = newest
    else:
        due, order = f"{history.at} < :before", history.at
    return (
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
        f" WHERE {due} AND NOT ({history.keep}) ORDER BY {order} LIMIT :limit)"
    )


class Pruner:
    """The retention task: ``await Pruner(...).run()`` until cancelled."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        clock: Clock,
        *,
        every: float = 300.0,
        first: float = FIRST_ROUND,
        tables: tuple[History, ...] = HISTORY,
    ) -> None:
        self._store = store
        self._retention = retention
        self._clock = clock
        self._every = every
        self._first = first
        self._tables = {history.table: history for history in tables}
        self.pruned = 0  # rows since start

    async def run(self) -> None:
        if not self._retention.enabled:
            return
        await asyncio.sleep(min(self._first, self._every))
        while True:
            await self.prune_once()
            await asyncio.sleep(self._every)

    async def prune_once(self) -> dict[str, int]:
        """One round: everything due now; returns the rows deleted per table (and logs
        them, when there were any)."""
        started = time.monotonic()
        now = self._clock.time()
        counts: dict[str, dict[str, int]] = {}
        if self._retention.per_env is not None:
            for table in self._tables:
                counts[table] = await self._store.counts_by_env(table, self._retention.per_env)
        pruned = dict.fromkeys(self._tables, 0)
        for step in self._retention.plan(now, counts, tuple(self._tables)):
            pruned[step.table] += await self._carry_out(step, now)
        total = sum(pruned.values())
        self.pruned += total
        if total:
            seconds = round(time.monotonic() - started, 3)
            log.info("history pruned", **pruned, seconds=seconds, total_since_start=self.pruned)
        return pruned

    async def _carry_out(self, step: PruneStep, now: float) -> int:
        sql = delete_sql(self._tables[step.table], step)
        params = {
            "before": step.before,
            "env": step.env,
            "keep_newest": step.keep_newest,
            "recent": self._retention.recent(now),
            "limit": BATCH,
        }
        deleted = 0
        while True:
            batch = await self._store.delete_batch(sql, params)
            deleted += batch
            if batch < BATCH:
                return deleted
            await asyncio.sleep(PAUSE)
