"""The gateway's audit log over the PostgreSQL ledger, against a real PostgreSQL 15: a request's audit
record is written only once its ledger row is safe (committed in PostgreSQL, or in the local spool
while PostgreSQL cannot be used — ``PostgresUsageLedger.when_written``), an outage in the middle of a
request still ends with one row and one record, and a graceful stop loses neither."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.gateway import audit as audit_module
from gtl_nb.gateway.audit import AuditLog, AuditSettings, read_records
from gtl_nb.protocol.messages import CompletionRequest, Message

kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py
CONTEXT = RequestContext(principal="ann", tenant="acme")
NOT_WAITED_FOR = "written without their ledger rows committed"


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def requests_of(log_path: Path) -> list[tuple[str, str]]:
    """(session id, status) of each request record of the audit log, oldest first."""
    if not log_path.exists():
        return []
    return [(r["session_id"], r["status"]) for r in read_records(log_path) if r["kind"] == "request"]


def rows_of(url: str) -> list[tuple[str, str]]:
    return query(url, "SELECT session_id, status FROM requests ORDER BY id")


def recorded(audit: AuditLog, log_path: Path, expected: list[tuple[str, str]]) -> Callable[[], bool]:
    """Whether the audit log, flushed, holds the ``expected`` request records."""

    def check() -> bool:
        audit.flush()
        return requests_of(log_path) == expected

    return check


def until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def request(session_id: str) -> CompletionRequest:
    return CompletionRequest(session_id=session_id, model="echo", messages=[Message(role="user", content="hello")])


def answer(engine: Engine, session_id: str) -> None:
    async def run() -> None:
        async for _ in engine.stream(request(session_id), context=CONTEXT):
            pass

    asyncio.run(run())


def close(engine: Engine) -> None:
    async def run() -> None:
        await engine.aclose()

    asyncio.run(run())


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "ledger-spool.sqlite3"


def engine_on(ledger: PostgresUsageLedger) -> Engine:
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    return build_engine(settings, ledger=ledger)


def test_the_audit_record_waits_for_its_row_to_be_committed_in_postgresql(
    postgres_url: str, spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import psycopg

    monkeypatch.setattr(audit_module, "ROW_WAIT", 0.2)  # what flush waits for held records here
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, write_timeout=600.0)  # a lock is no outage
    engine = engine_on(ledger)
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)
    holder = psycopg.connect(postgres_url)
    try:
        answer(engine, "before")
        until(recorded(audit, log_path, [("before", "ok")]), "no first record")
        holder.execute("LOCK TABLE requests IN EXCLUSIVE MODE")  # the writer's next INSERT waits for it
        answer(engine, "locked")
        until(
            lambda: query(postgres_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0,
            "the ledger's write never reached the lock",
        )
        audit.flush()  # writes every record queued: the held one is not
        assert requests_of(log_path) == [("before", "ok")]
        assert rows_of(postgres_url) == [("before", "ok")]
        holder.commit()  # the row commits, then its record is let go
        seen: list[list[tuple[str, str]]] = []

        def written() -> bool:
            audit.flush()
            if requests_of(log_path) == [("before", "ok"), ("locked", "ok")]:
                seen.append(rows_of(postgres_url))  # read after the record: its row must be there
                return True
            return False

        until(written, "the record never followed its row")
        assert seen == [[("before", "ok"), ("locked", "ok")]]
    finally:
        holder.close()
        audit.close()
        close(engine)


def test_an_outage_in_the_middle_of_a_request_ends_with_one_row_and_one_record(
    postgres_server: Any, postgres_url: str, spool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, lease=6.0, renew=1.0, connect_timeout=2)
    engine = engine_on(ledger)
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)

    async def mid_request() -> None:
        stream = engine.stream(request("through"), context=CONTEXT)
        await stream.__anext__()  # the request runs: its row's start is queued
        await ledger.flush()  # and committed in PostgreSQL
        await asyncio.to_thread(postgres_server.stop, "fast")
        async for _ in stream:
            pass

    try:
        try:
            asyncio.run(mid_request())
            # the outcome cannot reach PostgreSQL: it is spooled, and its record goes once it is
            until(lambda: ledger.spooled > 0, "the outcome was never spooled")
            until(recorded(audit, log_path, [("through", "ok")]), "no record while away")
            assert ledger.degraded
        finally:
            postgres_server.restart()
        until(lambda: not ledger.degraded and ledger.spooled == 0, "the spool was never drained")
        assert rows_of(postgres_url) == [("through", "ok")]
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            audit.close()
        assert requests_of(log_path) == [("through", "ok")]
        assert NOT_WAITED_FOR not in caplog.text
    finally:
        audit.close()
        close(engine)
    assert rows_of(postgres_url) == [("through", "ok")]


def test_a_graceful_stop_loses_no_row_and_no_record(
    postgres_url: str, spool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    engine = engine_on(ledger)
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)
    names = [f"r{index}" for index in range(40)]

    async def many() -> None:
        async def one(name: str) -> None:
            async for _ in engine.stream(request(name), context=CONTEXT):
                pass

        await asyncio.gather(*(one(name) for name in names))

    try:
        asyncio.run(many())
    finally:
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            audit.close()  # as the gateway stops: the audit log first, then the engine and its ledger
            close(engine)
    assert sorted(requests_of(log_path)) == sorted((name, "ok") for name in names)
    assert sorted(rows_of(postgres_url)) == sorted((name, "ok") for name in names)
    assert NOT_WAITED_FOR not in caplog.text  # each record followed its row's commit, none was forced out


def test_records_of_rows_a_stuck_postgresql_leaves_to_the_spool_at_close_are_written(
    postgres_url: str, spool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """PostgreSQL answers but a lock holds the ledger's writes through its close: the close spools what
    the writer holds (its wait is bounded by ``wait_for``), and a spooled row is safe, so its record
    goes — not forced out by the audit log's own close. The row lands once PostgreSQL takes it, once."""
    import psycopg

    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, write_timeout=600.0, wait_for=1.0)
    engine = engine_on(ledger)
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)
    holder = psycopg.connect(postgres_url)
    try:
        answer(engine, "first")  # the table exists and the pool is warm
        until(recorded(audit, log_path, [("first", "ok")]), "no first record")
        holder.execute("LOCK TABLE requests IN EXCLUSIVE MODE")
        answer(engine, "stuck")
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            close(engine)  # the writer's wait ends after wait_for: what it holds goes to the spool
            until(recorded(audit, log_path, [("first", "ok"), ("stuck", "ok")]), "the record was never let go")
            audit.close()
        assert NOT_WAITED_FOR not in caplog.text
        assert query_spool(spool) > 0
    finally:
        holder.close()
        audit.close()
    # (the statement the writer gave up on may still commit once the lock goes: the spooled copy then
    # replays as nothing)
    drainer = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        until(lambda: not drainer.degraded and drainer.spooled == 0, "the spool was never drained")
    finally:
        drainer.close()
    assert rows_of(postgres_url) == [("first", "ok"), ("stuck", "ok")]


def query_spool(path: Path) -> int:
    """How many writes wait in the spool file at ``path``."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])
    finally:
        conn.close()
