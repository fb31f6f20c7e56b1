"""The PostgreSQL usage ledger against a real PostgreSQL 15 (``tests/postgres_server.py``): the ledger
contract, the schema and its migrations, replicas writing at once, leases, and the spool when the
server is away."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import test_ledger_contract as contract
from store_kit import T0, FakeClock, lose_each_answer_once, run

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger_schema import COLUMN_NAMES
from gtl_nb.engine.stores import UsageLedger
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.engine.stores.postgres_pool import PostgresUnavailableError, parse_postgres_url, shown_url
from gtl_nb.engine.stores.postgres_schema import LEDGER_MIGRATIONS, OWN_COLUMNS, Migration, migrate, quoted
from gtl_nb.protocol.errors import ConfigurationError
from tests.ledger_wait import EXITS_MID_STREAM

REPO = Path(__file__).resolve().parents[3]
ADA = RequestContext(principal="ada", tenant="acme")


kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "ledger-spool.sqlite3"


@pytest.fixture
def ledger(postgres_url: str, clock: FakeClock, spool: Path) -> Iterator[PostgresUsageLedger]:
    """The PostgreSQL ledger as the contract tests' ``ledger``."""
    store = PostgresUsageLedger(postgres_url, clock=clock, spool_path=spool)
    yield store
    asyncio.run(store.aclose())


# -- the UsageLedger contract, rerun against PostgreSQL ------------------------------------------------

for _name, _test in vars(contract).items():
    if _name.startswith("test_") and "ledger" in inspect.signature(_test).parameters:
        globals()[_name] = _test


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Ask the database directly, as an administrator would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def execute(url: str, sql: str) -> None:
    """Run a statement that answers no rows (``ANALYZE``), as an administrator would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


# -- schema and migrations ---------------------------------------------------------------------------


def test_the_table_has_the_ledger_columns_and_replicas_migrate_once(postgres_url: str, spool: Path):
    def open_one() -> PostgresUsageLedger:
        return PostgresUsageLedger(postgres_url, spool_path=spool)

    async def two_at_once() -> list[PostgresUsageLedger]:  # both find an empty database
        return list(await asyncio.gather(asyncio.to_thread(open_one), asyncio.to_thread(open_one)))

    ledgers = run(two_at_once())
    try:
        columns = query(
            postgres_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'requests' ORDER BY ordinal_position",
        )
        # the columns of the SQLite ledger's version 3, its own, then those added since (ADD COLUMN appends)
        later = ["cache_write_tokens_in", "finish_reason", "usage_estimated"]
        assert list(COLUMN_NAMES[-len(later) :]) == later
        assert [name for name, _ in columns] == [*COLUMN_NAMES[: -len(later)], *OWN_COLUMNS, *later]
        types = dict(columns)
        assert (types["time"], types["tokens_in"], types["cache_hit"], types["failover_path"]) == (
            "double precision",
            "bigint",
            "boolean",
            "jsonb",
        )
        assert types["cache_write_tokens_in"] == types["cached_tokens_in"] == "bigint"
        assert types["finish_reason"] == types["error_code"] == "text"
        assert types["usage_estimated"] == types["cache_hit"] == "boolean"
        assert query(postgres_url, "SELECT component, version FROM gtl_schema_version") == [
            ("ledger", len(LEDGER_MIGRATIONS))
        ]
        assert len(LEDGER_MIGRATIONS) == 6
        assert not ledgers[0].degraded and ledgers[0].degraded_reason is None
        assert ledgers[0].replica != ledgers[1].replica
    finally:
        for ledger in ledgers:
            ledger.close()
    reopened = open_one()  # a migrated database: nothing to do
    reopened.close()
    assert query(postgres_url, "SELECT version FROM gtl_schema_version") == [(len(LEDGER_MIGRATIONS),)]


async def _migrated(url: str, migrations: tuple[Migration, ...]) -> tuple[int, int]:
    """Apply ``migrations`` as a replica of an earlier release would have."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await migrate(conn, "ledger", migrations)


def test_a_database_of_the_previous_version_gains_the_cache_write_column_and_keeps_its_rows(
    postgres_url: str, spool: Path
):
    assert run(_migrated(postgres_url, LEDGER_MIGRATIONS[:2])) == (0, 2)  # as the release before left it
    old_columns = [
        name
        for (name,) in query(
            postgres_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'requests' ORDER BY ordinal_position",
        )
    ]
    assert "cache_write_tokens_in" not in old_columns and "cached_tokens_in" in old_columns
    query(
        postgres_url,
        'INSERT INTO requests (time, time_utc, end_time, session_id, "user", model, status, tokens_in, tokens_out, '
        "cached_tokens_in, cost, latency_ms, replica, replica_seq) VALUES "
        "(%s, 'then', %s, 'old', 'ada', 'claude', 'ok', 900, 40, 600, 0.5, 1000.0, 'gone', 1) RETURNING id",
        T0,
        T0 + 1,
    )
    before = query(postgres_url, "SELECT * FROM requests")
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        assert query(postgres_url, "SELECT version FROM gtl_schema_version WHERE component = 'ledger'") == [
            (len(LEDGER_MIGRATIONS),)
        ]

        async def scenario() -> list[dict[str, Any]]:
            handle = await ledger.start(session_id="new", context=ADA, model="claude", now=T0 + 5)
            await ledger.finish(handle, status="ok", tokens_in=800, cached_tokens_in=100, cache_write_tokens_in=650)
            return await ledger.rows()

        rows = run(scenario())
    finally:
        ledger.close()
    assert [(row["session_id"], row["cached_tokens_in"], row["cache_write_tokens_in"]) for row in rows] == [
        ("old", 600, None),  # not reported by the release that wrote it: NULL, never 0
        ("new", 100, 650),
    ]
    assert (
        query(postgres_url, f"SELECT {', '.join(map(quoted, old_columns))} FROM requests WHERE session_id = 'old'")
        == before
    )


def test_a_database_of_ledger_version_3_gains_the_finish_reason_column_and_keeps_its_rows(
    postgres_url: str, spool: Path
):
    assert run(_migrated(postgres_url, LEDGER_MIGRATIONS[:3])) == (0, 3)  # as the release before left it
    old_columns = [
        name
        for (name,) in query(
            postgres_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'requests' ORDER BY ordinal_position",
        )
    ]
    assert "finish_reason" not in old_columns and old_columns[-1] == "cache_write_tokens_in"
    query(
        postgres_url,
        'INSERT INTO requests (time, time_utc, end_time, session_id, "user", model, status, tokens_in, '
        "cache_write_tokens_in, replica, replica_seq) VALUES "
        "(%s, 'then', %s, 'old', 'ada', 'claude', 'ok', 900, 7, 'gone', 1) RETURNING id",
        T0,
        T0 + 1,
    )
    before = query(postgres_url, f"SELECT {', '.join(map(quoted, old_columns))} FROM requests")
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        assert query(postgres_url, "SELECT version FROM gtl_schema_version WHERE component = 'ledger'") == [
            (len(LEDGER_MIGRATIONS),)
        ]

        async def scenario() -> list[dict[str, Any]]:
            cut = await ledger.start(session_id="cut", context=ADA, model="claude", now=T0 + 5)
            await ledger.finish(cut, status="ok", finish_reason="length", tokens_out=16, now=T0 + 6)
            failed = await ledger.start(session_id="failed", context=ADA, model="claude", now=T0 + 7)
            await ledger.finish(failed, status="error", error_code="OVERLOADED", now=T0 + 8)
            return await ledger.rows()

        rows = run(scenario())
    finally:
        ledger.close()
    assert [(row["session_id"], row["status"], row["finish_reason"]) for row in rows] == [
        ("old", "ok", None),  # not recorded by the release that wrote it
        ("cut", "ok", "length"),
        ("failed", "error", None),
    ]
    assert query(postgres_url, f"SELECT {', '.join(map(quoted, old_columns))} FROM requests WHERE id = 1") == before


def test_the_finish_reasons_of_many_rows_in_one_batch_land_in_their_rows(ledger: PostgresUsageLedger):
    """One transaction of many: new rows finished at once (the multi-row INSERT) and outcomes of rows
    written started (the UPDATE from a VALUES list), each with a reason of its own or none."""
    reasons = ["stop", "length", "tool_calls", "content_filter", "other", None]

    async def scenario() -> list[dict[str, Any]]:
        handles = [await ledger.start(session_id=f"s{n}", context=ADA, model="m", now=T0 + n) for n in range(24)]
        await ledger.flush()  # the starts are written: the outcomes below are one UPDATE of many
        for n, handle in enumerate(handles[:12]):
            reason = reasons[n % len(reasons)]
            status = "ok" if reason is not None else "error"
            await ledger.finish(handle, status=status, finish_reason=reason, now=T0 + 30 + n)
        together = []
        for n in range(24, 36):  # started and finished before a write: inserted finished
            handle = await ledger.start(session_id=f"s{n}", context=ADA, model="m", now=T0 + n)
            together.append(handle)
            await ledger.finish(handle, status="ok", finish_reason=reasons[n % len(reasons)], now=T0 + 40 + n)
        return await ledger.rows()

    rows = run(scenario())
    by_session = {row["session_id"]: row["finish_reason"] for row in rows}
    for n in range(36):
        expected = None if 12 <= n < 24 else reasons[n % len(reasons)]  # 12–23: still started
        assert by_session[f"s{n}"] == expected, n


def test_text_postgresql_cannot_store_is_written_escaped_rather_than_lost(ledger: PostgresUsageLedger):
    async def scenario() -> dict[str, Any]:
        handle = await ledger.start(session_id="nul\x00here", context=ADA, model="bad\udc80model")
        await ledger.finish(handle, status="error", error_code="X\x00", failover_path=["a\udc80"])
        return await contract.only_row(ledger)

    row = run(scenario())
    assert (row["session_id"], row["model"], row["error_code"]) == ("nul\ufffdhere", "bad\\udc80model", "X\ufffd")
    assert row["failover_path"] == ["a\\udc80"] and row["status"] == "error"


def test_values_are_written_as_given_whatever_they_hold(ledger: PostgresUsageLedger):
    """A batch is one query with its values written in as literals: quotes, percent signs, backslashes,
    semicolons and odd floats must come back exactly."""
    odd = "it's %s %% 50% \\ back; DROP TABLE requests; --"

    async def scenario() -> list[dict[str, Any]]:
        first = await ledger.start(session_id=odd, context=RequestContext(principal=odd, tenant="t'"), model=odd)
        second = await ledger.start(session_id="two", context=ADA, model=None, now=T0 + 0.1)
        await ledger.flush()  # the starts are written: the outcomes are one UPDATE of both
        await ledger.finish(first, status="ok", tokens_in=2**40, cost=1e-300, ttft_ms=0.1 + 0.2, failover_path=[odd])
        await ledger.finish(second, status="error", error_code=odd, latency_ms=-0.0)
        return await ledger.rows()

    first, second = run(scenario())
    assert (first["session_id"], first["user"], first["tenant"], first["model"]) == (odd, odd, "t'", odd)
    assert (first["tokens_in"], first["cost"], first["ttft_ms"], first["failover_path"]) == (
        2**40,
        1e-300,
        0.1 + 0.2,
        [odd],
    )
    assert (second["status"], second["error_code"], second["model"], second["latency_ms"]) == ("error", odd, None, 0.0)
    assert second["time"] == T0 + 0.1


def test_a_late_outcome_replaces_the_interrupted_guess_of_a_lease(ledger: PostgresUsageLedger, postgres_url: str):
    async def scenario() -> dict[str, Any]:
        handle = await ledger.start(session_id="s", context=ADA, model="m", now=T0)
        await ledger.flush()
        # what another replica does when this one's lease ran out (a partition longer than the lease)
        query(postgres_url, "UPDATE requests SET status = 'interrupted', end_time = 1, recovered = true RETURNING id")
        await ledger.finish(handle, status="ok", tokens_in=5, now=T0 + 1)
        return await contract.only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["tokens_in"], row["end_time"]) == ("ok", 5, T0 + 1)


def test_to_dataframe_and_spend_today_read_what_was_queued(ledger: PostgresUsageLedger):
    async def scenario() -> float:
        handle = await ledger.start(session_id="s", context=ADA, model="m", now=T0)
        await ledger.finish(handle, status="ok", cost=0.5, failover_path=["a"], now=T0 + 1)
        return await ledger.spend_today("ada", now=T0)

    assert run(scenario()) == 0.5
    frame = ledger.to_dataframe(user="ada")  # from a thread without a loop, right after the writes
    assert list(frame["session_id"]) == ["s"] and frame.loc[0, "failover_path"] == ["a"]
    assert str(frame["end_time"].dtype) == "datetime64[ns, UTC]"


def test_a_busy_writer_is_not_woken_per_write_yet_reads_and_close_see_every_write(postgres_url: str, spool: Path):
    """Lingering, as the SQLite writer: after a commit, writes for the next IDLE_AFTER seconds wake nothing
    (the writer looks every LINGER); a read still sees all of them, and close writes the rest."""
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    wakes: list[object] = []
    wake = ledger._loop.wake
    ledger._loop.wake = lambda callback: (wakes.append(callback), wake(callback))[1]  # type: ignore[method-assign]

    async def some(count: int, status: str) -> None:
        for index in range(count):
            handle = await ledger.start(session_id=f"{status}-{index}", context=ADA, model="m")
            await ledger.finish(handle, status=status)

    async def scenario() -> tuple[int, int, list[dict[str, Any]]]:
        await some(1, "ok")
        first = len(wakes)  # an idle writer is woken
        await ledger.flush()  # a commit: busy from now on
        await some(20, "ok")
        rows = await ledger.rows()  # read-your-writes: the reader wakes the writer
        await some(5, "error")
        return first, len(wakes), rows

    try:
        first, later, rows = run(scenario())
    finally:
        ledger.close()  # writes the 5 still queued
    assert first >= 1 and later == first
    assert len(rows) == 21 and {row["status"] for row in rows} == {"ok"}
    found = query(postgres_url, "SELECT status, count(*) FROM requests GROUP BY status ORDER BY status")
    assert found == [("error", 5), ("ok", 21)]


# -- replicas ----------------------------------------------------------------------------------------


def test_two_replicas_writing_at_once_lose_no_row(postgres_url: str, tmp_path: Path):
    one = PostgresUsageLedger(postgres_url, spool_path=tmp_path / "one.sqlite3", replica="one")
    two = PostgresUsageLedger(postgres_url, spool_path=tmp_path / "two.sqlite3", replica="two")
    per_replica = 300

    async def request(store: UsageLedger, index: int) -> None:
        handle = await store.start(session_id=f"{index}", context=RequestContext(principal=f"u{index % 7}"), model="m")
        await asyncio.sleep(0)  # the upstream call: others start meanwhile
        await store.finish(handle, status="ok" if index % 3 else "error", tokens_in=index, tokens_out=1)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
        await asyncio.gather(*(request(one if i % 2 else two, i) for i in range(2 * per_replica)))
        await two.flush()
        return await one.rows(), await two.rows(status="ok"), await one.totals()

    try:
        rows, ok_rows, totals = run(scenario())
    finally:
        one.close()
        two.close()
    assert sorted(int(row["session_id"]) for row in rows) == list(range(2 * per_replica))  # each once
    assert {row["status"] for row in rows} == {"ok", "error"}
    assert all(row["tokens_in"] == int(row["session_id"]) and row["end_time"] is not None for row in rows)
    assert len(ok_rows) == sum(1 for i in range(2 * per_replica) if i % 3)
    assert tuple(totals)[:2] == (2 * per_replica, sum(range(2 * per_replica)) + 2 * per_replica)
    assert len({row["id"] for row in rows}) == 2 * per_replica
    by_replica = query(postgres_url, "SELECT split_part(replica, ':', 1), count(*) FROM requests GROUP BY 1 ORDER BY 1")
    assert by_replica == [("one", per_replica), ("two", per_replica)]


_DYING_REPLICA = textwrap.dedent(
    """
    import asyncio, sys, time
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger

    ledger = PostgresUsageLedger(sys.argv[1], spool_path=sys.argv[2], replica="dying", lease=4.0, renew=0.4)

    async def main():
        context = RequestContext(principal="ada")
        for name in ("in flight 1", "in flight 2", "done"):
            handle = await ledger.start(session_id=name, context=context, model="m")
        await ledger.finish(handle, status="ok", tokens_in=1)
        await ledger.flush()

    asyncio.run(main())
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_the_rows_of_a_replica_whose_lease_ran_out_are_interrupted_once(postgres_url: str, tmp_path: Path):
    dying = subprocess.Popen(
        [sys.executable, "-c", _DYING_REPLICA, postgres_url, str(tmp_path / "dying.sqlite3")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    # long leases and rare renewals: only the explicit recover() calls below judge
    judges = []
    try:
        assert dying.stdout is not None and dying.stdout.readline().strip() == "ready"
        for name in ("judge-a", "judge-b"):
            judges.append(
                PostgresUsageLedger(
                    postgres_url, spool_path=tmp_path / f"{name}.sqlite3", replica=name, lease=120, renew=60
                )
            )
        assert run(judges[0].recover()) == 0  # the lease is still good: its rows are left alone
        dying.send_signal(signal.SIGKILL)  # no goodbye: the lease is never given back
        dying.wait(timeout=30)
        deadline = time.monotonic() + 60
        expired = "SELECT count(*) FROM ledger_leases WHERE replica LIKE 'dying:%%' AND lease_until < clock_timestamp()"
        while query(postgres_url, expired) != [(1,)]:
            assert time.monotonic() < deadline, "the dying replica's lease never ran out"
            time.sleep(0.2)

        async def both() -> list[int]:
            return list(await asyncio.gather(judges[0].recover(), judges[1].recover()))

        counts = run(both())
        rows = run(judges[1].rows())
        handed = [[], []]
        for judge, batches in zip(judges, handed, strict=True):
            judge.interrupted.follow(batches.append)
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait()
        for judge in judges:
            judge.close()
    assert sorted(counts) == [0, 2]  # one UPDATE each, every row marked once
    assert {row["session_id"]: row["status"] for row in rows} == {
        "in flight 1": "interrupted",
        "in flight 2": "interrupted",
        "done": "ok",
    }
    assert all(row["end_time"] is not None for row in rows)
    # the judge whose UPDATE marked the rows hands them over, for its gateway's audit log; the other none
    marked = handed[counts.index(2)]
    assert handed[counts.index(0)] == [] and len(marked) == 1
    assert sorted(row["session_id"] for row in marked[0]) == ["in flight 1", "in flight 2"]
    assert {(row["user"], row["model"]) for row in marked[0]} == {("ada", "m")}
    assert all(row["end_time"] >= row["time"] for row in marked[0])


def test_a_clean_close_gives_the_lease_back_and_interrupts_what_it_never_finished(postgres_url: str, spool: Path):
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    run(ledger.start(session_id="never finished", context=ADA, model="m"))
    run(ledger.aclose())
    assert query(postgres_url, "SELECT status FROM requests") == [("interrupted",)]
    assert query(postgres_url, "SELECT count(*) FROM ledger_leases") == [(0,)]


def _lease(url: str, replica: str, seconds: float, *started: str) -> None:
    """A replica's lease ending ``seconds`` from now (negative: ran out that long ago), with a started
    row per name in ``started`` and one finished row — what a replica leaves when it is killed."""
    query(
        url,
        "INSERT INTO ledger_leases (replica, lease_until) "
        "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) RETURNING replica",
        replica,
        seconds,
    )
    for seq, (session, status) in enumerate([("finished", "ok"), *((name, "started") for name in started)], 1):
        query(
            url,
            "INSERT INTO requests (time, time_utc, session_id, status, replica, replica_seq) "
            "VALUES (%s, 'then', %s, %s, %s, %s) RETURNING id",
            T0,
            f"{replica} {session}",
            status,
            replica,
            seq,
        )


def test_leases_of_replicas_long_gone_are_forgotten_once_their_rows_are_judged(postgres_url: str, spool: Path):
    first = PostgresUsageLedger(postgres_url, spool_path=spool)  # the tables
    first.close()
    _lease(postgres_url, "killed:1:a", -2 * 3600, "in flight")  # killed two hours ago, a row still started
    _lease(postgres_url, "killed:2:b", -3 * 3600)
    _lease(postgres_url, "killed lately:3:c", -5)  # ran out just now: kept a while
    lately = time.monotonic() - 5
    _lease(postgres_url, "alive:4:d", 3600, "running")
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool.with_name("two.sqlite3"), lease=2.0, renew=0.2)
    try:
        leases = {replica for (replica,) in query(postgres_url, "SELECT replica FROM ledger_leases")}
        assert leases == {"killed lately:3:c", "alive:4:d", ledger.replica}
        statuses = dict(query(postgres_url, "SELECT session_id, status FROM requests WHERE status <> 'ok'"))
        # the dead replica's row was judged before its lease went; the live one's is left alone
        assert statuses == {"killed:1:a in flight": "interrupted", "alive:4:d running": "started"}
        query(postgres_url, "DELETE FROM ledger_leases WHERE replica = %s RETURNING 1", ledger.replica)  # a sweep did
        deadline = time.monotonic() + 30  # a replica whose lease was forgotten takes a new one
        while query(postgres_url, "SELECT count(*) FROM ledger_leases WHERE replica = %s", ledger.replica) != [(1,)]:
            assert time.monotonic() < deadline, "the lease was never taken again"
            time.sleep(0.05)
    finally:
        ledger.close()
    keeper = PostgresUsageLedger(
        postgres_url, spool_path=spool.with_name("three.sqlite3"), lease=2.0, renew=0.2, forget_after=8.0
    )
    gone = "SELECT count(*) FROM ledger_leases WHERE replica = 'killed lately:3:c'"
    try:  # not when it opened (its lease ran out less than 8 s before); by its renewals, once it did
        if time.monotonic() - lately < 7:
            assert query(postgres_url, gone) == [(1,)]
        deadline = time.monotonic() + 60
        while query(postgres_url, gone) != [(0,)]:
            assert time.monotonic() < deadline, "the lease was never forgotten"
            time.sleep(0.1)
        assert time.monotonic() - lately >= 8
        assert query(postgres_url, "SELECT count(*) FROM ledger_leases WHERE replica = 'alive:4:d'") == [(1,)]
    finally:
        keeper.close()


def test_an_application_name_in_the_url_names_the_connections(postgres_url: str, spool: Path):
    """libpq's options pass through: the URL's application_name is what pg_stat_activity shows; without
    one, the ledger names its connections after its replica."""
    named = PostgresUsageLedger(f"{postgres_url}?application_name=gtl-gateway", spool_path=spool)
    unnamed = PostgresUsageLedger(postgres_url, spool_path=spool.with_name("unnamed.sqlite3"))
    try:
        names = {
            name
            for (name,) in query(
                postgres_url,
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()",
            )
        }
    finally:
        named.close()
        unnamed.close()
    assert names == {"gtl-gateway", f"gtl_nb ledger {unnamed.replica}"[:63]}


def test_a_url_without_a_host_of_its_own_reaches_the_server_through_its_socket(
    postgres_server: Any, postgres_url: str, spool: Path
):
    """libpq's ``postgresql:///database?host=/socket/folder``: an empty authority, the Unix socket's folder
    as an option. Its ``//`` was dropped when the URL was put back together, and every such URL refused."""
    database = urlsplit(postgres_url).path
    url = f"postgresql://{database}?host={postgres_server.folder}&port={postgres_server.port}&user=postgres"
    assert parse_postgres_url(url).conninfo.startswith(f"postgresql://{database}?host=")
    store = PostgresUsageLedger(url, spool_path=spool)
    try:

        async def one_row() -> list[dict[str, Any]]:
            row = await store.start(session_id="through-the-socket", context=ADA, model="m")
            await store.finish(row, status="ok")
            return await store.rows()

        rows = asyncio.run(one_row())
    finally:
        store.close()
    assert [(row["session_id"], row["status"]) for row in rows] == [("through-the-socket", "ok")]
    assert shown_url(url) == url  # shown as given (it holds no password)


# -- connections the server closed while they sat in the pool -------------------------------------------


def terminate_others(url: str) -> int:
    """``pg_terminate_backend`` every other connection to the test's database (the ledger's, the
    audit's) — what a restart, a failover or a proxy's idle kill does to a pool; how many."""
    ended = query(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()",
    )
    return len(ended)


@pytest.mark.parametrize("first", ["write", "read", "lease renewal"])
def test_pooled_connections_the_server_closed_are_replaced_not_taken_for_an_outage(
    postgres_url: str, spool: Path, caplog: pytest.LogCaptureFixture, first: str
):
    """The pool's idle connections all closed by the server (which is up): the first use of each fails
    once — a write, a read, the lease keeper's renewal — and is done again on a new connection. No
    outage is logged, nothing goes to the spool, the ledger never says it is degraded, and every row
    is there exactly once. (Before: a WARNING outage, ``degraded``, and the rows detoured via the spool.)"""
    caplog.set_level(logging.INFO)
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, lease=3.0, renew=0.5)
    degraded: list[bool] = []

    async def one(name: str) -> None:
        handle = await ledger.start(session_id=name, context=ADA, model="m")
        await ledger.finish(handle, status="ok", tokens_in=1)

    async def scenario() -> list[dict[str, Any]]:
        await one("before")
        await ledger.flush()
        assert terminate_others(postgres_url) >= 1
        if first == "write":
            await one("after")
            await ledger.flush()  # refused (unavailable) if the rows had gone to the spool
        elif first == "read":
            assert [row["session_id"] for row in await ledger.rows()] == ["before"]
            await one("after")
        else:
            deadline = time.monotonic() + 2.0  # four renewals, no traffic
            while time.monotonic() < deadline:
                degraded.append(ledger.degraded)
                await asyncio.sleep(0.02)
            await one("after")
        degraded.append(ledger.degraded)
        return await ledger.rows()

    try:
        rows = run(scenario())
        spooled = ledger.spooled
    finally:
        ledger.close()
    assert [(row["session_id"], row["status"]) for row in rows] == [("before", "ok"), ("after", "ok")]
    assert spooled == 0 and not any(degraded)
    warned = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warned == []
    retried = [record.getMessage() for record in caplog.records if "done on a new one" in record.getMessage()]
    assert retried and "terminating connection due to administrator command" in retried[0]


def test_a_batch_retried_after_its_commit_reached_the_server_doubles_nothing(
    postgres_url: str, spool: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """Each batch is committed, its connection lost before the answer, and the batch run again on a
    new connection: every row is there once with its outcome, and no outcome is said to be missed."""
    caplog.set_level(logging.WARNING)
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, lease=30.0, renew=10.0)
    lost = lose_each_answer_once(ledger._connections, monkeypatch)

    async def scenario() -> list[dict[str, Any]]:
        started = await ledger.start(session_id="started-then-finished", context=ADA, model="m")
        await ledger.flush()  # an INSERT of a started row, run twice
        await ledger.finish(started, status="ok", tokens_in=7)
        finished = await ledger.start(session_id="finished-at-once", context=ADA, model="m")
        await ledger.finish(finished, status="error", error_code="X")
        await ledger.flush()  # an UPDATE and an INSERT of a finished row, run twice
        return await ledger.rows()

    try:
        rows = run(scenario())
        spooled = ledger.spooled
    finally:
        ledger.close()
    assert len(lost) >= 3 and spooled == 0
    assert [(row["session_id"], row["status"], row["tokens_in"]) for row in rows] == [
        ("started-then-finished", "ok", 7),
        ("finished-at-once", "error", None),
    ]
    assert query(postgres_url, "SELECT count(*) FROM requests") == [(2,)]
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


# -- PostgreSQL away: the spool ------------------------------------------------------------------------


def _unreachable_url(postgres_url: str) -> str:
    """The same database on a port nothing listens on, with a password that must never be shown."""
    parts = urlsplit(postgres_url)
    return urlunsplit(parts._replace(netloc=f"postgres:s3cret@127.0.0.1:{kit.free_port()}"))


def test_an_unreachable_server_spools_and_another_process_drains_the_spool_once(postgres_url: str, spool: Path):
    away = PostgresUsageLedger(_unreachable_url(postgres_url), spool_path=spool, connect_timeout=2)
    assert away.degraded
    reason = away.degraded_reason or ""
    assert "cannot be used" in reason and str(spool) in reason and "s3cret" not in reason

    async def while_away() -> None:
        done = await away.start(session_id="done", context=ADA, model="m", now=T0)
        await away.start(session_id="in flight", context=ADA, model="m", now=T0)
        await away.finish(done, status="ok", cost=0.25, now=T0 + 1)
        with pytest.raises(PostgresUnavailableError, match="cannot be read"):
            await away.rows()

    run(while_away())
    deadline = time.monotonic() + 10  # the writer spools its queue on its next look (it lingers `group_commit`, 20 ms)
    while away.spooled < 2:
        assert time.monotonic() < deadline, f"only {away.spooled} write(s) reached the spool"
        time.sleep(0.01)
    away.close()  # its writes stay in the spool
    copy = spool.with_name("copy.sqlite3")
    shutil.copy(spool, copy)  # the spool as it was before any drain: replayed below

    def drain_with(path: Path) -> list[dict[str, Any]]:
        ledger = PostgresUsageLedger(postgres_url, spool_path=path, lease=1.0, renew=0.5)
        try:
            deadline = time.monotonic() + 60
            while ledger.degraded:
                assert time.monotonic() < deadline, ledger.degraded_reason
                time.sleep(0.05)
            assert ledger.spooled == 0
            return run(ledger.rows())
        finally:
            ledger.close()

    rows = drain_with(spool)
    assert [(row["session_id"], row["cost"]) for row in rows] == [("done", 0.25), ("in flight", None)]
    assert rows[0]["status"] == "ok" and rows[1]["status"] in ("started", "interrupted")  # judged when its lease ends
    replayed = drain_with(copy)  # as after a crash between PostgreSQL's COMMIT and the spool's DELETE
    assert [row["id"] for row in replayed] == [row["id"] for row in rows]  # nothing doubled
    # the drainer gave the away replica a lease; once it ran out, its unfinished row was judged
    judge = PostgresUsageLedger(postgres_url, spool_path=spool.with_name("judge.sqlite3"))
    try:
        deadline = time.monotonic() + 60
        while query(postgres_url, "SELECT status FROM requests WHERE session_id = 'in flight'") != [("interrupted",)]:
            assert time.monotonic() < deadline, "the away replica's row was never judged"
            run(judge.recover())
            time.sleep(0.1)
    finally:
        judge.close()


def test_a_wrong_password_is_named_once_and_the_pool_does_not_flood_the_log(
    postgres_server: Any, postgres_url: str, spool: Path, caplog: pytest.LogCaptureFixture
):
    """The warning and /readyz's reason say why PostgreSQL refuses (not the pool's "couldn't get a
    connection after … sec"); psycopg_pool's own line per failed attempt stays out of the log; the
    password is never shown."""
    postgres_server.password_role("gtl_pw", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_pw:canary-WRONG-pw@127.0.0.1:{parts.port}"))
    caplog.set_level(logging.WARNING)
    ledger = PostgresUsageLedger(url, spool_path=spool, connect_timeout=1, lease=2.0, renew=0.5)
    try:
        time.sleep(4)  # the pool tries again and again meanwhile; the keeper probes
        reason = ledger.degraded_reason or ""
    finally:
        ledger.close()
    assert 'password authentication failed for user "gtl_pw"' in reason and "canary-WRONG-pw" not in reason
    warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
    ours = [record.getMessage() for record in warned if record.name.startswith("gtl_nb")]
    assert len([message for message in ours if "cannot be used" in message]) == 1
    assert "password authentication failed" in ours[0]
    assert [record.getMessage() for record in warned if record.name.startswith("psycopg")] == []
    assert all("canary-WRONG-pw" not in record.getMessage() for record in caplog.records)


def test_writes_an_older_release_spooled_without_the_cache_write_count_are_drained_not_lost(
    postgres_url: str, spool: Path
):
    away = PostgresUsageLedger(_unreachable_url(postgres_url), spool_path=spool, connect_timeout=2)

    async def while_away() -> None:
        for session, writes in (("older", 11), ("newer", 22)):
            handle = await away.start(session_id=session, context=ADA, model="m", now=T0)
            await away.finish(handle, status="ok", cached_tokens_in=5, cache_write_tokens_in=writes, now=T0 + 1)
        running = await away.start(session_id="older running", context=ADA, model="m", now=T0)
        await away.finish(running, status="ok", cache_write_tokens_in=33, now=T0 + 2)

    run(while_away())
    away.close()  # every write is in the spool
    assert _as_an_older_release_spooled(spool, ("cache_write_tokens_in",)) >= 2
    rows = _drained(postgres_url, spool)
    assert [
        (row["session_id"], row["status"], row["cached_tokens_in"], row["cache_write_tokens_in"]) for row in rows
    ] == [
        ("older", "ok", 5, None),  # the older writer knew no such count: unknown
        ("newer", "ok", 5, 22),
        ("older running", "ok", None, None),
    ]


def _as_an_older_release_spooled(spool: Path, columns: tuple[str, ...]) -> int:
    """Rewrite the spooled entries of the "older…" sessions (whatever their kind: start, finished, finish)
    as a release before ``columns`` wrote them: without those keys. How many entries were rewritten."""
    import sqlite3

    conn = sqlite3.connect(spool, isolation_level=None)
    try:
        entries = conn.execute("SELECT n, params FROM spool").fetchall()
        seqs = {
            json.loads(params)["replica_seq"]
            for _, params in entries
            if json.loads(params).get("session_id", "").startswith("older")
        }
        stripped = 0
        for n, params in entries:
            values = json.loads(params)
            if values["replica_seq"] in seqs:
                assert values.pop(columns[0], None) is not None or "session_id" in values
                for column in columns[1:]:
                    values.pop(column, None)
                conn.execute("UPDATE spool SET params = ? WHERE n = ?", (json.dumps(values), n))
                stripped += 1
    finally:
        conn.close()
    assert len(seqs) == 2
    return stripped


def _drained(postgres_url: str, spool: Path) -> list[dict[str, Any]]:
    """The rows once a ledger on ``spool`` has drained it into PostgreSQL."""
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        deadline = time.monotonic() + 60
        while ledger.degraded or ledger.spooled:
            assert time.monotonic() < deadline, ledger.degraded_reason
            time.sleep(0.05)
        return run(ledger.rows())
    finally:
        ledger.close()


def test_writes_an_older_release_spooled_without_the_finish_reason_are_drained_with_null(
    postgres_url: str, spool: Path
):
    away = PostgresUsageLedger(_unreachable_url(postgres_url), spool_path=spool, connect_timeout=2)

    async def while_away() -> None:
        for session in ("older", "newer"):
            handle = await away.start(session_id=session, context=ADA, model="m", now=T0)
            await away.finish(handle, status="ok", finish_reason="length", now=T0 + 1)
        running = await away.start(session_id="older running", context=ADA, model="m", now=T0)
        await away.finish(running, status="ok", finish_reason="stop", now=T0 + 2)

    run(while_away())
    away.close()  # every write is in the spool
    # (the release before finish_reason may be older still: no cache writes' count either)
    assert _as_an_older_release_spooled(spool, ("finish_reason", "cache_write_tokens_in")) >= 2
    rows = _drained(postgres_url, spool)
    assert sorted((row["session_id"], row["status"], row["finish_reason"]) for row in rows) == [
        ("newer", "ok", "length"),
        ("older", "ok", None),  # the older writer knew no finish reason: unknown
        ("older running", "ok", None),
    ]


def test_postgresql_stopped_and_restarted_under_load_loses_and_doubles_nothing(
    postgres_server: Any, postgres_url: str, spool: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool, lease=3.0, renew=1.0, connect_timeout=2)
    finished: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        index = 0
        while not stop.is_set():
            handle = await ledger.start(session_id=f"r{index}", context=ADA, model="m")
            await asyncio.sleep(0.002)
            await ledger.finish(handle, status="ok", tokens_in=index)
            finished.append(f"r{index}")
            index += 1

    async def scenario() -> tuple[bool, str, int]:
        writer = asyncio.ensure_future(load())
        while len(finished) < 100:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(postgres_server.stop, "fast")
        try:
            before = len(finished)
            deadline = time.monotonic() + 60
            while not (ledger.degraded and len(finished) > before + 100 and ledger.spooled > 0):
                assert time.monotonic() < deadline, "the ledger never noticed the server had gone"
                await asyncio.sleep(0.05)
            seen = (ledger.degraded, ledger.degraded_reason or "", ledger.spooled)
        finally:
            await asyncio.to_thread(postgres_server.restart)
        after = len(finished)
        while len(finished) < after + 100:
            await asyncio.sleep(0.01)
        stop.set()
        await writer
        deadline = time.monotonic() + 60
        while ledger.degraded:
            assert time.monotonic() < deadline, ledger.degraded_reason
            await asyncio.sleep(0.05)
        return seen

    try:
        degraded, reason, spooled = run(scenario())
        rows = run(ledger.rows())
    finally:
        ledger.close()
    assert degraded and "cannot be used" in reason and spooled > 0
    assert [row["session_id"] for row in rows] == finished  # every row once, in order
    assert {row["status"] for row in rows} == {"ok"}
    assert all(row["tokens_in"] == int(row["session_id"][1:]) for row in rows)
    # the ledger names the outage itself; psycopg_pool's line per pooled connection the stop closed stays out
    warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warned if record.name.startswith("psycopg")] == []


def test_a_frozen_postgresql_is_noticed_and_its_rows_spooled_then_written(
    postgres_server: Any, postgres_url: str, spool: Path, caplog: pytest.LogCaptureFixture
):
    """A server that stops answering (SIGSTOP: a hung host, a network black hole) holds neither the writer
    nor the lease keeper: within a few seconds the ledger says it is degraded and spools, and once the
    server answers again every row is written once. (The writer waited on its statement for as long as
    the server was frozen: no warning, /readyz ready, and the queue growing toward back-pressure.)"""
    caplog.set_level(logging.WARNING)
    ledger = PostgresUsageLedger(
        postgres_url, spool_path=spool, lease=6.0, renew=1.0, connect_timeout=1, write_timeout=1.0
    )

    async def one(name: str) -> None:
        handle = await ledger.start(session_id=name, context=ADA, model="m")
        await ledger.finish(handle, status="ok", tokens_in=1)

    async def scenario() -> tuple[bool, int]:
        await one("before")
        await ledger.rows()  # written: the pool holds an idle connection to the server now
        with kit.frozen(postgres_server):
            await one("frozen")
            deadline = time.monotonic() + 10
            while not (ledger.degraded and ledger.spooled > 0):
                assert time.monotonic() < deadline, "the ledger never noticed the server had stopped answering"
                await asyncio.sleep(0.05)
            seen = (ledger.degraded, ledger.spooled)
            await one("meanwhile")
        deadline = time.monotonic() + 30
        while ledger.degraded or ledger.spooled:
            assert time.monotonic() < deadline, ledger.degraded_reason
            await asyncio.sleep(0.05)
        return seen

    try:
        degraded, spooled = run(scenario())
        rows = run(ledger.rows())
    finally:
        ledger.close()
    assert degraded and spooled > 0
    assert [(row["session_id"], row["status"]) for row in rows] == [
        ("before", "ok"),
        ("frozen", "ok"),
        ("meanwhile", "ok"),
    ]
    warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warned if record.name.startswith("psycopg")] == []


def test_a_read_from_a_frozen_postgresql_is_refused_not_held(postgres_server: Any, postgres_url: str, spool: Path):
    """A usage read begun as the server stopped answering waited for as long as it stayed frozen (the
    writes had a bound, the reads none): it is refused as unavailable once the reader's wait is over."""
    ledger = PostgresUsageLedger(
        postgres_url, spool_path=spool, lease=30.0, renew=10.0, connect_timeout=1, write_timeout=1.0, wait_for=1.0
    )

    async def scenario() -> None:
        handle = await ledger.start(session_id="s", context=ADA, model="m")
        await ledger.finish(handle, status="ok", tokens_in=1)
        await ledger.rows()  # written, and the pool holds a connection to the server
        with kit.frozen(postgres_server):
            started = time.monotonic()
            with pytest.raises(PostgresUnavailableError, match="cannot be read now"):
                await ledger.totals()
            assert time.monotonic() - started < 8  # the reader's wait, not the freeze's length

    try:
        run(scenario())
    finally:
        ledger.close()


def test_psycopgs_lines_about_cancelling_our_cut_statements_stay_out_of_the_log():
    """As the store's timeout cuts a statement short psycopg cancels it and, against a frozen server,
    says so in three ways (3.3); from our stores' loop threads all three are the outage the store
    already named. The same lines from another application's thread, and other lines, pass."""
    from gtl_nb.engine.stores.postgres_pool import _NOISE_FILTER, LOOP_PREFIX

    def record(message: str, thread: str) -> logging.LogRecord:
        made = logging.LogRecord("psycopg", logging.WARNING, __file__, 1, message, (), None)
        made.threadName = thread
        return made

    ours = LOOP_PREFIX + "ledger x"
    for message in (
        "query cancellation failed: cancellation timeout expired",
        "query not terminated after cancellation: closing connection",
        "query cancellation interrupted (CancelledError): closing connection",
    ):
        assert _NOISE_FILTER.filter(record(message, ours)) is False, message
        assert _NOISE_FILTER.filter(record(message, "MainThread")) is True, message
    assert _NOISE_FILTER.filter(record("some other psycopg warning", ours)) is True


# -- URLs ------------------------------------------------------------------------------------------------


def test_urls_keep_libpq_options_take_ours_out_and_never_show_a_password():
    pytest.importorskip("psycopg")  # libpq checks its own options
    parsed = parse_postgres_url(
        "postgresql+psycopg://gtl:pw@db.example:5433/ledger?sslmode=require&lease=20&renew=2&spool_path=/s&replica=r1"
    )
    assert parsed.options == {"spool_path": "/s", "replica": "r1", "lease": 20.0, "renew": 2.0, "pool_max": 4}
    assert "sslmode=require" in parsed.conninfo and "lease" not in parsed.conninfo
    assert "connect_timeout=5" in parsed.conninfo and parsed.conninfo.startswith("postgresql://gtl:pw@")
    assert "pw" not in parsed.shown and "pw" not in repr(parsed)
    assert parsed.shown == "postgresql+psycopg://gtl:***@db.example:5433/ledger?sslmode=require"  # (ours left out)
    assert (
        shown_url("postgresql://u@h/d?password=x&sslmode=disable") == "postgresql://u@h/d?password=***&sslmode=disable"
    )
    for bad, message in [
        ("postgresql://h/d?lease=soon", "lease must be a number"),
        ("postgresql://h/d?lease=5&renew=5", "renew"),
        ("postgresql://h/d?pool_max=0", "pool_max must be a positive"),
        ("postgresql://h:99999/d", "bad port"),
        ("postgresql+asyncpg://h/d", "only the psycopg driver"),
        ("postgresql://h/d?nonsense_option=1", "not a valid PostgreSQL URL"),
        ("sqlite:///x", "expected a postgresql://"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            parse_postgres_url(bad)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:PWCANARY9x7z%zz@127.0.0.1:1/db", "the password has a % not followed by two hex digits"),
        ("postgresql://u:50%off-PWCANARY@127.0.0.1:1/db", "the password has a % not followed by two hex digits"),
        ("postgresql://u:PWCANARY9x7z x@127.0.0.1:1/db", r"the password has a space .*%20"),
        ("postgresql://us%r:PWCANARY@127.0.0.1:1/db", "the user name has a %"),
        ("postgresql://u:PWCANARY@127.0.0.1:1/d%zzb", "the database name has a %"),
    ],
)
def test_a_url_libpq_would_quote_is_refused_in_our_words_without_the_password(url, reason, capsys):
    # libpq's own message repeats the badly written part: the password, when that is where the % or space is
    with pytest.raises(ConfigurationError, match=reason) as refused:
        parse_postgres_url(url)
    assert "CANARY" not in str(refused.value) and ":***@127.0.0.1:1/" in str(refused.value)
    from gtl_nb.cli import main

    assert main(["usage", "--ledger", url]) == 2
    err = capsys.readouterr().err
    assert "not a valid PostgreSQL URL" in err and "CANARY" not in err


def test_libpqs_other_refusals_keep_a_plain_name_and_never_the_password():
    with pytest.raises(ConfigurationError, match='invalid URI query parameter: "nonsense_option"') as refused:
        parse_postgres_url("postgresql://u:PWCANARY@h/d?nonsense_option=1")
    assert "CANARY" not in str(refused.value)


def test_readyz_says_the_ledger_is_degraded_while_postgresql_is_away(tmp_path):
    """A gateway whose PostgreSQL ledger cannot be reached still serves (rows go to the local spool),
    and ``/readyz`` says what is degraded and why — without the database's password."""
    import httpx

    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import write_toml

    spool = tmp_path / "spool.sqlite3"
    url = f"postgresql://gtl:secret-canary-pw@127.0.0.1:1/gtl?spool_path={spool}&connect_timeout=1"
    config = write_toml(
        tmp_path / "gtl.toml", {"ledger": {"url": url}, "providers.echo": {}, "gateway.http": {"port": 0}}
    )
    with start_gateway(config) as gateway:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(gateway.url("http") + "/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200
        ready = httpx.get(gateway.url("http") + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "spool" in ready.json()["degraded"]["ledger"] and "secret-canary-pw" not in ready.text


def test_exiting_with_sessions_open_ends_their_rows_cancelled(postgres_url: str):
    """As with SQLite: the PostgreSQL ledger's exit drain is registered after the loop thread's stop,
    and atexit runs the last registered first, so it stops the loop (the sessions record their
    ends) before it writes what it holds and closes."""
    done = subprocess.run(
        [sys.executable, "-c", EXITS_MID_STREAM, postgres_url], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0 and done.stdout.strip() == "mid-stream", done.stderr
    statuses = [status for (status,) in query(postgres_url, "SELECT status FROM requests ORDER BY time")]
    assert statuses == ["cancelled", "cancelled"], statuses  # not left started for a lease to interrupt


def test_a_tenants_usage_is_read_through_the_tenant_index(postgres_url: str, spool: Path):
    """Ledger version 5: a tenant's rows of a span (a tenant budget rebuilt from the ledger, a usage report
    of one tenant) are found through ``requests_tenant_time``, not by scanning the span of every tenant."""
    from gtl_nb.engine.stores.postgres_ledger import _NOT_REFUSED, _where

    PostgresUsageLedger(postgres_url, spool_path=spool).close()  # migrated
    query(
        postgres_url,
        'INSERT INTO requests (time, time_utc, session_id, "user", status, tenant, tokens_in, replica, replica_seq) '
        "SELECT %s + n, 'then', 's' || n, 'u', 'ok', CASE WHEN n %% 3 = 0 THEN NULL ELSE 't' || (n %% 50) END, 1, "
        "'bulk', n FROM generate_series(1, 20000) AS n RETURNING id",
        T0,
    )
    execute(postgres_url, "ANALYZE requests")
    where, params = _where({"since": T0, "until": T0 + 86_400, "tenant": "t7"})
    plan = "\n".join(
        line
        for (line,) in query(postgres_url, f"EXPLAIN SELECT COUNT(*) FROM requests{where} AND {_NOT_REFUSED}", *params)
    )
    assert "requests_tenant_time" in plan, plan
    (definition,) = query(postgres_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'requests_tenant_time'")[0]
    assert "WHERE (tenant IS NOT NULL)" in definition


def test_a_database_of_ledger_version_4_gains_the_tenant_index_and_keeps_its_rows(postgres_url: str, spool: Path):
    assert run(_migrated(postgres_url, LEDGER_MIGRATIONS[:4])) == (0, 4)  # as the release before left it
    assert query(postgres_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'requests_tenant_time'") == []
    query(
        postgres_url,
        'INSERT INTO requests (time, time_utc, session_id, "user", status, tenant, tokens_in, replica, replica_seq) '
        "VALUES (%s, 'then', 'old', 'ada', 'ok', 'acme', 12, 'gone', 1) RETURNING id",
        T0,
    )
    old_columns = [
        name
        for (name,) in query(
            postgres_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'requests' ORDER BY ordinal_position",
        )
    ]
    before = query(postgres_url, f"SELECT {', '.join(map(quoted, old_columns))} FROM requests")
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        assert run(ledger.totals(tenant="acme")).requests == 1
    finally:
        ledger.close()
    assert query(postgres_url, "SELECT version FROM gtl_schema_version WHERE component = 'ledger'") == [
        (len(LEDGER_MIGRATIONS),)
    ]
    assert query(postgres_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'requests_tenant_time'")
    # (later versions append columns)
    assert query(postgres_url, f"SELECT {', '.join(map(quoted, old_columns))} FROM requests") == before


def test_a_database_of_ledger_version_5_gains_the_estimate_mark_and_keeps_its_rows(postgres_url: str, spool: Path):
    assert run(_migrated(postgres_url, LEDGER_MIGRATIONS[:5])) == (0, 5)  # as the release before left it
    query(
        postgres_url,
        'INSERT INTO requests (time, time_utc, end_time, session_id, "user", status, error_code, replica, '
        "replica_seq) VALUES (%s, 'then', %s, 'old', 'ada', 'cancelled', 'CANCELLED', 'gone', 1) RETURNING id",
        T0,
        T0 + 1,
    )
    ledger = PostgresUsageLedger(postgres_url, spool_path=spool)
    try:
        assert query(postgres_url, "SELECT version FROM gtl_schema_version WHERE component = 'ledger'") == [
            (len(LEDGER_MIGRATIONS),)
        ]

        async def scenario() -> list[dict[str, Any]]:
            cut = await ledger.start(session_id="cut", context=ADA, model="m", now=T0 + 5)
            await ledger.finish(
                cut, status="cancelled", error_code="CANCELLED", tokens_in=4, tokens_out=9, usage_estimated=True
            )
            answered = await ledger.start(session_id="answered", context=ADA, model="m", now=T0 + 7)
            await ledger.finish(answered, status="ok", tokens_in=4, tokens_out=12, now=T0 + 8)
            return await ledger.rows()

        rows = run(scenario())
    finally:
        ledger.close()
    assert [(row["session_id"], row["usage_estimated"]) for row in rows] == [
        ("old", None),  # not recorded by the release that wrote it
        ("cut", True),
        ("answered", False),
    ]


@pytest.mark.timeout(300)
def test_a_refused_password_ends_the_first_contact_at_once_not_at_the_pools_timeout(
    postgres_server: Any, postgres_url: str, spool: Path
):
    """The server answers FATAL to the first connection attempt: nothing will come of waiting for the
    pool's timeout (a start waited its whole 5 s). With timeouts of an hour, the ledger opens all the
    same — degraded, the server's own words its reason — which it could only do by not waiting them."""
    postgres_server.password_role("gtl_pw_fast", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_pw_fast:canary-WRONG-fast@127.0.0.1:{parts.port}"))
    ledger = PostgresUsageLedger(url, spool_path=spool, connect_timeout=3600, write_timeout=3600)
    try:
        assert ledger.degraded
        reason, cause = ledger.degraded_reason or "", ledger.degraded_cause or ""
    finally:
        ledger.close()
    assert 'password authentication failed for user "gtl_pw_fast"' in cause, cause
    assert cause in reason and "couldn't get a connection" not in reason
    assert "canary-WRONG-fast" not in reason
