"""Schema version 6 of the SQLite ledger: ``requests_tenant_time``, a partial index of a tenant's rows by
time, so a tenant's usage (a budget rebuilt from the ledger, a gateway usage query) reads that tenant's
rows and not the whole day's; a file of version 5 gains it with its rows intact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gtl_nb.engine import ledger_migrations
from gtl_nb.engine.ledger import Ledger, _where

T0 = 1_700_000_000.0


def _plan(path: Path, sql: str, params: list[object]) -> str:
    conn = sqlite3.connect(path)
    try:
        return " | ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        conn.close()


def _fill(ledger: Ledger, tenants: int, rows_each: int) -> None:
    for index in range(tenants * rows_each):
        tenant = f"tenant-{index % tenants}"
        row = ledger.start(session_id=f"s{index}", user=f"user-{index % 7}", tenant=tenant, now=T0 + index)
        ledger.finish(row, status="ok", tokens_in=10, tokens_out=5, cost=0.001, now=T0 + index + 0.5)
    for index in range(rows_each):  # an embedded client's rows: no tenant
        row = ledger.start(session_id=f"e{index}", now=T0 + index)
        ledger.finish(row, status="ok", tokens_in=1, now=T0 + index + 0.5)


def test_a_tenants_rows_of_a_span_are_read_through_the_tenant_index(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) >= 6
        _fill(ledger, tenants=20, rows_each=50)
        totals = ledger.totals(tenant="tenant-3", since=T0, until=T0 + 10_000)
        assert (totals.requests, totals.tokens) == (50, 750)
        assert [row["session_id"] for row in ledger.rows(tenant="tenant-3", since=T0 + 900)] == [
            f"s{index}" for index in range(903, 1000, 20)
        ]
    where, params = _where({"since": T0, "until": T0 + 10_000, "tenant": "tenant-3"})
    plan = _plan(path, f"SELECT COUNT(*) FROM requests{where}", params)
    assert "requests_tenant_time" in plan, plan


def test_rows_without_a_tenant_are_left_out_of_the_index(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        _fill(ledger, tenants=2, rows_each=5)
    conn = sqlite3.connect(path)
    try:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests_tenant_time'").fetchone()
        indexed = conn.execute(
            "SELECT COUNT(*) FROM requests INDEXED BY requests_tenant_time WHERE tenant IS NOT NULL"
        ).fetchone()
        every = conn.execute("SELECT COUNT(*) FROM requests").fetchone()
    finally:
        conn.close()
    assert "WHERE tenant IS NOT NULL" in sql
    assert (indexed, every) == ((10,), (15,))


def test_a_file_of_version_5_gains_the_index_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "v5.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        assert ledger_migrations.migrate(conn, ledger_migrations.MIGRATIONS[:5]) == (0, 5)
        conn.execute(
            "INSERT INTO requests (time, time_utc, session_id, user, status, tenant, tokens_in) "
            "VALUES (?, 'then', 'old', 'ada', 'ok', 'acme', 12)",
            (T0,),
        )
        conn.execute("COMMIT")
        old_columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(requests)"))
        before = conn.execute(f"SELECT {old_columns} FROM requests").fetchall()
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'requests_tenant_time'").fetchone() is None
    finally:
        conn.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) >= 6
        assert ledger.totals(tenant="acme").requests == 1
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(f"SELECT {old_columns} FROM requests").fetchall() == before  # (later versions append)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'requests_tenant_time'").fetchone()
    finally:
        conn.close()
