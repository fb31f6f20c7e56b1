"""``cache_write_tokens_in`` (schema version 4) in the SQLite ledger: stored exactly as the other
token counts are, whichever way a row is written (``Ledger.finish``, the writer's finished-row
INSERT, its ``UPDATE … FROM`` of many outcomes, one UPDATE each on an older SQLite), and a file of
the previous version migrates with its rows intact.

The statements and their parameter builders are positional: a value one place off lands in the
wrong column without any error. So every field gets a value of its own here, and each column is
read back — with plain sqlite3, not the ledger's own code — and checked by name.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine import ledger_batch, ledger_migrations
from gtl_nb.engine.ledger import (
    FINISH_FIELDS,
    FINISH_UPDATE,
    FINISH_UPDATE_ROWS,
    INSERT_FINISHED,
    INSERT_STARTED,
    Ledger,
    clean_finish_fields,
    finish_fields,
    finish_values,
    finished_row_values,
    process_identity,
    started_row_values,
    started_values,
)
from gtl_nb.engine.ledger_batch import Finish, Start, write_batch
from gtl_nb.engine.ledger_schema import COLUMN_NAMES
from gtl_nb.protocol.messages import Done, Usage

T0 = 1_700_000_000.25
HOST = "host-a"

#: A value of its own for every ``finish`` field: a value in the wrong column cannot go unseen.
DETAILS: dict[str, Any] = {
    "error_code": "OVERLOADED",
    "finish_reason": "length",
    "deployment": "backup",
    "provider_type": "anthropic",
    "model": "claude-x",
    "tokens_in": 1001,
    "tokens_out": 1002,
    "cached_tokens_in": 1003,
    "cache_write_tokens_in": 1004,
    "reasoning_tokens_out": 1005,
    "cost": 0.125,
    "usage_estimated": True,
    "ttft_ms": 210.5,
    "latency_ms": 1500.25,
    "cache_hit": True,
    "coalesced": True,
    "failover_path": ["primary", "backup"],
}
COUNTS = ("tokens_in", "tokens_out", "cached_tokens_in", "cache_write_tokens_in", "reasoning_tokens_out")


def stored(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` as the columns hold them in SQL: flags 0/1, the path JSON text."""
    row = dict(details)
    row["cache_hit"], row["coalesced"] = int(row["cache_hit"]), int(row["coalesced"])
    row["usage_estimated"] = int(row["usage_estimated"])
    row["failover_path"] = json.dumps(row["failover_path"])
    return row


def scaled(factor: int) -> dict[str, Any]:
    """``DETAILS`` with every count multiplied by ``factor`` (distinct rows of one statement)."""
    return {**DETAILS, **{name: DETAILS[name] * factor for name in COUNTS}}


def raw_rows(path: Path, columns: tuple[str, ...] = tuple(DETAILS)) -> list[dict[str, Any]]:
    """Every row's ``columns`` as stored, by plain sqlite3, in id order."""
    conn = sqlite3.connect(path)
    try:
        found = conn.execute(f"SELECT {', '.join(columns)} FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()
    return [dict(zip(columns, values, strict=True)) for values in found]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def test_the_details_name_every_finish_field():
    assert set(DETAILS) == FINISH_FIELDS  # a new field needs a value of its own here
    # appended by version 4, after version 2's columns (later versions append after it)
    assert COLUMN_NAMES.index("cache_write_tokens_in") == COLUMN_NAMES.index("trace_id") + 1


def test_finish_fields_take_the_cache_writes_from_usage():
    usage = Usage(session_id="s", tokens_in=1000, tokens_out=5, cached_tokens_in=200, cache_write_tokens_in=700)
    fields = finish_fields(Done(session_id="s", provider="an", model="claude"), usage)
    assert (fields["cached_tokens_in"], fields["cache_write_tokens_in"]) == (200, 700)
    assert finish_fields(Done(session_id="s"), Usage(session_id="s"))["cache_write_tokens_in"] is None


# -- the statements and their parameters, column by column ------------------------------------------


def _columns(insert: str) -> list[str]:
    return insert.partition("(")[2].partition(")")[0].split(", ")


def test_finished_row_values_put_each_value_in_its_column():
    started = started_values(T0, session_id="s", user="ada", model="m", hostname=HOST, tenant="acme")
    clean = clean_finish_fields(1, DETAILS)
    row = dict(zip(_columns(INSERT_FINISHED), finished_row_values(started, "error", T0 + 2, clean), strict=True))
    assert {name: row[name] for name in DETAILS} == stored(DETAILS)
    assert (row["time"], row["end_time"], row["status"], row["session_id"], row["tenant"]) == (
        T0,
        T0 + 2,
        "error",
        "s",
        "acme",
    )
    assert (row["pid"], row["hostname"]) == (os.getpid(), HOST)


def test_a_started_row_in_the_finished_rows_statement_is_the_started_rows_statement():
    started = started_values(T0, session_id="s", user="ada", model="m", hostname=HOST, trace_id="t")
    as_finished = dict(zip(_columns(INSERT_FINISHED), started_row_values(started), strict=True))
    placeholders = INSERT_STARTED.partition(" VALUES (")[2].rstrip(")").split(", ")
    values = iter(started)
    as_started = {
        name: "started" if slot == "'started'" else next(values)
        for name, slot in zip(_columns(INSERT_STARTED), placeholders, strict=True)
    }
    assert {name: as_finished[name] for name in as_started} == as_started
    assert all(as_finished[name] is None for name in set(as_finished) - set(as_started) - {"status"})
    assert as_finished["cache_write_tokens_in"] is None


def _assigned(update: str) -> list[str]:
    """The column each ``?`` of an UPDATE's SET (then WHERE) clause goes to, in parameter order."""
    names = []
    for mark in re.finditer(r"\?", update):
        names.append(re.findall(r"(\w+) = ", update[: mark.start()])[-1])
    return names


def test_finish_values_put_each_value_in_its_column():
    clean = clean_finish_fields(7, DETAILS)
    params = finish_values(7, "error", T0 + 2, clean)
    names = _assigned(FINISH_UPDATE)
    assert len(names) == len(params)
    # latency_ms takes two: the given latency, then the end time its default is measured to
    by_name = {name: value for name, value in zip(names, params, strict=True) if name != "latency_ms"}
    assert {name: by_name[name] for name in DETAILS if name != "latency_ms"} == {
        name: value for name, value in stored(DETAILS).items() if name != "latency_ms"
    }
    latency = [value for name, value in zip(names, params, strict=True) if name == "latency_ms"]
    assert latency == [DETAILS["latency_ms"], T0 + 2]
    assert (by_name["status"], by_name["end_time"], by_name["id"]) == ("error", T0 + 2, 7)


def test_the_update_of_many_rows_makes_the_same_assignments_as_the_update_of_one():
    numbers = [int(n) for n in re.findall(r"v\.column(\d+)", FINISH_UPDATE_ROWS)]
    assert numbers == list(range(1, FINISH_UPDATE.count("?") + 1))  # v.columnN: the Nth parameter, in order
    one = re.sub(r"v\.column\d+", "?", FINISH_UPDATE_ROWS).replace(" FROM (VALUES {values}) AS v", "")
    assert one == FINISH_UPDATE


# -- written through each path, read back with plain sqlite3 ------------------------------------------


def test_ledger_finish_stores_every_count_in_its_own_column(path: Path):
    with Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", model="m", now=T0)
        ledger.finish(row_id, status="error", now=T0 + 2, **DETAILS)
        assert {name: (ledger.row(row_id) or {})[name] for name in DETAILS} == DETAILS
        frame = ledger.to_dataframe()
    assert raw_rows(path) == [stored(DETAILS)]
    assert str(frame["cache_write_tokens_in"].dtype) == "Int64" and frame["cache_write_tokens_in"][0] == 1004


def test_an_unreported_cache_write_count_is_null_never_zero(path: Path):
    with Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", now=T0)
        ledger.finish(row_id, status="ok", tokens_in=10, cached_tokens_in=4, now=T0 + 1)
    assert raw_rows(path, ("tokens_in", "cached_tokens_in", "cache_write_tokens_in")) == [
        {"tokens_in": 10, "cached_tokens_in": 4, "cache_write_tokens_in": None}
    ]


@pytest.mark.parametrize("value", [-1, True, 2**63, 1.5, "12"], ids=repr)
def test_an_implausible_cache_write_count_is_stored_as_unknown_like_the_others(
    path: Path, value: Any, caplog: pytest.LogCaptureFixture
):
    with Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", now=T0)
        ledger.finish(row_id, status="ok", tokens_in=10, cache_write_tokens_in=value, now=T0 + 1)
    assert raw_rows(path, ("status", "tokens_in", "cache_write_tokens_in")) == [
        {"status": "ok", "tokens_in": 10, "cache_write_tokens_in": None}
    ]
    assert "cache_write_tokens_in" in caplog.text and "stored as unknown" in caplog.text


def _batches(path: Path, batches: list[list[Start | Finish]]) -> list[str]:
    """Commit ``batches`` in turn as the writer does (``write_batch``); the statements run."""
    statements: list[str] = []
    with Ledger(path) as ledger:
        ledger.transaction(lambda conn: conn.set_trace_callback(statements.append))
        rowids: dict[int, int] = {}
        for batch in batches:
            rowids.update(ledger.transaction(lambda conn, batch=batch: write_batch(conn, batch, rowids, HOST)))
    return statements


def test_the_writers_finished_rows_insert_stores_every_count_in_its_own_column(path: Path):
    batch: list[Start | Finish] = []
    for n in (1, 2, 3):
        start = Start(n, n, T0 + n, f"s{n}", "ada", "m")
        start.finish = Finish(n, 10 + n, "error", T0 + n + 2, scaled(n))
        batch.append(start)
    statements = _batches(path, [batch])
    assert next(s for s in statements if s.startswith("INSERT")).count("cache_write_tokens_in") == 1
    assert raw_rows(path) == [stored(scaled(n)) for n in (1, 2, 3)]


@pytest.mark.parametrize("batched", [True, False], ids=["UPDATE … FROM", "an UPDATE each"])
def test_the_writers_outcomes_of_started_rows_store_every_count_in_its_own_column(
    path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
):
    if batched and not ledger_batch.BATCHED_UPDATES:
        pytest.skip("UPDATE … FROM: SQLite 3.33+")
    monkeypatch.setattr(ledger_batch, "BATCHED_UPDATES", batched)
    starts: list[Start | Finish] = [Start(n, n, T0 + n, f"s{n}", "ada", "m") for n in (1, 2, 3, 4)]
    ends: list[Start | Finish] = [Finish(n, 10 + n, "error", T0 + n + 2, scaled(n)) for n in (1, 2, 3)]
    ends.append(Finish(4, 14, "error", T0 + 6, {**scaled(4), "cache_write_tokens_in": None}))  # not reported
    statements = _batches(path, [starts, ends])
    updates = [s for s in statements if s.startswith("UPDATE")]
    assert updates and all("cache_write_tokens_in" in s for s in updates)
    assert any(" FROM (VALUES " in s for s in updates) == batched
    expected = [stored(scaled(n)) for n in (1, 2, 3)] + [stored({**scaled(4), "cache_write_tokens_in": None})]
    assert raw_rows(path) == expected


# -- migrating a file of the previous version ----------------------------------------------------------


def _file_at_version_3(path: Path) -> None:
    """A ledger file as the release before ``cache_write_tokens_in`` left it: migrations 1–3 only,
    a finished row, a cancelled one and one still ``started`` by this (live) process."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        assert ledger_migrations.migrate(conn, ledger_migrations.MIGRATIONS[:3]) == (0, 3)
        conn.execute("COMMIT")
        insert = (
            "INSERT INTO requests (time, time_utc, end_time, session_id, user, deployment, model, status, "
            "error_code, tokens_in, tokens_out, cached_tokens_in, reasoning_tokens_out, cost, latency_ms, "
            "cache_hit, pid, proc_start, hostname, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?, ?)"
        )
        me = (os.getpid(), process_identity(os.getpid()), platform.node() or "localhost")
        rows = [
            (T0, "t0", T0 + 1, "old_ok", "ada", "an", "claude", "ok", None, 900, 40, 600, 3, 0.5, 1000.0, 0, *me),
            (T0 + 1, "t1", T0 + 2, "old_cancelled", "bob", "an", "claude", "cancelled", "CANCELLED", None, None,
             None, None, None, 1000.0, 1, *me),
            (T0 + 2, "t2", None, "old_started", "ada", None, "claude", "started", None, None, None, None, None,
             None, None, 0, *me),
        ]  # fmt: skip
        conn.executemany(insert, [(*row, "acme") for row in rows])
    finally:
        conn.close()


def test_a_file_of_the_previous_version_migrates_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "v3.sqlite3"
    _file_at_version_3(path)
    before_columns = COLUMN_NAMES[: COLUMN_NAMES.index("cache_write_tokens_in")]
    before = raw_rows(path, before_columns)
    assert len(before) == 3 and "cache_write_tokens_in" not in before_columns
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) >= 4
        rows = ledger.rows()
        assert [(row["session_id"], row["cache_write_tokens_in"]) for row in rows] == [
            ("old_ok", None),
            ("old_cancelled", None),
            ("old_started", None),
        ]
        # the row the previous release left started takes its outcome, the new count included
        started_id = rows[2]["id"]
        ledger.finish(started_id, status="ok", tokens_in=800, cached_tokens_in=100, cache_write_tokens_in=650)
        new = ledger.start(session_id="new", now=T0 + 9)
        ledger.finish(new, status="ok", tokens_in=5, cache_write_tokens_in=2, now=T0 + 10)
    conn = sqlite3.connect(path)
    try:
        assert [row[1] for row in conn.execute("PRAGMA table_info(requests)")] == list(COLUMN_NAMES)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(ledger_migrations.MIGRATIONS),)
    finally:
        conn.close()
    after = raw_rows(path, before_columns)
    assert after[:2] == before[:2]  # the finished rows: every value kept
    counts = ("session_id", "status", "tokens_in", "cached_tokens_in", "cache_write_tokens_in")
    assert [tuple(row.values()) for row in raw_rows(path, counts)] == [
        ("old_ok", "ok", 900, 600, None),
        ("old_cancelled", "cancelled", None, None, None),
        ("old_started", "ok", 800, 100, 650),  # finished after the upgrade
        ("new", "ok", 5, None, 2),
    ]


def test_migrating_twice_is_a_no_op(tmp_path: Path):
    path = tmp_path / "v3.sqlite3"
    _file_at_version_3(path)
    for _ in range(2):
        with Ledger(path) as ledger:
            assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) and len(ledger.rows()) == 3
