"""``finish_reason`` (schema version 5) in the SQLite ledger: why an ``ok`` answer ended, taken from its
``done`` event (``stop``, ``length``, ``tool_calls``, ``content_filter``, ``other``), NULL for a
request that ended in an error or was cancelled. Written by every path a row takes (``Ledger.finish``,
the writer's multi-row INSERT of finished rows, its ``UPDATE … FROM`` of many outcomes, one UPDATE
each), kept short text, read back by every reader (rows, the DataFrame), and a file of version 4
migrates with its rows intact.
"""

from __future__ import annotations

import enum
import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine import ledger_batch, ledger_migrations
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import (
    FINISH_FIELDS,
    FINISH_REASON_MAX,
    Ledger,
    finish_fields,
    frame_from_rows,
    process_identity,
)
from gtl_nb.engine.ledger_batch import Finish, Start, write_batch
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, DTYPES
from gtl_nb.engine.stores import SqliteUsageLedger
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import Done, Error, Usage

T0 = 1_700_000_000.25
HOST = "host-a"
REASONS = ("stop", "length", "tool_calls", "content_filter", "other")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def reasons_of(path: Path) -> list[tuple[str, str, str | None]]:
    """Every row's session, status and finish reason as stored, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT session_id, status, finish_reason FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()


# -- the schema and the events ---------------------------------------------------------------------


def test_the_column_is_text_appended_by_version_5_and_read_beside_the_outcome():
    assert ledger_migrations.MIGRATIONS[4].__name__ == "_m005_finish_reason"
    assert COLUMN_NAMES.index("finish_reason") == COLUMN_NAMES.index("cache_write_tokens_in") + 1  # appended
    assert "finish_reason" in FINISH_FIELDS and DTYPES["finish_reason"] == "string"
    names = list(DTYPES)
    assert names[names.index("status") :][:3] == ["status", "error_code", "finish_reason"]


def test_finish_fields_take_the_reason_from_done_and_none_from_an_error():
    usage = Usage(session_id="s", tokens_in=10, tokens_out=16)
    assert finish_fields(Done(session_id="s", finish_reason="length"), usage)["finish_reason"] == "length"
    assert finish_fields(Done(session_id="s"))["finish_reason"] == "stop"  # the event's own default
    for code in ("OVERLOADED", "CANCELLED"):
        assert "finish_reason" not in finish_fields(Error(session_id="s", code=code, message="x"), usage)


# -- one row at a time ------------------------------------------------------------------------------


def test_a_done_row_keeps_its_reason_and_an_error_row_has_none(path: Path):
    with Ledger(path) as ledger:
        cut = ledger.start(session_id="cut", model="m", now=T0)
        ledger.finish(cut, now=T0 + 1, **finish_fields(Done(session_id="cut", finish_reason="length")))
        failed = ledger.start(session_id="failed", model="m", now=T0 + 2)
        error = Error(session_id="failed", code="OVERLOADED", message="busy", provider="oa")
        ledger.finish(failed, now=T0 + 3, **finish_fields(error))
        cancelled = ledger.start(session_id="cancelled", model="m", now=T0 + 4)
        ledger.finish(cancelled, now=T0 + 5, **finish_fields(Error(session_id="c", code="CANCELLED", message="x")))
        frame = ledger.to_dataframe()
        assert [row["finish_reason"] for row in ledger.rows(finish_reason="length")] == ["length"]
    assert reasons_of(path) == [("cut", "ok", "length"), ("failed", "error", None), ("cancelled", "cancelled", None)]
    assert str(frame["finish_reason"].dtype) == "string"
    assert frame["finish_reason"][0] == "length" and frame["finish_reason"].isna().tolist() == [False, True, True]


class Reason(str, enum.Enum):
    LENGTH = "length"


@pytest.mark.parametrize(
    ("value", "stored", "warned"),
    [
        (Reason.LENGTH, "length", False),  # a str enum's member: its text, not "Reason.LENGTH"
        ("x" * (FINISH_REASON_MAX + 1), "x" * FINISH_REASON_MAX, True),
        (3, None, True),
        (b"stop", None, True),
        ({"reason": "stop"}, None, True),
        ("\ud800", "\\ud800", False),  # a lone surrogate, escaped: the row keeps its tokens and cost
        ("arrêt", "arr\\xeat", False),
    ],
    ids=["str-enum", "long", "int", "bytes", "dict", "lone-surrogate", "non-ascii"],
)
def test_a_reason_is_short_text_or_unknown(
    path: Path, caplog: pytest.LogCaptureFixture, value: Any, stored: str | None, warned: bool
):
    with caplog.at_level("WARNING", logger="gtl_nb"), Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", now=T0)
        ledger.finish(row_id, status="ok", tokens_in=3, finish_reason=value, now=T0 + 1)
    conn = sqlite3.connect(path)
    try:
        found = conn.execute("SELECT status, tokens_in, finish_reason, typeof(finish_reason) FROM requests").fetchall()
    finally:
        conn.close()
    assert found == [("ok", 3, stored, "null" if stored is None else "text")]  # the other fields kept
    assert ("finish_reason" in caplog.text) == warned


# -- many rows in one commit (the writer's batches) ------------------------------------------------------


def _batches(path: Path, batches: list[list[Start | Finish]]) -> list[str]:
    """Commit ``batches`` in turn as the writer does (``write_batch``); the statements run."""
    statements: list[str] = []
    with Ledger(path) as ledger:
        ledger.transaction(lambda conn: conn.set_trace_callback(statements.append))
        rowids: dict[int, int] = {}
        for batch in batches:
            rowids.update(ledger.transaction(lambda conn, batch=batch: write_batch(conn, batch, rowids, HOST)))
    return statements


def _outcome(n: int) -> tuple[str, dict[str, Any]]:
    """Request ``n``'s status and fields: a reason of its own, or every fourth an error (no reason)."""
    if n % 4 == 3:
        return "error", {"error_code": "OVERLOADED", "tokens_in": n}
    return "ok", {"finish_reason": REASONS[n % len(REASONS)], "tokens_in": n, "tokens_out": 100 + n}


def _expected(numbers: range) -> list[tuple[str, str, str | None]]:
    """Each request's session, status and reason as its row should hold them."""
    expected = []
    for n in numbers:
        status, fields = _outcome(n)
        expected.append((f"s{n}", status, fields.get("finish_reason")))
    return expected


def test_the_writers_multi_row_insert_puts_each_reason_in_its_row(path: Path):
    batch: list[Start | Finish] = []
    for n in range(40):  # more than one statement's worth: 32 and 8
        start = Start(n, n, T0 + n, f"s{n}", "ada", "m")
        status, fields = _outcome(n)
        start.finish = Finish(n, 100 + n, status, T0 + n + 1, fields)
        batch.append(start)
    statements = _batches(path, [batch])
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == 2 and all(s.count("), (") > 1 for s in inserts)  # many rows a statement
    assert reasons_of(path) == _expected(range(40))


def test_a_batch_whose_rows_have_no_reason_writes_null(path: Path):
    # a column empty in every row of a statement is written as NULL in its text (``_null_columns``)
    batch: list[Start | Finish] = []
    for n in range(4):
        start = Start(n, n, T0 + n, f"s{n}", "ada", "m")
        start.finish = Finish(n, 10 + n, "error", T0 + n + 1, {"error_code": "OVERLOADED"})
        batch.append(start)
    _batches(path, [batch])
    assert reasons_of(path) == [(f"s{n}", "error", None) for n in range(4)]


@pytest.mark.parametrize("batched", [True, False], ids=["UPDATE … FROM", "an UPDATE each"])
def test_the_writers_outcomes_of_started_rows_put_each_reason_in_its_row(
    path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
):
    if batched and not ledger_batch.BATCHED_UPDATES:
        pytest.skip("UPDATE … FROM: SQLite 3.33+")
    monkeypatch.setattr(ledger_batch, "BATCHED_UPDATES", batched)
    starts: list[Start | Finish] = [Start(n, n, T0 + n, f"s{n}", "ada", "m") for n in range(40)]
    ends: list[Start | Finish] = []
    for n in range(40):
        status, fields = _outcome(n)
        ends.append(Finish(n, 100 + n, status, T0 + n + 1, fields))
    statements = _batches(path, [starts, ends])
    updates = [s for s in statements if s.startswith("UPDATE")]
    assert all("finish_reason" in s for s in updates)
    assert (len(updates) == 2) if batched else (len(updates) == 40)  # 32 + 8 a statement, or one each
    assert reasons_of(path) == _expected(range(40))


def test_the_sqlite_store_writes_many_queued_reasons_in_one_commit(path: Path):
    """Through ``SqliteUsageLedger``: queued finishes the writer thread commits together."""
    import asyncio

    async def scenario() -> list[dict[str, Any]]:
        store = SqliteUsageLedger(path)
        try:
            context = RequestContext(principal="ada")
            handles = [await store.start(session_id=f"s{n}", context=context, model="m", now=T0 + n) for n in range(60)]
            await store.flush()  # written started: the finishes below are outcomes of started rows
            for n, handle in enumerate(handles[:30]):
                status, fields = _outcome(n)
                store.finish_nowait(handle, status=status, now=T0 + 100 + n, **fields)
            for n, handle in enumerate(handles[30:], start=30):
                status, fields = _outcome(n)
                await store.finish(handle, status=status, now=T0 + 100 + n, **fields)
            return await store.rows()
        finally:
            await store.aclose()

    rows = asyncio.run(scenario())
    assert [(row["session_id"], row["status"], row["finish_reason"]) for row in rows] == _expected(range(60))


# -- through the engine --------------------------------------------------------------------------------


def test_the_engine_records_why_each_answer_ended(path: Path):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    client = gtl_nb.connect(ledger=path, environ={})
    try:
        assert client.complete("echo", "one two three four five six", max_tokens=2).finish_reason == "length"
        assert client.complete("echo", "hi").finish_reason == "stop"
        assert client.complete("echo", "weather in Oslo?", tools=[tool]).finish_reason == "tool_calls"
        with pytest.raises(InvalidRequestError):
            client.complete("echo", "hi", tool_choice="required")  # no tools: refused, still a row
        frame = client.usage()
    finally:
        client.close()
    assert list(frame["status"]) == ["ok", "ok", "ok", "error"]
    assert frame["finish_reason"].tolist()[:3] == ["length", "stop", "tool_calls"]
    assert frame["finish_reason"].isna().tolist() == [False, False, False, True]


# -- readers ------------------------------------------------------------------------------------------


def test_rows_of_an_older_gateway_without_the_column_load_as_unknown():
    # a gateway of the release before sends rows without the key: the frame has the column all the same
    rows = [{"id": 1, "time": T0, "status": "ok", "model": "m"}, {"id": 2, "time": T0, "status": "ok"}]
    frame = frame_from_rows(rows)
    assert list(frame.columns) == list(DTYPES) and str(frame["finish_reason"].dtype) == "string"
    assert frame["finish_reason"].isna().all()


# -- migrating a file of version 4 ----------------------------------------------------------------------


def _file_at_version_4(path: Path) -> None:
    """A ledger file as the release before ``finish_reason`` left it: migrations 1–4 only, a finished
    row, an error and one still ``started`` by this (live) process."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        assert ledger_migrations.migrate(conn, ledger_migrations.MIGRATIONS[:4]) == (0, 4)
        conn.execute("COMMIT")
        insert = (
            "INSERT INTO requests (time, time_utc, end_time, session_id, user, model, status, error_code, "
            "tokens_in, cache_write_tokens_in, cache_hit, pid, proc_start, hostname) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        me = (os.getpid(), process_identity(os.getpid()), platform.node() or "localhost")
        rows = [
            (T0, "t0", T0 + 1, "old_ok", "ada", "claude", "ok", None, 900, 12, 0, *me),
            (T0 + 1, "t1", T0 + 2, "old_error", "bob", "claude", "error", "OVERLOADED", None, None, 0, *me),
            (T0 + 2, "t2", None, "old_started", "ada", "claude", "started", None, None, None, 0, *me),
        ]
        conn.executemany(insert, rows)
    finally:
        conn.close()


def test_a_file_of_version_4_gains_the_column_with_its_old_rows_null(tmp_path: Path):
    path = tmp_path / "v4.sqlite3"
    _file_at_version_4(path)
    old_columns = COLUMN_NAMES[: COLUMN_NAMES.index("finish_reason")]
    conn = sqlite3.connect(path)
    try:
        assert [row[1] for row in conn.execute("PRAGMA table_info(requests)")] == list(old_columns)
        before = conn.execute(f"SELECT {', '.join(old_columns)} FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS)
        assert [(row["session_id"], row["finish_reason"]) for row in ledger.rows()] == [
            ("old_ok", None),  # not recorded by the release that wrote it
            ("old_error", None),
            ("old_started", None),
        ]
        # the row the previous release left started takes its outcome, the reason included
        started_id = ledger.rows(session_id="old_started")[0]["id"]
        ledger.finish(started_id, **finish_fields(Done(session_id="old_started", finish_reason="content_filter")))
        new = ledger.start(session_id="new", now=T0 + 9)
        ledger.finish(new, status="ok", finish_reason="length", now=T0 + 10)
    conn = sqlite3.connect(path)
    try:
        assert [row[1] for row in conn.execute("PRAGMA table_info(requests)")] == list(COLUMN_NAMES)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(ledger_migrations.MIGRATIONS),)
        after = conn.execute(f"SELECT {', '.join(old_columns)} FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()
    assert after[:2] == before[:2]  # the finished rows: every value kept
    assert reasons_of(path) == [
        ("old_ok", "ok", None),
        ("old_error", "error", None),
        ("old_started", "ok", "content_filter"),  # finished after the upgrade
        ("new", "ok", "length"),
    ]
    with Ledger(path) as ledger:  # a second open: nothing more to do
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) and len(ledger.rows()) == 4
