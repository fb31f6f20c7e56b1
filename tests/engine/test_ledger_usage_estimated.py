"""Schema version 7 of the SQLite ledger: ``usage_estimated``, the mark of a row whose token counts and
cost are gtl_nb's estimate rather than the provider's report (a session that ended, cancelled or failed,
after its provider was called and before it reported usage). A file of version 6 gains it with its rows
intact; its older rows read as not recorded (NULL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gtl_nb.engine import ledger_migrations
from gtl_nb.engine.ledger import FINISH_FIELDS, Ledger
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, DTYPES

T0 = 1_700_000_000.0


def test_the_column_is_a_flag_appended_by_version_7_and_read_beside_the_cost():
    assert ledger_migrations.MIGRATIONS[6].__name__ == "_m007_usage_estimated"
    assert COLUMN_NAMES.index("usage_estimated") == COLUMN_NAMES.index("finish_reason") + 1  # appended
    assert "usage_estimated" in FINISH_FIELDS and DTYPES["usage_estimated"] == "boolean"
    names = list(DTYPES)
    assert names[names.index("cost") :][:2] == ["cost", "usage_estimated"]


def test_a_file_of_version_6_gains_the_column_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "v6.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        assert ledger_migrations.migrate(conn, ledger_migrations.MIGRATIONS[:6]) == (0, 6)
        conn.execute(
            "INSERT INTO requests (time, time_utc, end_time, session_id, user, status, error_code) "
            "VALUES (?, 'then', ?, 'old', 'ada', 'cancelled', 'CANCELLED')",
            (T0, T0 + 1),
        )
        conn.execute("COMMIT")
        old_columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(requests)"))
        before = conn.execute(f"SELECT {old_columns} FROM requests").fetchall()
    finally:
        conn.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS) >= 7
        cut = ledger.start(session_id="cut", user="ada", now=T0 + 5)
        ledger.finish(cut, status="cancelled", error_code="CANCELLED", tokens_in=4, tokens_out=9, usage_estimated=True)
        answered = ledger.start(session_id="answered", user="ada", now=T0 + 7)
        ledger.finish(answered, status="ok", tokens_in=4, tokens_out=12, now=T0 + 8)
        rows = ledger.rows()
    assert [(row["session_id"], row["usage_estimated"]) for row in rows] == [
        ("old", None),  # not recorded by the release that wrote it
        ("cut", True),
        ("answered", False),
    ]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(f"SELECT {old_columns} FROM requests WHERE session_id = 'old'").fetchall() == before
    finally:
        conn.close()
