"""Retention of the PostgreSQL ledger against a real PostgreSQL 15: the SQLite ledger's rules
(``[ledger] retention_days``/``max_rows``), applied by the running ledger and safe when two replicas
prune at once."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from store_kit import FakeClock, run

from gtl_nb.engine.ledger_retention import Pruned, Retention
from gtl_nb.engine.stores import open_stores
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.engine.stores.postgres_retention import prune_postgres

DAY, HOUR = 86400.0, 3600.0
NOW = 1_700_049_600.0  # 2023-11-15T12:00:00Z: rows since 2023-11-14T00:00Z are always kept


kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def tables(postgres_url: str, tmp_path: Path) -> str:
    """The database with the ledger's tables and no row; its URL."""
    PostgresUsageLedger(postgres_url, spool_path=tmp_path / "setup.sqlite3").close()
    return postgres_url


def add(url: str, session: str, age: float, status: str = "ok") -> None:
    """A row started ``age`` seconds before NOW, as a replica that still holds its lease wrote it."""
    query(
        url,
        "INSERT INTO ledger_leases (replica, lease_until) VALUES ('other', clock_timestamp() + interval '1 hour') "
        "ON CONFLICT DO NOTHING",
    )
    query(
        url,
        "INSERT INTO requests (time, time_utc, session_id, status, replica, replica_seq) "
        "VALUES (%s, '', %s, %s, 'other', (SELECT COALESCE(max(replica_seq), 0) + 1 FROM requests))",
        NOW - age,
        session,
        status,
    )


def add_many(url: str, count: int, age: float, status: str) -> None:
    """``count`` rows started ``age`` seconds before NOW (ids in order, after those there)."""
    query(
        url,
        "INSERT INTO requests (time, time_utc, session_id, status, replica, replica_seq) "
        "SELECT %s, '', %s || n, %s, 'bulk', (SELECT COALESCE(max(replica_seq), 0) FROM requests) + n "
        "FROM generate_series(1, %s) AS n",
        NOW - age,
        f"{status} ",
        status,
        count,
    )


def sessions(url: str) -> list[str]:
    return [session for (session,) in query(url, "SELECT session_id FROM requests ORDER BY id")]


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_configured_retention_prunes_when_the_ledger_opens_and_then_every_period(tables: str, tmp_path: Path):
    add(tables, "ancient", 5 * DAY)
    add(tables, "edge", 2 * DAY - 10 * 60)  # within two days for ten more minutes
    add(tables, "stuck", 5 * DAY, status="started")  # its replica holds its lease: never pruned
    add(tables, "interrupted", 3 * DAY, status="interrupted")
    add(tables, "yesterday", 30 * HOUR, status="error")
    # through open_stores, as a gateway with [ledger] url = "postgresql://…" and retention_days = 2
    stores = open_stores(
        f"{tables}?spool_path={tmp_path / 'one.sqlite3'}", wall_clock=FakeClock(NOW), ledger_retention=Retention(days=2)
    )
    assert isinstance(stores.ledger, PostgresUsageLedger)
    try:
        wait_for(lambda: "ancient" not in sessions(tables), "the prune at opening")
        assert sessions(tables) == ["edge", "stuck", "yesterday"]
    finally:
        run(stores.aclose())
    clock = FakeClock(NOW)
    ledger = PostgresUsageLedger(
        tables, spool_path=tmp_path / "two.sqlite3", clock=clock, retention=Retention(days=2), prune_every=0.2
    )
    try:
        time.sleep(0.5)  # a prune or two: nothing more is due
        assert sessions(tables) == ["edge", "stuck", "yesterday"]
        clock.now += HOUR  # "edge" is past two days now
        wait_for(lambda: "edge" not in sessions(tables), "the next prune")
        assert sessions(tables) == ["stuck", "yesterday"]
    finally:
        ledger.close()


def test_max_rows_keeps_the_newest_and_never_a_started_row_nor_one_a_budget_may_count(tables: str, tmp_path: Path):
    for index, (age, status) in enumerate(
        [(10 * DAY, "ok"), (9 * DAY, "started"), (8 * DAY, "ok"), (7 * DAY, "error"), (HOUR, "ok"), (HOUR, "ok")]
    ):
        add(tables, f"r{index}", age, status)
    add(tables, "r6", HOUR, "cancelled")
    ledger = PostgresUsageLedger(
        tables, spool_path=tmp_path / "spool.sqlite3", clock=FakeClock(NOW), retention=Retention(max_rows=3)
    )
    try:
        wait_for(lambda: len(sessions(tables)) == 4, "the prune at opening")
        assert sessions(tables) == ["r1", "r4", "r5", "r6"]  # the newest three, and the started one
    finally:
        ledger.close()


def test_two_replicas_pruning_at_once_delete_each_row_once_and_never_a_started_one(tables: str):
    import psycopg

    add_many(tables, 3000, 10 * DAY, "ok")
    add_many(tables, 50, 10 * DAY, "started")
    add_many(tables, 20, HOUR, "ok")

    async def both(retention: Retention) -> list[Pruned]:
        connections = [await psycopg.AsyncConnection.connect(tables, autocommit=True) for _ in range(2)]
        try:
            return list(
                await asyncio.gather(*(prune_postgres(conn, retention, now=NOW, chunk=100) for conn in connections))
            )
        finally:
            for conn in connections:
                await conn.close()

    # the newest 1,000 rows are the 50 started, the 20 recent and 930 old: 2,070 old ones go
    by_size = run(both(Retention(max_rows=1000)))
    assert sum(pruned.by_size for pruned in by_size) == 2070
    by_age = run(both(Retention(days=1)))
    assert sum(pruned.by_age for pruned in by_age) == 930
    left = query(tables, "SELECT status, count(*) FROM requests GROUP BY status ORDER BY status")
    assert left == [("ok", 20), ("started", 50)]
