"""Retention of the usage ledger: the oldest finished rows go once they are older than ``days`` or
beyond the newest ``max_rows`` (``[ledger] retention_days`` and ``max_rows``; both off by default).

* Only finished rows are deleted (``ok``, ``error``, ``cancelled``, ``interrupted``): a ``started``
  row is a request in flight, or one recovery has still to judge.
* Rows a budget may still count are never deleted, whatever the settings: those started since the
  previous UTC day began (``ratelimit.horizon`` less the day of slack the budget table keeps).
  ``max_rows`` is therefore a ceiling the file reaches back to once that traffic has aged.
* Deletion runs in chunks of short transactions, so a first prune of a large file never holds the
  write lock for long; other processes and this process's writer interleave between chunks.

The ledger writer prunes when it starts and then at most once per ``PRUNE_EVERY`` seconds, between
two group commits (``engine.ledger_writer``); ``prune_file`` is the same by hand (``gtl ledger prune``).
Deleting rows frees pages inside the file for new rows; only ``vacuum=True`` gives the space back to
the file system.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from gtl_nb.engine.ledger import Ledger, LedgerValueError
from gtl_nb.engine.ledger_schema import TABLE
from gtl_nb.engine.ratelimit import DAY, horizon
from gtl_nb.log import get_logger

__all__ = ["CHUNK", "PRUNE_EVERY", "Pruned", "Retention", "keep_since", "prune", "prune_file"]

log = get_logger("engine.ledger")

PRUNE_EVERY = 3600.0  # seconds between two prunes by the writer: cheap when nothing is due
CHUNK = 5000  # rows deleted per transaction: a few milliseconds of write lock


@dataclass(frozen=True)
class Retention:
    """How long the ledger keeps finished rows: ``days`` of age (at least 1) and at most ``max_rows``
    rows (at least 1); ``None`` keeps them all on that count."""

    days: float | None = None
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.days is not None and (
            isinstance(self.days, bool) or not isinstance(self.days, (int, float)) or not self.days >= 1
        ):
            raise LedgerValueError(f"retention days must be a number of at least 1, got {self.days!r}")
        if self.max_rows is not None and (
            isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1
        ):
            raise LedgerValueError(f"retention max_rows must be an integer of at least 1, got {self.max_rows!r}")

    @property
    def enabled(self) -> bool:
        """Whether any row can ever be deleted."""
        return self.days is not None or self.max_rows is not None


@dataclass(frozen=True)
class Pruned:
    """How many rows one prune deleted, by reason (a row old enough for both counts as ``by_age``)."""

    by_age: int = 0
    by_size: int = 0

    @property
    def total(self) -> int:
        return self.by_age + self.by_size


def keep_since(now: float) -> float:
    """Rows started at or after this instant are never pruned: budgets may still count them."""
    return horizon(now) - DAY


def prune(ledger: Ledger, retention: Retention, *, now: float | None = None, chunk: int = CHUNK) -> Pruned:
    """Delete the finished rows ``retention`` no longer keeps, oldest first; return how many.

    ``now`` is wall-clock unix seconds (default: ``time.time()``), the clock rows are stamped with."""
    now = time.time() if now is None else float(now)
    floor = keep_since(now)
    by_age = by_size = 0
    if retention.days is not None:
        cutoff = min(now - retention.days * DAY, floor)
        by_age = _delete(ledger, "time < ? AND status != 'started'", (cutoff,), chunk)
    if retention.max_rows is not None:
        # the newest row beyond the newest max_rows: it and every finished row before it may go
        beyond = ledger.transaction(
            lambda conn: conn.execute(
                f"SELECT id FROM {TABLE} ORDER BY id DESC LIMIT 1 OFFSET ?", (retention.max_rows,)
            ).fetchone()
        )
        if beyond is not None:
            where = "id <= ? AND time < ? AND status != 'started'"
            by_size = _delete(ledger, where, (int(beyond[0]), floor), chunk)
    if by_age or by_size:
        log.info("ledger %s: pruned %d row(s) by age and %d by size", ledger.path, by_age, by_size)
    return Pruned(by_age, by_size)


def prune_file(
    path: str | os.PathLike[str] | None,
    retention: Retention,
    *,
    now: float | None = None,
    vacuum: bool = False,
) -> Pruned:
    """Prune the ledger file ``path`` (``None``: the default file) by hand — what ``gtl ledger prune``
    runs. ``vacuum=True`` then rewrites the file to hand the freed space back to the file system
    (it holds the write lock while it runs: other writers wait, up to their ``retry_for``)."""
    with Ledger(path) as ledger:
        pruned = prune(ledger, retention, now=now)
        if vacuum:
            ledger.vacuum()
    return pruned


def _delete(ledger: Ledger, where: str, params: tuple[float | int, ...], chunk: int) -> int:
    """Delete the rows matching ``where``, ``chunk`` rows per transaction; return how many."""
    statement = f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE {where} LIMIT ?)"
    deleted = 0
    while True:
        count = ledger.transaction(lambda conn: _rowcount(conn.execute(statement, (*params, chunk))))
        deleted += count
        if count < chunk:
            return deleted


def _rowcount(cursor: sqlite3.Cursor) -> int:
    return max(0, cursor.rowcount)
