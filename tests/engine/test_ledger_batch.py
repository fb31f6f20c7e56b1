"""One group commit of the ledger's writer (``engine.ledger_batch.write_batch``): finished rows in a
run go in together, in multi-row INSERTs, and the rows are exactly what writing each request on
its own gives — odd values and SQLite's parameter limit included."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtl_nb.engine import ledger_batch
from gtl_nb.engine.ledger import INSERT_FINISHED, Ledger, LedgerError
from gtl_nb.engine.ledger_batch import MAX_ROWS_PER_INSERT, Finish, Start, _insert, _update, write_batch

T0 = 1_700_000_000.25
HOST = "host-a"
OUTCOME = {"deployment": "oa", "provider_type": "openai", "tokens_in": 5, "tokens_out": 16, "cost": 0.25,
           "ttft_ms": 1.5, "latency_ms": 3.0, "cache_hit": False, "coalesced": False,
           "failover_path": ["oa"]}  # fmt: skip


def finished(handle: int, session: str, fields: dict[str, Any] | None = None, status: str = "ok") -> Start:
    """A start whose finish came before the writer took it: one row, written finished."""
    start = Start(handle, -handle, T0 + handle, session, "ada", "m", tenant="acme")
    start.finish = Finish(handle, -handle, status, T0 + handle + 0.5, dict(OUTCOME if fields is None else fields))
    return start


def one_by_one(conn: sqlite3.Connection, ops: list[Start | Finish], rowids: dict[int, int]) -> dict[int, int]:
    """The reference: every operation in a statement of its own (the writer's way before rows were
    inserted together)."""
    started: dict[int, int] = {}
    for op in ops:
        if isinstance(op, Start):
            row_id = _insert(conn, op, HOST)
            if row_id is not None and op.finish is None:
                started[op.handle] = row_id
        else:
            _update(conn, op, started[op.handle] if op.handle in started else rowids[op.handle])
    return started


def rows_of(ledger: Ledger) -> list[dict[str, Any]]:
    """Every row, as stored, in id order (the process identity left out: two ledgers, one process)."""
    return [{k: v for k, v in row.items() if k != "proc_start"} for row in ledger.rows()]


def written(
    path: Path, batches: list[list[Start | Finish]], writer: Any, kind: str = "INSERT"
) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows ``writer`` leaves after committing ``batches`` in turn, and the statements of
    ``kind`` (INSERT, UPDATE) it ran."""
    statements: list[str] = []
    with Ledger(path) as ledger:
        ledger.transaction(lambda conn: conn.set_trace_callback(statements.append))
        rowids: dict[int, int] = {}
        for batch in batches:
            rowids.update(ledger.transaction(lambda conn, batch=batch: writer(conn, batch, rowids)))
        rows = rows_of(ledger)
    return rows, [s for s in statements if s.startswith(kind)]


def batch_writer(conn: sqlite3.Connection, ops: list[Start | Finish], rowids: dict[int, int]) -> dict[int, int]:
    return write_batch(conn, ops, rowids, HOST)


def test_a_run_of_finished_rows_is_a_few_statements_and_the_same_rows(tmp_path: Path):
    batch: list[Start | Finish] = [finished(n, f"s{n}") for n in range(1, 51)]
    together, inserts = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, one_each = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone and len(together) == 50
    assert len(one_each) == 50
    assert len(inserts) == 3  # 32 + 16 + 2 rows: a handful of statement texts serve every batch
    assert [row["session_id"] for row in together] == [f"s{n}" for n in range(1, 51)]  # ids in the starts' order


def test_columns_empty_in_every_row_of_a_statement_are_written_null_not_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    texts: list[tuple[int, tuple[int, ...]]] = []
    made = ledger_batch._insert_rows

    def recorded(count: int, nulls: tuple[int, ...] = ()) -> str:
        texts.append((count, nulls))
        return made(count, nulls)

    monkeypatch.setattr(ledger_batch, "_insert_rows", recorded)
    batch: list[Start | Finish] = [finished(n, f"s{n}") for n in range(1, 5)]
    batch[2] = finished(3, "s3", {**OUTCOME, "error_code": "RATE_LIMITED", "cost": None})  # values the others lack
    together, inserts = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone and len(inserts) == 1
    assert together[2]["error_code"] == "RATE_LIMITED" and [row["cost"] for row in together] == [0.25, 0.25, None, 0.25]
    ((count, nulls),) = texts
    columns = INSERT_FINISHED.partition("(")[2].partition(")")[0].split(", ")
    empty = {columns[index] for index in nulls}
    # empty in all four rows: in the text; a value in any row (error_code, cost): bound in every row
    assert count == 4
    assert {"cached_tokens_in", "cache_write_tokens_in", "reasoning_tokens_out", "key_id", "trace_id"} <= empty
    assert not empty & {"error_code", "cost", "tokens_out", "session_id", "tenant"}
    row_text = made(count, nulls).partition(" VALUES ")[2].partition(")")[0]
    assert row_text.count("NULL") == len(nulls) and row_text.count("?") == len(columns) - len(nulls)


class _ClaimsToBeNone(str):
    """A text that says it equals None."""

    def __eq__(self, other: object) -> bool:
        return other is None or str.__eq__(self, other)

    __hash__ = str.__hash__


class _WillNotSay(str):
    """A text whose ``== None`` cannot be answered (as ``pandas.NA``'s cannot)."""

    def __eq__(self, other: object) -> bool:
        if other is None:
            raise TypeError("the truth value is ambiguous")
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("user", [_ClaimsToBeNone("alice"), _WillNotSay("carol")], ids=type)
@pytest.mark.parametrize("rows", [1, 3])
def test_an_empty_column_is_told_by_identity_never_by_equality(tmp_path: Path, user: str, rows: int):
    batch: list[Start | Finish] = [finished(n, f"s{n}") for n in range(1, rows + 1)]
    for op in batch:
        assert isinstance(op, Start)
        op.user = user  # the user column: this text in every row, nothing else
    together, _ = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone and [row["user"] for row in together] == [str(user)] * rows


def test_rows_keep_the_order_of_their_starts_around_started_rows_and_updates(tmp_path: Path):
    first: list[Start | Finish] = [
        finished(1, "a"),
        Start(2, 2, T0 + 2, "open", "ada", "m"),  # still running: written started, its row id kept
        finished(3, "b"),
        finished(4, "c"),
    ]
    second: list[Start | Finish] = [
        finished(5, "d"),
        Finish(2, 6, "error", T0 + 9, {"error_code": "TIMEOUT"}),  # the UPDATE of an earlier batch's row
        finished(7, "e"),
    ]
    together, _ = written(tmp_path / "a.sqlite3", [first, second], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [first, second], one_by_one)
    assert together == alone
    assert [row["session_id"] for row in together] == ["a", "open", "b", "c", "d", "e"]
    assert together[1]["status"] == "error" and together[1]["error_code"] == "TIMEOUT"


def test_one_rows_refused_text_leaves_the_others_of_its_statement_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    batch: list[Start | Finish] = [finished(n, f"s{n}") for n in range(1, 21)]
    batch[6] = finished(7, "bad\udc80session")  # a lone surrogate: SQLite refuses the whole statement
    batch[9] = finished(10, "s10", {**OUTCOME, "model": "odd\udc80model"})  # refused details: outcome alone
    together, _ = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone and len(together) == 20
    # as one by one: both odd rows keep their outcome alone (the session id escaped), the rest in full
    assert together[6]["session_id"] == "bad\\udc80session" and together[6]["status"] == "ok"
    assert together[9]["status"] == "ok" and together[9]["tokens_out"] is None
    assert all(row["tokens_out"] == 16 for index, row in enumerate(together) if index not in (6, 9))
    assert "escaped" in caplog.text


def test_details_that_cannot_be_cleaned_go_the_one_by_one_way(tmp_path: Path):
    batch: list[Start | Finish] = [finished(1, "a"), finished(2, "b", {"failover_path": 5}), finished(3, "c")]
    together, _ = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone and [row["status"] for row in together] == ["ok", "ok", "ok"]


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Connection.setlimit: Python 3.11+")
def test_a_build_of_sqlite_with_fewer_parameters_a_statement_gets_smaller_statements(tmp_path: Path):
    statements: list[str] = []
    batch: list[Start | Finish] = [finished(n, f"s{n}") for n in range(1, 12)]
    with Ledger(tmp_path / "a.sqlite3") as ledger:

        def limited(conn: sqlite3.Connection) -> dict[int, int]:
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 3 * 26 + 5)  # room for three rows
            conn.set_trace_callback(statements.append)
            return write_batch(conn, batch, {}, HOST)

        ledger.transaction(limited)
        assert len(ledger.rows()) == 11
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert [s.count("), (") + 1 for s in inserts] == [2, 2, 2, 2, 2, 1]  # powers of two within three rows
    assert MAX_ROWS_PER_INSERT >= 32


def test_the_files_own_failure_is_raised_for_the_caller_to_retry(tmp_path: Path):
    with Ledger(tmp_path / "a.sqlite3") as ledger:

        def read_only(conn: sqlite3.Connection) -> dict[int, int]:
            conn.execute("PRAGMA query_only = ON")
            try:
                return write_batch(conn, [finished(1, "a"), finished(2, "b")], {}, HOST)
            finally:
                conn.execute("PRAGMA query_only = OFF")

        with pytest.raises(LedgerError, match="readonly"):  # not taken for a row's values: the batch is retried
            ledger.transaction(read_only)


_TEXT = st.one_of(st.none(), st.text(max_size=8), st.just("odd\udc80"))
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "model": _TEXT,
        "deployment": _TEXT,
        "tokens_in": st.one_of(st.none(), st.integers(-5, 2**63 + 5)),
        "cached_tokens_in": st.one_of(st.none(), st.integers(0, 10**6)),
        "cache_write_tokens_in": st.one_of(st.none(), st.booleans(), st.integers(-5, 2**63 + 5)),
        "cost": st.one_of(st.none(), st.floats(allow_nan=True)),
        "cache_hit": st.one_of(st.none(), st.booleans()),
        "failover_path": st.one_of(st.none(), st.lists(_TEXT, max_size=3), st.just(5)),
        "error_code": _TEXT,
        # (a reason too long, or not text: cut or unknown, the same one by one as batched)
        "finish_reason": st.one_of(_TEXT, st.text(min_size=33, max_size=40), st.integers(0, 3)),
    },
)


@st.composite
def batches(draw: st.DrawFn) -> list[list[Start | Finish]]:
    """Batches of finished starts, started ones, and finishes of rows an earlier batch left started
    (a finish whose start is still queued merges into it: it never reaches a batch on its own)."""
    result: list[list[Start | Finish]] = []
    committed_open: list[int] = []
    handle = 0
    for _ in range(draw(st.integers(1, 3))):
        batch: list[Start | Finish] = []
        started_here: list[int] = []
        for _ in range(draw(st.integers(0, 40))):
            handle += 1
            kind = draw(st.sampled_from(["finished", "finished", "started", "finish"]))
            if kind == "finish" and committed_open:
                batch.append(Finish(committed_open.pop(0), handle, "ok", T0 + handle, draw(_FIELDS)))
            elif kind == "started":
                batch.append(Start(handle, handle, T0 + handle, draw(_TEXT), "ada", "m"))
                started_here.append(handle)
            else:
                batch.append(finished(handle, draw(_TEXT) or f"s{handle}", draw(_FIELDS)))
        committed_open += started_here
        result.append(batch)
    return result


@pytest.mark.parametrize("batched", [True, False], ids=["many to a statement", "older SQLite"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches())
def test_any_mix_of_batches_leaves_the_rows_one_by_one_would(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, batched: bool, mix
):
    if batched and not ledger_batch.BATCHED_UPDATES:
        pytest.skip("UPDATE … FROM: SQLite 3.33+")
    monkeypatch.setattr(ledger_batch, "BATCHED_UPDATES", batched)
    folder = tmp_path_factory.mktemp("mix")
    together, _ = written(folder / "a.sqlite3", mix, batch_writer)
    alone, _ = written(folder / "b.sqlite3", mix, one_by_one)
    assert together == alone


@pytest.mark.parametrize(
    "batch",
    [
        [finished(1, "a", {**OUTCOME, "tokens_in": -5}), finished(2, "bad\udc80")],  # refused for another row
        [finished(1, "a", {**OUTCOME, "tokens_in": -5, "failover_path": 5}), finished(2, "b")],  # refused itself
    ],
    ids=["statement refused for another row", "details that cannot be cleaned"],
)
def test_each_warning_of_cleaning_a_row_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, batch: list[Start | Finish]
):
    written(tmp_path / "a.sqlite3", [batch], batch_writer)
    assert caplog.text.count("plausible token count") == 1


def running(handle: int, session: str) -> Start:
    """A start whose request is still running when the writer takes it: a row left started."""
    return Start(handle, handle, T0 + handle, session, "ada", "m", tenant="acme", trace_id=f"t{handle}")


def outcome(handle: int, fields: dict[str, Any] | None = None, status: str = "ok") -> Finish:
    """The finish of ``running(handle)``, in a later batch."""
    return Finish(handle, 1000 + handle, status, T0 + handle + 0.5, dict(OUTCOME if fields is None else fields))


@pytest.mark.skipif(not ledger_batch.BATCHED_UPDATES, reason="UPDATE … FROM: SQLite 3.33+")
def test_started_rows_and_their_outcomes_go_many_to_a_statement(tmp_path: Path):
    # Requests longer than the writer's window (every real model's) are a start in one batch and
    # an outcome in a later one: both kinds go many to a statement, as finished rows do.
    starts: list[Start | Finish] = [running(n, f"s{n}") for n in range(1, 51)]
    ends: list[Start | Finish] = [outcome(n) for n in range(50, 0, -1)]  # in any order
    ends[7] = outcome(43, {**OUTCOME, "error_code": "TIMEOUT", "tokens_in": None}, status="error")
    together, inserts = written(tmp_path / "a.sqlite3", [starts, ends], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [starts, ends], one_by_one)
    assert together == alone and len(together) == 50
    assert len(inserts) == 3  # 32 + 16 + 2 rows, their ids read from each statement's last
    _, updates = written(tmp_path / "c.sqlite3", [starts, ends], batch_writer, kind="UPDATE")
    assert len(updates) == 3  # 32 + 16 + 2 outcomes
    assert [row["session_id"] for row in together] == [f"s{n}" for n in range(1, 51)]
    assert together[42]["status"] == "error" and together[42]["error_code"] == "TIMEOUT"
    assert all(row["status"] == "ok" and row["tokens_out"] == 16 for row in together if row["session_id"] != "s43")


def test_one_refused_outcome_leaves_the_others_of_its_statement_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    starts: list[Start | Finish] = [running(n, f"s{n}") for n in range(1, 9)]
    ends: list[Start | Finish] = [outcome(n) for n in range(1, 9)]
    ends[3] = outcome(4, {**OUTCOME, "model": "odd\udc80model"})  # refused: its status alone
    ends[5] = outcome(6, {"failover_path": 5})  # details that cannot be cleaned: its status alone
    together, _ = written(tmp_path / "a.sqlite3", [starts, ends], batch_writer)
    assert caplog.text.count("recording its status only") == 2  # each said once
    alone, _ = written(tmp_path / "b.sqlite3", [starts, ends], one_by_one)
    assert together == alone and [row["status"] for row in together] == ["ok"] * 8
    assert together[3]["tokens_out"] is None and together[5]["tokens_out"] is None
    assert all(row["tokens_out"] == 16 for index, row in enumerate(together) if index not in (3, 5))


def test_an_outcome_for_a_row_changed_meanwhile_by_another_tool_is_said_and_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with Ledger(tmp_path / "a.sqlite3") as ledger:
        starts: list[Start | Finish] = [running(n, session) for n, session in enumerate("abcd", 1)]
        rowids = ledger.transaction(lambda conn: write_batch(conn, starts, {}, HOST))
        by_hand = [
            "UPDATE requests SET status = 'cancelled' WHERE session_id = 'b'",
            "UPDATE requests SET status = 'ok', end_time = 1 WHERE session_id = 'c'",  # the same status as ours
            "DELETE FROM requests WHERE session_id = 'd'",
        ]
        ledger.transaction(lambda conn: [conn.execute(statement) for statement in by_hand])
        ledger.transaction(lambda conn: write_batch(conn, [outcome(n) for n in range(1, 5)], rowids, HOST))
        rows = rows_of(ledger)
    assert [(row["session_id"], row["status"], row["tokens_out"]) for row in rows] == [
        ("a", "ok", 16), ("b", "cancelled", None), ("c", "ok", None)
    ]  # fmt: skip
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        f"ledger row {rowids[2]} is already cancelled; its outcome ok was not recorded (the first outcome wins)",
        f"ledger row {rowids[3]} is already ok; its outcome ok was not recorded (the first outcome wins)",
        f"ledger row {rowids[4]} no longer exists; its outcome ok was not recorded (the first outcome wins)",
    ]


def test_started_rows_get_their_own_ids_after_the_last_rows_were_deleted(tmp_path: Path):
    # The ids of a statement's started rows are read from its last id: AUTOINCREMENT never gives a
    # deleted row's id again, so the rows after a deletion still take the ids after the highest ever.
    def with_deletion(writer: Any) -> Any:
        def write(conn: sqlite3.Connection, ops: list[Start | Finish], rowids: dict[int, int]) -> dict[int, int]:
            conn.execute("DELETE FROM requests WHERE id > 3 AND status != 'started'")  # the newest, removed by hand
            return writer(conn, ops, rowids)

        return write

    first: list[Start | Finish] = [finished(n, f"f{n}") for n in range(1, 7)]
    second: list[Start | Finish] = [running(n, f"s{n}") for n in range(7, 12)]
    third: list[Start | Finish] = [outcome(n, status="error" if n % 2 else "ok") for n in range(7, 12)]
    together, _ = written(tmp_path / "a.sqlite3", [first, second, third], with_deletion(batch_writer))
    alone, _ = written(tmp_path / "b.sqlite3", [first, second, third], with_deletion(one_by_one))
    assert together == alone
    assert [(row["id"], row["session_id"], row["status"]) for row in together] == [
        (1, "f1", "ok"), (2, "f2", "ok"), (3, "f3", "ok"),
        (7, "s7", "error"), (8, "s8", "ok"), (9, "s9", "error"), (10, "s10", "ok"), (11, "s11", "error"),
    ]  # fmt: skip


def test_an_older_sqlite_writes_outcomes_a_statement_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ledger_batch, "BATCHED_UPDATES", False)  # as with SQLite before 3.33: no UPDATE … FROM
    starts: list[Start | Finish] = [running(1, "a"), finished(2, "b"), running(3, "c"), finished(4, "d")]
    ends: list[Start | Finish] = [outcome(3), finished(5, "e"), outcome(1, status="error")]
    together, _ = written(tmp_path / "a.sqlite3", [starts, ends], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [starts, ends], one_by_one)
    _, updates = written(tmp_path / "c.sqlite3", [starts, ends], batch_writer, kind="UPDATE")
    assert together == alone and len(updates) == 2 and "FROM (VALUES" not in updates[0]
    assert [(row["session_id"], row["status"]) for row in together] == [
        ("a", "error"), ("b", "ok"), ("c", "ok"), ("d", "ok"), ("e", "ok")
    ]  # fmt: skip


def test_an_outcome_in_the_same_list_as_its_start_finishes_that_row(tmp_path: Path):
    # The writer merges such a pair before it reaches a batch; write_batch still finishes the row if
    # given both (as the one-by-one way did), rather than call its start unwritten.
    batch: list[Start | Finish] = [finished(1, "a"), running(2, "b"), outcome(2, status="error"), running(3, "c")]
    together, _ = written(tmp_path / "a.sqlite3", [batch], batch_writer)
    alone, _ = written(tmp_path / "b.sqlite3", [batch], one_by_one)
    assert together == alone
    assert [(row["session_id"], row["status"]) for row in together] == [("a", "ok"), ("b", "error"), ("c", "started")]


def test_an_outcome_whose_end_time_is_no_number_is_not_called_unrecorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with Ledger(tmp_path / "a.sqlite3") as ledger:
        rowids = ledger.transaction(lambda conn: write_batch(conn, [running(1, "a"), running(2, "b")], {}, HOST))
        ledger.transaction(lambda conn: conn.execute("DELETE FROM requests WHERE session_id = 'b'"))  # one short
        nan = outcome(1)
        nan.when = float("nan")  # stored as NULL
        ledger.transaction(lambda conn: write_batch(conn, [nan, outcome(2)], rowids, HOST))
        [row] = rows_of(ledger)
    assert (row["session_id"], row["status"], row["end_time"]) == ("a", "ok", None)
    assert [record.getMessage() for record in caplog.records] == [
        f"ledger row {rowids[2]} no longer exists; its outcome ok was not recorded (the first outcome wins)"
    ]
