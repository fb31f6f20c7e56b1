"""``gtl usage`` and ``gtl ledger prune`` on a PostgreSQL ledger (``[ledger] url = "postgresql://…"``),
against a real PostgreSQL 15: the same table as from a SQLite file holding the same rows, for every
grouping and option; the configured retention; a refusing server named as such."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gtl_nb.cli import main
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger_cli import GROUPINGS, POSTGRES_GROUPINGS, _postgres_groups, _usage_groups, group_rows
from gtl_nb.engine.stores.base import UsageLedger
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

DAY = 86400.0


kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py

# (session, user, model, age in days, status, outcome): odd users and models (none, empty, cases,
# punctuation, accents — groups that order differently under a language's collation), unknown and
# cancelled costs, cache counts, several days; costs exact in binary, so no sum depends on its order.
ROWS: list[tuple[str, str | None, str | None, float, str, dict[str, Any]]] = [
    ("a", "ada", "gpt-4o-mini", 0.1, "ok", {"tokens_in": 100, "tokens_out": 20, "cost": 0.25, "deployment": "openai",
                                            "cached_tokens_in": 64, "cache_write_tokens_in": 16,
                                            "finish_reason": "stop"}),
    ("b", "", None, 0.2, "ok", {"tokens_in": 3, "tokens_out": 4, "finish_reason": "length"}),
    ("c", None, "", 0.9, "error", {"error_code": "X", "deployment": ""}),
    ("d", "Bob", "Zeta", 2.5, "cancelled", {"ttft_ms": 120.0, "deployment": "anthropic"}),
    ("e", "bob", "alpha", 3.5, "cancelled", {"deployment": "anthropic"}),
    ("f", "ada", "éclair", 4.5, "interrupted", {}),
    ("g", "_x", "-", 5.5, "ok", {"tokens_in": 2**40, "cost": 0.5, "deployment": "Openai", "finish_reason": "length"}),
    ("h", "ada", "gpt-4o-mini", 0.3, "ok", {"tokens_in": 1, "tokens_out": 1, "cost": 0.125, "deployment": "openai",
                                            "finish_reason": "tool_calls"}),
    ("i", "ada", "gpt-4o-mini", 0.4, "error", {"error_code": "RATE_LIMIT"}),
]  # fmt: skip


async def _fill(store: UsageLedger, now: float) -> None:
    for session, user, model, age, status, outcome in ROWS:
        started = now - age * DAY
        handle = await store.start(session_id=session, context=RequestContext(principal=user), model=model, now=started)
        await store.finish(handle, status=status, now=started + 1, **outcome)
    await store.flush()


@pytest.fixture
def ledgers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """The same rows in a SQLite file and in PostgreSQL: the file, the URL, a gtl.toml naming the URL."""
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    sqlite = SqliteUsageLedger(path)
    postgres = PostgresUsageLedger(postgres_url, spool_path=tmp_path / "spool.sqlite3")
    try:
        asyncio.run(_fill(sqlite, now))
        asyncio.run(_fill(postgres, now))
    finally:
        sqlite.close()
        postgres.close()
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\nurl = "{postgres_url}"\nretention_days = 2\n', encoding="utf-8")
    return path, postgres_url, config


def gtl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("options", [[], ["--json"], ["--days", "2"], ["--days", "2", "--json"]])
def test_usage_of_a_postgresql_ledger_is_the_table_of_the_same_rows_in_a_file(ledgers, capsys, options):
    path, url, config = ledgers
    for by in GROUPINGS:
        from_file = gtl(capsys, "usage", "--ledger", str(path), "--by", by, *options)
        from_postgres = gtl(capsys, "--config", str(config), "usage", "--by", by, *options)
        assert from_postgres[0] == from_file[0] == 0, from_postgres[2]
        assert from_postgres[1] == from_file[1], by
        assert from_postgres[1].strip()
        if "--json" not in options:
            assert f"gtl: read {url}" in from_postgres[2]
    named = gtl(capsys, "usage", "--ledger", url, "--by", "user", *options)  # a URL given by hand, too
    assert named[1] == gtl(capsys, "usage", "--ledger", str(path), "--by", "user", *options)[1]


def test_the_grouping_sql_agrees_with_the_file_and_with_rows_read_through_a_gateway(ledgers, tmp_path: Path):
    path, url, _ = ledgers
    reader = PostgresUsageLedger(url, spool_path=tmp_path / "reader.sqlite3")
    try:
        rows = asyncio.run(reader.rows())
    finally:
        reader.close()
    for by in GROUPINGS:
        groups = _postgres_groups(url, POSTGRES_GROUPINGS[by], None)
        assert groups == _usage_groups(path, GROUPINGS[by], None) == group_rows(rows, by), by
    # the order of groups of one size is by code point, whatever the database's collation
    assert [group[0] for group in _postgres_groups(url, POSTGRES_GROUPINGS["model"], None)] == [
        "gpt-4o-mini",
        "-",  # no model, and the model "-"
        "",
        "Zeta",
        "alpha",
        "éclair",
    ]


def test_a_database_an_older_release_made_groups_by_finish_reason_as_unknown(ledgers, capsys):
    """A database at ledger version 3 (before ``finish_reason``), read and never migrated: one ``-`` group."""
    _, url, _ = ledgers
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE requests DROP COLUMN finish_reason")
        conn.execute("UPDATE gtl_schema_version SET version = 3 WHERE component = 'ledger'")
    status, out, err = gtl(capsys, "usage", "--ledger", url, "--by", "finish_reason", "--json")
    assert status == 0, err
    (group,) = map(json.loads, out.splitlines())
    assert (group["finish_reason"], group["requests"]) == ("-", len(ROWS))
    with psycopg.connect(url, autocommit=True) as conn:  # read, never migrated
        found = conn.execute("SELECT version FROM gtl_schema_version WHERE component = 'ledger'").fetchall()
    assert found == [(3,)]


def test_prune_applies_the_configured_retention_to_the_postgresql_ledger(ledgers, capsys):
    _, url, config = ledgers
    status, out, err = gtl(capsys, "--config", str(config), "ledger", "prune")
    assert status == 0, err
    assert out.strip() == f"{url}: deleted 4 row(s) by age and 0 by size"  # d, e, f, g: older than two days
    status, out, _ = gtl(capsys, "usage", "--ledger", url, "--json", "--by", "status")
    assert status == 0 and sum(json.loads(line)["requests"] for line in out.splitlines()) == len(ROWS) - 4
    status, out, err = gtl(capsys, "ledger", "prune", "--ledger", url, "--max-rows", "1", "--days", "1")
    assert status == 0 and "deleted 0 row(s) by age and 0 by size" in out  # the rest: under a day old
    status, _, err = gtl(capsys, "--config", str(config), "ledger", "prune", "--vacuum")
    assert status == 2 and "autovacuum" in err and "Traceback" not in err


def test_a_database_without_a_ledger_says_so(postgres_url: str, capsys):
    status, out, err = gtl(capsys, "usage", "--ledger", postgres_url)
    assert status == 0 and not out and f"no usage recorded yet (no ledger table in {postgres_url})" in err
    status, out, err = gtl(capsys, "ledger", "prune", "--ledger", postgres_url, "--days", "3")
    assert status == 0 and not out and "nothing to prune" in err


def test_a_refusing_server_is_named_without_its_password(postgres_server: Any, postgres_url: str, capsys):
    postgres_server.password_role("gtl_cli", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_cli:canary-cli-pw@127.0.0.1:{parts.port}"))
    for argv in (["usage", "--ledger", url], ["ledger", "prune", "--ledger", url, "--days", "3"]):
        status, out, err = gtl(capsys, *argv)
        assert status == 2 and not out
        assert 'password authentication failed for user "gtl_cli"' in err and "canary-cli-pw" not in err
        assert err.startswith("gtl: error: PostgreSQL postgresql://gtl_cli:***@")
