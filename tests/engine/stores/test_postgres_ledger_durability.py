"""When the PostgreSQL ledger calls ``when_written`` (what the gateway's audit log waits for), against a
real PostgreSQL 15: by default once a write is committed in PostgreSQL or, while PostgreSQL is away, in
the local spool; with ``[ledger] strict_durability = true`` only once PostgreSQL committed it — a
spooled write's callback waits for the drain."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from store_kit import run

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.settings import LedgerSettings, load_settings
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.engine.stores.postgres_pool import PostgresUnavailableError
from gtl_nb.protocol.errors import ConfigurationError

kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py
ADA = RequestContext(principal="ada", tenant="acme")


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "ledger-spool.sqlite3"


async def answered(ledger: PostgresUsageLedger, session_id: str) -> None:
    handle = await ledger.start(session_id=session_id, context=ADA, model="m")
    await ledger.finish(handle, status="ok", tokens_in=3)


@pytest.mark.parametrize("strict", [False, True], ids=["spool-counts", "strict"])
def test_a_row_written_while_postgresql_is_away_is_safe_in_the_spool_unless_strict(
    postgres_server: Any, postgres_url: str, spool: Path, strict: bool
):
    ledger = PostgresUsageLedger(
        postgres_url, spool_path=spool, lease=3.0, renew=1.0, connect_timeout=2, strict_durability=strict
    )
    called = threading.Event()
    spooled_when_called: list[int] = []

    def written() -> None:
        spooled_when_called.append(ledger.spooled)
        called.set()

    try:
        run(answered(ledger, "before"))
        run(ledger.flush())  # committed in PostgreSQL
        postgres_server.stop("fast")
        try:
            run(answered(ledger, "away"))
            ledger.when_written(written)
            until(lambda: ledger.spooled >= 1, "the row written while away was never spooled")
            # a call on the ledger's loop, after the step that spooled the row (and, by default, called back)
            with pytest.raises(PostgresUnavailableError):
                run(ledger.flush())
            if strict:
                assert not called.is_set()  # in the spool only: not safe enough
            else:
                until(called.is_set, "a spooled row was never said to be written")
                assert spooled_when_called[0] >= 1  # said while it was in the spool alone
        finally:
            postgres_server.restart()
        until(called.is_set, "the row was never said to be written once PostgreSQL had it")
        until(lambda: not ledger.degraded, "the spool was never drained")
        assert len(spooled_when_called) == 1  # called once
        if strict:
            assert spooled_when_called == [0]  # after the drain took it out of the spool
        assert query(postgres_url, "SELECT session_id, status FROM requests ORDER BY id") == [
            ("before", "ok"),
            ("away", "ok"),
        ]
    finally:
        ledger.close()


def test_strict_durability_calls_back_after_postgresqls_commit_when_all_is_well(postgres_url: str, spool: Path):
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, strict_durability=True)
    seen: list[list[tuple[Any, ...]]] = []
    called = threading.Event()

    def written() -> None:
        seen.append(query(postgres_url, "SELECT session_id, status FROM requests"))  # (a test may block here)
        called.set()

    try:
        run(answered(ledger, "one"))
        ledger.when_written(written)
        until(called.is_set, "never called back")
        assert seen == [[("one", "ok")]]
        run(ledger.flush())
        again: list[bool] = []
        ledger.when_written(lambda: again.append(True))  # nothing queued since: at once
        assert again == [True]
    finally:
        ledger.close()


def test_the_strict_durability_key_reaches_the_postgresql_ledger(postgres_url: str, spool: Path, tmp_path: Path):
    assert LedgerSettings.from_table({}).strict_durability is False  # the default is unchanged
    url = f"{postgres_url}?spool_path={quote(str(spool), safe='')}"
    for given, expected in ((None, False), (True, True), (False, False)):
        table = f'[ledger]\nurl = "{url}"\n' + ("" if given is None else f"strict_durability = {str(given).lower()}\n")
        config = tmp_path / f"gtl-{given}.toml"
        config.write_text(table + '[providers.echo]\ntype = "echo"\n')
        engine = build_engine(load_settings(config=config, environ={}))
        try:
            ledger = engine.stores.ledger
            assert isinstance(ledger, PostgresUsageLedger)
            assert ledger.strict_durability is expected
        finally:
            asyncio.run(engine.aclose())
    config = tmp_path / "bad.toml"
    config.write_text('[ledger]\nstrict_durability = "yes"\n')
    with pytest.raises(ConfigurationError, match="strict_durability"):
        load_settings(config=config, environ={})
