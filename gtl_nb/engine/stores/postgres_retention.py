"""Retention of the PostgreSQL usage ledger: ``engine.ledger_retention``'s rules, for replicas.

The same rows go as from a SQLite file (docs/ledger.md, "Retention"): finished rows started before
``retention_days`` ago, and finished rows beyond the newest ``max_rows`` (by ``id``) — never a
``started`` row, never one started since the previous UTC day began (``ledger_retention.keep_since``:
budgets may count it). ``now`` is the pruning replica's wall clock, the clock rows are stamped with.

Several replicas prune the one table, each when its ledger opens and then hourly, and
``gtl ledger prune`` may run meanwhile. Each batch is ONE ``DELETE`` of at most ``CHUNK`` rows, chosen
with ``FOR UPDATE SKIP LOCKED``: two pruners at once take disjoint rows and never wait for each
other; a row is deleted once, counted once; a row whose late outcome is being written at that moment
(locked by that UPDATE) is skipped, not waited for. The statement re-checks ``status`` on the row it
locks, so a row that is ``started`` is never deleted, whatever committed meanwhile. Batches are
their own transactions (autocommit): the writers' commits interleave.
"""

from __future__ import annotations

import time
from typing import Any

from gtl_nb.engine.ledger_retention import CHUNK, Pruned, Retention, keep_since
from gtl_nb.engine.ledger_schema import TABLE
from gtl_nb.engine.ratelimit import DAY
from gtl_nb.engine.stores.postgres_pool import run_once
from gtl_nb.log import get_logger

__all__ = ["prune_database", "prune_postgres"]

log = get_logger("engine.stores")

_FINISHED_BEFORE = "time < %s AND status <> 'started'"
_BY_AGE = (
    f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE {_FINISHED_BEFORE} LIMIT %s FOR UPDATE SKIP LOCKED)"
)
# The newest row beyond the newest max_rows: it and every finished row before it may go.
_BEYOND = f"SELECT id FROM {TABLE} ORDER BY id DESC LIMIT 1 OFFSET %s"
_BY_SIZE = (
    f"DELETE FROM {TABLE} WHERE id IN "
    f"(SELECT id FROM {TABLE} WHERE id <= %s AND {_FINISHED_BEFORE} LIMIT %s FOR UPDATE SKIP LOCKED)"
)


async def prune_postgres(conn: Any, retention: Retention, *, now: float | None = None, chunk: int = CHUNK) -> Pruned:
    """Delete the finished rows ``retention`` no longer keeps, ``chunk`` a statement; return how many.

    ``conn`` is a psycopg ``AsyncConnection`` in autocommit mode (each batch its own transaction)."""
    now = time.time() if now is None else float(now)
    floor = keep_since(now)
    by_age = by_size = 0
    if retention.days is not None:
        cutoff = min(now - retention.days * DAY, floor)
        by_age = await _delete(conn, _BY_AGE, (cutoff,), chunk)
    if retention.max_rows is not None:
        beyond = await (await conn.execute(_BEYOND, (retention.max_rows,))).fetchone()
        if beyond is not None:
            by_size = await _delete(conn, _BY_SIZE, (int(beyond[0]), floor), chunk)
    return Pruned(by_age, by_size)


async def _delete(conn: Any, statement: str, params: tuple[float | int, ...], chunk: int) -> int:
    """Run ``statement`` (a bounded DELETE) until it deletes fewer than ``chunk`` rows; how many in all.

    Fewer than ``chunk`` may also mean another pruner holds the rest: it deletes them."""
    deleted = 0
    while True:
        cursor = await conn.execute(statement, (*params, chunk))
        count = max(0, cursor.rowcount)
        deleted += count
        if count < chunk:
            return deleted


def prune_database(url: str, retention: Retention, *, now: float | None = None) -> Pruned | None:
    """Prune the ledger in the PostgreSQL database ``url`` names, by hand (``gtl ledger prune``);
    ``None`` when the database holds no ledger table. Unreachable: ``PostgresUnavailableError``."""

    async def work(conn: Any) -> Pruned | None:
        found = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))).fetchone()
        if not found[0]:
            return None
        return await prune_postgres(conn, retention, now=now)

    return run_once(url, work, name="gtl ledger prune")
