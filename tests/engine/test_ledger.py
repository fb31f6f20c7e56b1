"""The usage ledger: row lifecycle, readers and their dtypes, budgets, migrations, concurrency
(threads and processes on one file) and crash recovery (a SIGKILLed writer)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtl_nb.engine import ledger as ledger_module
from gtl_nb.engine import ledger_migrations
from gtl_nb.engine.ledger import (
    Ledger,
    LedgerBusyError,
    LedgerStateError,
    LedgerValueError,
    default_ledger_path,
    finish_fields,
    process_alive,
    process_identity,
    row_filter,
)
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, DTYPES
from gtl_nb.protocol.messages import Done, Error, Usage

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "ledger_helpers" / "worker.py"
T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z, exactly representable


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.sqlite3"


@pytest.fixture
def ledger(path: Path):
    with Ledger(path) as opened:
        yield opened


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read or write the file with plain sqlite3, independently of the ledger's code."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# -- lifecycle ---------------------------------------------------------------------------------


def test_start_inserts_a_started_row_with_the_writer_identity(ledger: Ledger):
    row_id = ledger.start(
        session_id="sess_1", user="ada", deployment="oa", provider_type="openai", model="gpt-4o", now=T0
    )
    row = ledger.row(row_id)
    assert row is not None
    assert row["status"] == "started"
    assert row["time"] == T0
    assert row["time_utc"] == "2023-11-14T22:13:20.250Z"
    assert row["end_time"] is None
    assert row["pid"] == os.getpid()
    assert row["proc_start"] == process_identity(os.getpid())
    assert row["proc_start"] is not None
    assert row["hostname"] == ledger.hostname


def test_every_column_round_trips_through_start_and_finish(ledger: Ledger):
    row_id = ledger.start(
        session_id="sess_2",
        user="ada",
        deployment="primary",
        provider_type="openai",
        model="gpt-4o",
        coalesced=True,
        failover_path=["primary"],
        tenant="acme",
        key_id="key_7",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        now=T0,
    )
    ledger.finish(
        row_id,
        status="error",
        error_code="RATE_LIMIT",
        deployment="backup",
        provider_type="anthropic",
        model="claude-x",
        tokens_in=120,
        tokens_out=45,
        cached_tokens_in=100,
        cache_write_tokens_in=30,
        reasoning_tokens_out=7,
        cost=0.0125,
        ttft_ms=210.5,
        latency_ms=1500.25,
        cache_hit=True,
        failover_path=["primary", "backup"],
        finish_reason="length",  # (stored as given: the engine gives it for ok rows only)
        usage_estimated=True,
        now=T0 + 1.5,
    )
    expected = {
        "id": row_id,
        "time": T0,
        "time_utc": "2023-11-14T22:13:20.250Z",
        "end_time": T0 + 1.5,
        "session_id": "sess_2",
        "user": "ada",
        "deployment": "backup",
        "provider_type": "anthropic",
        "model": "claude-x",
        "status": "error",
        "error_code": "RATE_LIMIT",
        "tokens_in": 120,
        "tokens_out": 45,
        "cached_tokens_in": 100,
        "reasoning_tokens_out": 7,
        "cost": 0.0125,
        "ttft_ms": 210.5,
        "latency_ms": 1500.25,
        "cache_hit": True,
        "coalesced": True,
        "failover_path": ["primary", "backup"],
        "pid": os.getpid(),
        "proc_start": process_identity(os.getpid()),
        "hostname": ledger.hostname,
        "tenant": "acme",
        "key_id": "key_7",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "cache_write_tokens_in": 30,
        "finish_reason": "length",
        "usage_estimated": True,
    }
    assert ledger.row(row_id) == expected
    # The same values through pandas, converted to the documented dtypes.
    frame = ledger.to_dataframe()
    assert len(frame) == 1
    record = frame.iloc[0]
    assert record["time"] == pd.Timestamp("2023-11-14T22:13:20.250Z")
    assert record["end_time"] == pd.Timestamp("2023-11-14T22:13:21.750Z")
    for name, value in expected.items():
        if name not in ("time", "end_time", "time_utc"):
            assert record[name] == value, name
    # And through plain SQL: the JSON path and the 0/1 flags as documented.
    assert raw(ledger.path, "SELECT failover_path, cache_hit, coalesced FROM requests") == [
        ('["primary", "backup"]', 1, 1)
    ]


def test_finish_keeps_start_values_it_is_not_given(ledger: Ledger):
    row_id = ledger.start(
        session_id="s", deployment="oa", provider_type="openai", model="m", failover_path=["oa"], coalesced=True, now=T0
    )
    ledger.finish(row_id, status="ok", now=T0 + 2)
    row = ledger.row(row_id)
    assert row is not None
    assert (row["deployment"], row["provider_type"], row["model"]) == ("oa", "openai", "m")
    assert row["failover_path"] == ["oa"]
    assert row["coalesced"] is True
    assert row["tokens_in"] is None and row["cost"] is None  # unknown stays NULL, never 0
    assert row["latency_ms"] == 2000.0  # no engine latency given: wall clock since start


def test_finishing_twice_raises_and_keeps_the_first_outcome(ledger: Ledger):
    row_id = ledger.start(session_id="s", now=T0)
    ledger.finish(row_id, status="ok", tokens_in=1, tokens_out=2, now=T0 + 1)
    with pytest.raises(LedgerStateError, match="already ok"):
        ledger.finish(row_id, status="error", error_code="INTERNAL", tokens_in=99, now=T0 + 2)
    row = ledger.row(row_id)
    assert row is not None
    assert (row["status"], row["tokens_in"], row["error_code"], row["end_time"]) == ("ok", 1, None, T0 + 1)


def test_finishing_an_unknown_row_raises(ledger: Ledger):
    with pytest.raises(LedgerStateError, match="does not exist"):
        ledger.finish(12345, status="ok")


@pytest.mark.parametrize("status", ["started", "done", "OK", ""])
def test_finish_rejects_a_status_that_is_not_final(ledger: Ledger, status: str):
    row_id = ledger.start(session_id="s")
    with pytest.raises(LedgerValueError, match="finish status"):
        ledger.finish(row_id, status=status)
    row = ledger.row(row_id)
    assert row is not None and row["status"] == "started"


@pytest.mark.parametrize("status", ["ok", "error", "cancelled", "interrupted"])
def test_each_final_status_is_accepted(ledger: Ledger, status: str):
    row_id = ledger.start(session_id="s")
    ledger.finish(row_id, status=status)
    row = ledger.row(row_id)
    assert row is not None and row["status"] == status


def test_a_closed_ledger_refuses_calls(path: Path):
    ledger = Ledger(path)
    ledger.close()
    with pytest.raises(LedgerStateError, match="closed"):
        ledger.start(session_id="s")
    with pytest.raises(LedgerStateError, match="closed"):
        ledger.totals()


def test_memory_ledger_works_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with Ledger(":memory:") as ledger:
        row_id = ledger.start(session_id="s", user="u", now=T0)
        ledger.finish(row_id, status="ok", cost=0.5, now=T0)
        assert ledger.totals("u") == (1, 0, 0.5)
        assert len(ledger.to_dataframe()) == 1
    assert list(tmp_path.iterdir()) == []


def test_finish_fields_map_gtl_events_to_outcomes():
    usage = Usage(
        session_id="s",
        tokens_in=10,
        tokens_out=5,
        cached_tokens_in=2,
        cache_write_tokens_in=3,
        reasoning_tokens_out=1,
        cost=0.25,
        cache_hit=True,
    )
    done = Done(session_id="s", provider="oa", model="gpt", ttft_ms=12.0, latency_ms=80.0, finish_reason="length")
    assert finish_fields(done, usage) == {
        "status": "ok",
        "deployment": "oa",
        "model": "gpt",
        "ttft_ms": 12.0,
        "latency_ms": 80.0,
        "finish_reason": "length",
        "tokens_in": 10,
        "tokens_out": 5,
        "cached_tokens_in": 2,
        "cache_write_tokens_in": 3,
        "reasoning_tokens_out": 1,
        "cost": 0.25,
        "cache_hit": True,
    }
    cancelled = Error(session_id="s", code="CANCELLED", message="bye")
    assert finish_fields(cancelled) == {"status": "cancelled", "error_code": "CANCELLED", "deployment": None}
    failed = Error(session_id="s", code="OVERLOADED", message="busy", provider="an")
    assert finish_fields(failed) == {"status": "error", "error_code": "OVERLOADED", "deployment": "an"}


# -- readers -----------------------------------------------------------------------------------

EXPECTED_DTYPES = {
    "id": "Int64",
    "time": "datetime64[ns, UTC]",
    "end_time": "datetime64[ns, UTC]",
    "session_id": "string",
    "user": "string",
    "deployment": "string",
    "provider_type": "string",
    "model": "string",
    "status": "string",
    "error_code": "string",
    "finish_reason": "string",  # (added in version 5: a DataFrame shows it beside status and error_code)
    "tokens_in": "Int64",
    "tokens_out": "Int64",
    "cached_tokens_in": "Int64",
    "cache_write_tokens_in": "Int64",  # (the table's last column: a DataFrame shows it beside its kin)
    "reasoning_tokens_out": "Int64",
    "cost": "float64",
    "usage_estimated": "boolean",  # (added in version 7: a DataFrame shows it beside the cost)
    "ttft_ms": "float64",
    "latency_ms": "float64",
    "cache_hit": "boolean",
    "coalesced": "boolean",
    "failover_path": "object",
    "pid": "Int64",
    "proc_start": "string",
    "hostname": "string",
    "tenant": "string",
    "key_id": "string",
    "trace_id": "string",
}


def test_to_dataframe_dtypes_are_fixed_with_and_without_rows(ledger: Ledger):
    empty = ledger.to_dataframe()
    assert {name: str(dtype) for name, dtype in empty.dtypes.items()} == EXPECTED_DTYPES
    ledger.start(session_id="in flight", now=T0)  # NULLs everywhere but the start fields
    finished = ledger.start(session_id="done", now=T0)
    ledger.finish(finished, status="ok", tokens_in=3, cost=None, now=T0 + 1)
    frame = ledger.to_dataframe()
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EXPECTED_DTYPES
    assert pd.isna(frame.loc[0, "end_time"]) and pd.isna(frame.loc[0, "tokens_in"])
    assert pd.isna(frame.loc[1, "cost"])
    assert frame.loc[1, "tokens_in"] == 3


def test_schema_dtypes_are_the_documented_ones():
    assert DTYPES == EXPECTED_DTYPES


def test_to_dataframe_filters_by_value_list_null_and_time(ledger: Ledger):
    ids = {}
    for offset, (user, status) in enumerate([("ada", "ok"), ("bob", "error"), ("ada", "cancelled")]):
        ids[offset] = ledger.start(session_id=f"s{offset}", user=user, now=T0 + offset * 100)
        ledger.finish(ids[offset], status=status, error_code=None if status == "ok" else "X", now=T0 + 1)
    ledger.start(session_id="s3", user="cy", now=T0 + 300)

    def sessions(**filters) -> list[str]:
        return list(ledger.to_dataframe(**filters)["session_id"])

    assert sessions(user="ada") == ["s0", "s2"]
    assert sessions(status=["error", "cancelled"]) == ["s1", "s2"]
    assert sessions(error_code=None) == ["s0", "s3"]
    assert sessions(since=T0 + 100, until=T0 + 300) == ["s1", "s2"]
    assert sessions(since=datetime.fromtimestamp(T0 + 200, timezone.utc)) == ["s2", "s3"]
    assert sessions(user="ada", status="ok") == ["s0"]
    assert sessions(status=[]) == []
    with pytest.raises(LedgerValueError, match="unknown ledger filter 'colour'"):
        ledger.to_dataframe(colour="red")
    # a value no column holds (a dict from a query's JSON): the caller's mistake, never a failing store
    for odd in ({"$ne": 1}, [{"$ne": 1}], object()):
        with pytest.raises(LedgerValueError, match="the filter 'model' takes text or a number"):
            ledger.to_dataframe(model=odd)
        with pytest.raises(LedgerValueError, match="the filter 'model' takes text or a number"):
            row_filter({"model": odd})


def test_totals_count_every_row_and_sum_only_known_costs(ledger: Ledger):
    def add(user: str, when: float, status: str | None, tokens: tuple, cost: float | None) -> None:
        row_id = ledger.start(session_id="s", user=user, now=when)
        if status is not None:
            ledger.finish(row_id, status=status, tokens_in=tokens[0], tokens_out=tokens[1], cost=cost, now=when)

    add("ada", T0, "ok", (10, 5), 0.5)
    add("ada", T0 + 10, "ok", (None, 7), None)  # unknown cost and input count
    add("ada", T0 + 20, None, (None, None), None)  # still in flight
    add("bob", T0 + 30, "error", (1, 0), 0.25)
    add("ada", T0 - 10, "ok", (1000, 1000), 9.0)  # before the window
    assert ledger.totals("ada", since=T0) == (3, 22, 0.5)
    assert ledger.totals(since=T0) == (4, 23, 0.75)
    assert ledger.totals("ada", since=T0, until=T0 + 10) == (1, 15, 0.5)
    assert ledger.totals() == (5, 2023, 9.75)
    assert ledger.totals("nobody") == (0, 0, 0.0)


def test_spend_today_sums_the_utc_day_of_now(ledger: Ledger):
    midnight = datetime(2024, 3, 10, tzinfo=timezone.utc).timestamp()
    for when, cost in [
        (midnight - 1, 4.0),
        (midnight, 1.0),
        (midnight + 3600, 0.5),
        (midnight + 86399, 0.25),
        (midnight + 86400, 8.0),
    ]:
        row_id = ledger.start(session_id="s", user="ada", now=when)
        ledger.finish(row_id, status="ok", cost=cost, now=when)
    other = ledger.start(session_id="s", user="bob", now=midnight + 60)
    ledger.finish(other, status="ok", cost=16.0, now=midnight + 60)
    assert ledger.spend_today("ada", now=midnight + 12 * 3600) == 1.75
    assert ledger.spend_today("ada", now=midnight) == 1.75
    assert ledger.spend_today("ada", now=midnight - 0.5) == 4.0
    assert ledger.spend_today(None, now=midnight + 5) == 17.75


def test_spend_today_uses_the_ledger_clock_without_now(path: Path):
    with Ledger(path, clock=lambda: T0) as ledger:
        row_id = ledger.start(session_id="s", user="ada")
        ledger.finish(row_id, status="ok", cost=2.0)
        assert ledger.spend_today("ada") == 2.0


# -- file, migrations ----------------------------------------------------------------------------


def test_opening_migrates_an_empty_file_to_the_documented_schema(tmp_path: Path):
    path = tmp_path / "empty.sqlite3"
    path.touch()
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS)
    columns = [row[1] for row in raw(path, "PRAGMA table_info(requests)")]
    assert columns == list(COLUMN_NAMES)
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_is_idempotent_and_keeps_rows(path: Path):
    with Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", now=T0)
        ledger.finish(row_id, status="ok", cost=1.0, now=T0)
    schema = raw(path, "SELECT sql FROM sqlite_master ORDER BY name")
    for _ in range(2):
        with Ledger(path) as ledger:
            assert ledger.schema_version == len(ledger_migrations.MIGRATIONS)
            assert ledger.totals() == (1, 0, 1.0)
    assert raw(path, "SELECT sql FROM sqlite_master ORDER BY name") == schema


def test_a_later_migration_is_applied_to_an_existing_file(path: Path, monkeypatch: pytest.MonkeyPatch):
    with Ledger(path) as ledger:
        ledger.start(session_id="old", now=T0)
    applied = []

    def add_region(conn: sqlite3.Connection) -> None:
        applied.append(True)
        conn.execute("ALTER TABLE requests ADD COLUMN region TEXT")

    monkeypatch.setattr(ledger_migrations, "MIGRATIONS", (*ledger_migrations.MIGRATIONS, add_region))
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS)  # the released ones + 1
        assert list(ledger.to_dataframe()["session_id"]) == ["old"]
    with Ledger(path):
        pass
    assert applied == [True]  # once, not on every open
    assert "region" in [row[1] for row in raw(path, "PRAGMA table_info(requests)")]


def test_a_file_from_a_newer_version_is_used_as_is(path: Path, caplog: pytest.LogCaptureFixture):
    with Ledger(path):
        pass
    raw(path, "ALTER TABLE requests ADD COLUMN future TEXT DEFAULT 'x'")
    newer = len(ledger_migrations.MIGRATIONS) + 1
    raw(path, f"PRAGMA user_version = {newer}")
    with caplog.at_level("WARNING", logger="gtl_nb"), Ledger(path) as ledger:
        row_id = ledger.start(session_id="s")
        ledger.finish(row_id, status="ok")
        assert ledger.schema_version == newer
        assert list(ledger.to_dataframe().columns) == list(EXPECTED_DTYPES)
    assert "newer than this gtl_nb knows" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_new_ledger_file_is_private_to_its_owner(path: Path):
    with Ledger(path) as ledger:
        ledger.start(session_id="s")
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o077 == 0


def test_default_ledger_path_follows_each_platform():
    home = Path("/home/ada")
    name = Path("gtl_nb") / "ledger.sqlite3"
    assert default_ledger_path({}, "Linux", home) == home / ".local/share" / name
    assert default_ledger_path({"XDG_DATA_HOME": "/data"}, "Linux", home) == Path("/data") / name
    assert default_ledger_path({"XDG_DATA_HOME": "relative"}, "Linux", home) == home / ".local/share" / name
    assert default_ledger_path({}, "Darwin", home) == home / "Library/Application Support" / name
    assert default_ledger_path({"LOCALAPPDATA": "C:/Users/ada/AppData/Local"}, "Windows", home) == (
        Path("C:/Users/ada/AppData/Local") / name
    )
    assert default_ledger_path({}, "Windows", home) == home / "AppData/Local" / name


def test_ledger_without_a_path_uses_the_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Ledger() as ledger:
        ledger.start(session_id="s")
        assert ledger.path == default_ledger_path()
    assert (tmp_path / "xdg" / "gtl_nb" / "ledger.sqlite3").exists()


# -- locking -----------------------------------------------------------------------------------


def test_a_busy_file_is_retried_until_the_lock_is_released(path: Path, monkeypatch: pytest.MonkeyPatch):
    ledger = Ledger(path, busy_timeout=0.01)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's writer holding the lock
    backoffs = []

    def release_on_first_backoff(seconds: float) -> None:
        backoffs.append(seconds)
        if blocker.in_transaction:
            blocker.execute("COMMIT")

    monkeypatch.setattr(ledger_module.time, "sleep", release_on_first_backoff)
    row_id = ledger.start(session_id="patient")
    assert backoffs, "the first attempt should have met the lock"
    row = ledger.row(row_id)
    assert row is not None and row["session_id"] == "patient"
    blocker.close()
    ledger.close()


def test_a_lock_held_past_the_deadline_raises_a_ledger_error_not_sqlite_s(path: Path):
    ledger = Ledger(path, busy_timeout=0.01, retry_for=0.1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerBusyError) as caught:
            ledger.start(session_id="s")
        assert "database is locked" not in str(caught.value)
        assert not isinstance(caught.value, sqlite3.Error)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        ledger.close()


def test_a_lock_another_process_holds_is_said_while_waiting_and_named_when_given_up(
    path: Path, caplog: pytest.LogCaptureFixture
):
    """Another process (a ``sqlite3`` shell left in a transaction, a backup) holds the ledger's write lock:
    a WARNING says the wait once, before the end, and the error names the file, the process that has it
    open and what to do — words, not an ``INTERNAL`` code (what ``gtl serve`` printed, unable to start)."""
    Ledger(path).close()  # the file and its schema exist, as for a gateway started before
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with (
            caplog.at_level("WARNING", logger="gtl_nb"),
            pytest.raises(LedgerBusyError) as caught,
            Ledger(path, busy_timeout=0.01, retry_for=1.0) as ledger,  # opening waits for the lock too
        ):
            ledger.start(session_id="s")
    finally:
        holder.communicate("")  # its stdin closed: it ends, its transaction with it
    shown = str(caught.value)
    assert str(path) in shown and "write lock" in shown and f"pid {holder.pid} (python" in shown
    assert "try again" in shown and not shown.startswith("INTERNAL")
    waits = [record.getMessage() for record in caplog.records if "waiting for the write lock" in record.getMessage()]
    assert len(waits) == 1 and str(path) in waits[0] and f"pid {holder.pid}" in waits[0]


def test_threads_share_one_ledger_and_open_their_own(path: Path):
    shared = Ledger(path)
    threads_shared, threads_own, count = 6, 2, 60
    barrier = threading.Barrier(threads_shared + threads_own)
    failures: list[BaseException] = []

    def work(tag: str, own: bool) -> None:
        try:
            ledger = Ledger(path) if own else shared
            barrier.wait()
            for index in range(count):
                row_id = ledger.start(session_id=f"{tag}-{index}", user=tag)
                ledger.finish(row_id, status="ok", tokens_in=1, cost=0.01)
                if index % 20 == 0:
                    ledger.totals(tag)
                    ledger.to_dataframe(user=tag)
            if own:
                ledger.close()
        except BaseException as exc:  # reported below: a thread's exception would vanish otherwise
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(f"t{i}", i >= threads_shared)) for i in range(threads_shared + threads_own)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    total = (threads_shared + threads_own) * count
    frame = shared.to_dataframe()
    assert len(frame) == total
    assert set(frame["status"]) == {"ok"}
    assert frame["session_id"].is_unique
    assert shared.totals() == (total, total, pytest.approx(total * 0.01))
    shared.close()


def test_four_processes_write_one_file_at_once_without_lock_errors(tmp_path: Path):
    path = tmp_path / "shared.sqlite3"  # not created yet: the workers also race to create and migrate it
    per_worker, tags = 200, ["p0", "p1", "p2", "p3"]
    workers = [spawn("write", str(path), tag, str(per_worker)) for tag in tags]
    try:
        for worker in workers:
            assert worker.stdout is not None
            ready = worker.stdout.readline().strip()
            assert ready == "ready", worker.stderr.read() if worker.stderr else ""
        for worker in workers:  # release them together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [worker.communicate(timeout=60) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err
        assert out.strip() == "done"
        assert "locked" not in err.lower() and "busy" not in err.lower(), err
        assert "Traceback" not in err, err
    rows = raw(path, "SELECT session_id, status, end_time IS NOT NULL FROM requests")
    assert len(rows) == len(tags) * per_worker
    assert {status for _, status, _ in rows} == {"ok"}
    assert all(ended for _, _, ended in rows)
    assert sorted(session for session, _, _ in rows) == sorted(
        f"{tag}-{index}" for tag in tags for index in range(per_worker)
    )
    with Ledger(path) as ledger:
        assert ledger.totals("p2") == (per_worker, sum(range(per_worker)) + per_worker, pytest.approx(0.2))


# -- crash recovery ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_reopening_marks_only_the_killed_process_rows_interrupted(path: Path):
    with Ledger(path) as ledger:
        hostname = ledger.hostname
    victim = spawn("hold", str(path), "victim")
    survivor = spawn("hold", str(path), "survivor")
    try:
        assert victim.stdout is not None and survivor.stdout is not None
        victim_row = int(victim.stdout.readline())
        survivor_row = int(survivor.stdout.readline())
        # Rows another host wrote: their pids mean nothing here, even the victim's.
        for pid in (victim.pid, 999_999_999):
            raw(
                path,
                "INSERT INTO requests (time, time_utc, session_id, status, pid, proc_start, hostname) "
                "VALUES (?, ?, 'remote', 'started', ?, 'linux:other:1', ?)",
                (T0, "2023-11-14T22:13:20.250Z", pid, hostname + "-elsewhere"),
            )
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        assert victim.returncode == -signal.SIGKILL
        with Ledger(path) as ledger:
            statuses = {row.id: row.status for row in ledger.to_dataframe().itertuples()}
            assert statuses[victim_row] == "interrupted"
            assert statuses[survivor_row] == "started"
            remote = ledger.to_dataframe(session_id="remote")
            assert list(remote["status"]) == ["started", "started"]
            killed = ledger.row(victim_row)
            assert killed is not None and killed["end_time"] is not None
            assert ledger.recover() == 0  # nothing left to judge
            # The survivor can still finish its row: recovery did not touch it.
            ledger.finish(survivor_row, status="ok")
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.stdin.close() if process.stdin else None
                process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def test_a_reused_pid_counts_as_a_gone_process(ledger: Ledger, path: Path):
    mine = ledger.start(session_id="mine")
    # A row written by an earlier process that had our pid (other start time / boot).
    raw(
        path,
        "INSERT INTO requests (time, time_utc, session_id, status, pid, proc_start, hostname) "
        "VALUES (?, ?, 'previous life', 'started', ?, 'linux:another-boot:42', ?)",
        (T0, "2023-11-14T22:13:20.250Z", os.getpid(), ledger.hostname),
    )
    assert ledger.recover() == 1
    statuses = dict(zip(ledger.to_dataframe()["session_id"], ledger.to_dataframe()["status"], strict=True))
    assert statuses == {"mine": "started", "previous life": "interrupted"}
    ledger.finish(mine, status="ok")


def _dead_row(path: Path, hostname: str, session_id: str, **columns: object) -> None:
    """A ``started`` row of an earlier process that had this pid (another identity: it is gone)."""
    names = ["time", "time_utc", "session_id", "status", "pid", "proc_start", "hostname", *columns]
    values = [T0, "2023-11-14T22:13:20.250Z", session_id, "started", os.getpid(), "linux:gone:7", hostname]
    raw(
        path,
        f"INSERT INTO requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        (*values, *columns.values()),
    )


def test_recovery_hands_over_the_rows_it_interrupted(ledger: Ledger, path: Path):
    live = ledger.start(session_id="live", user="bo")
    _dead_row(path, ledger.hostname, "killed-1", user="ann", model="gpt-4o-mini", tenant="acme", key_id="jti-1")
    _dead_row(path, ledger.hostname, "killed-2", user="cy", deployment="openai", provider_type="openai")
    _dead_row(path, ledger.hostname + "-elsewhere", "remote")  # another host's: never judged, never handed over
    handed: list[list[dict[str, object]]] = []
    stop = ledger.interrupted.follow(handed.append)
    assert handed == []  # nothing was recovered when the ledger opened
    assert ledger.recover() == 2
    (rows,) = handed
    assert [row["session_id"] for row in rows] == ["killed-1", "killed-2"]
    first, second = rows
    assert set(first) == {
        "time", "end_time", "session_id", "user", "deployment", "provider_type", "model",
        "tenant", "key_id", "trace_id", "cache_hit",
    }  # fmt: skip
    assert (first["user"], first["model"], first["tenant"], first["key_id"]) == ("ann", "gpt-4o-mini", "acme", "jti-1")
    assert (second["user"], second["deployment"], second["provider_type"]) == ("cy", "openai", "openai")
    assert first["time"] == T0 and first["cache_hit"] is False
    assert first["end_time"] == ledger.row(2)["end_time"]  # type: ignore[index]
    assert ledger.recover() == 0 and len(handed) == 1  # a row is handed over once
    stop()
    ledger.finish(live, status="ok")


def test_rows_recovered_as_the_ledger_opens_wait_for_their_listener(path: Path):
    with Ledger(path) as ledger:
        hostname = ledger.hostname
    _dead_row(path, hostname, "killed", user="ann")
    with Ledger(path) as reopened:  # opening recovers: nobody follows yet
        assert reopened.interrupted.waiting() == 1
        handed: list[list[dict[str, object]]] = []
        reopened.interrupted.follow(handed.append)
        assert [[row["session_id"] for row in batch] for batch in handed] == [["killed"]]
        assert reopened.interrupted.waiting() == 0
    with Ledger(path) as again:  # the row is interrupted now: a later opening has nothing to hand over
        assert again.interrupted.waiting() == 0


def test_process_probe_tells_live_dead_and_reused_apart():
    me = process_identity(os.getpid())
    assert me is not None
    assert process_alive(os.getpid(), me)
    assert process_alive(os.getpid(), None)  # unknown identity: a running pid is trusted
    assert not process_alive(os.getpid(), me + "-other")
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    gone = int(finished.stdout)
    if process_identity(gone) is None:  # the pid was not handed out again in between
        assert not process_alive(gone, None)
    assert not process_alive(0, None) and not process_alive(-1, None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_writes_through_its_own_connection(ledger: Ledger):
    before = ledger.start(session_id="parent-before")
    child = os.fork()
    if child == 0:  # the child: use the inherited Ledger object, then leave without cleanup
        code = 1
        try:
            row_id = ledger.start(session_id="child")
            ledger.finish(row_id, status="ok")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.finish(before, status="ok")  # the parent's connection still works after the child exited
    frame = ledger.to_dataframe()
    statuses = dict(zip(frame["session_id"], frame["status"], strict=True))
    assert statuses == {"parent-before": "ok", "child": "ok"}
    assert frame.set_index("session_id").loc["child", "pid"] == child


# -- upgrading files of earlier releases -----------------------------------------------------------

# written by the release before the request-context columns (schema version 1), with its own code
V1_FIXTURE = Path(__file__).parent / "ledger_helpers" / "ledger_v1.sqlite3"


def as_read(column: str, stored: object) -> object:
    """A stored SQL value as ``Ledger.row`` returns it (the path a list, the flags bool)."""
    if column == "failover_path":
        return None if stored is None else json.loads(str(stored))
    return bool(stored) if column in ("cache_hit", "coalesced") else stored


def test_a_ledger_of_the_previous_release_opens_upgraded_with_its_rows_intact(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    path.write_bytes(V1_FIXTURE.read_bytes())
    before = raw(path, "SELECT * FROM requests ORDER BY id")
    assert raw(path, "PRAGMA user_version") == [(1,)] and len(before) == 7
    with Ledger(path) as ledger:
        assert ledger.schema_version == len(ledger_migrations.MIGRATIONS)
        rows = ledger.rows()
        new = ledger.start(session_id="after", user="ada", tenant="acme", key_id="k1", trace_id="t1", model="m")
        ledger.finish(new, status="ok")
        assert (ledger.row(new) or {})["tenant"] == "acme"
        frame = ledger.to_dataframe()
    assert [row[1] for row in raw(path, "PRAGMA table_info(requests)")] == list(COLUMN_NAMES)
    old_columns = COLUMN_NAMES[: len(before[0])]
    for old, upgraded in zip(before, rows, strict=True):
        for name, value in zip(old_columns, old, strict=True):
            if name == "model":
                continue  # the one column migration 3 rewrites (next test)
            assert upgraded[name] == as_read(name, value), (upgraded["session_id"], name)
        assert (upgraded["tenant"], upgraded["key_id"], upgraded["trace_id"]) == (None, None, None)
        assert upgraded["cache_write_tokens_in"] is None  # not reported: NULL, never 0
        assert upgraded["finish_reason"] is None  # not recorded then
        assert upgraded["usage_estimated"] is None  # not recorded then
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EXPECTED_DTYPES


def test_the_migration_gives_every_row_one_model_name(tmp_path: Path):
    """Failed and cancelled requests of earlier releases stored ``deployment:model``, successful ones
    the bare model: one model split into several rows of a usage table by model."""
    path = tmp_path / "old.sqlite3"
    path.write_bytes(V1_FIXTURE.read_bytes())
    with Ledger(path) as ledger:
        models = {row["session_id"]: (row["deployment"], row["model"]) for row in ledger.rows()}
    assert models == {
        "sess_ok": ("badoa", "gpt-4o-mini"),
        "sess_failed": ("badoa", "gpt-4o-mini"),  # was badoa:gpt-4o-mini, badoa being its deployment
        "sess_cancelled": ("badoa", "gpt-4o-mini"),
        "sess_type_prefix": ("oa", "gpt-4o"),  # was openai:gpt-4o, openai being a provider type
        "sess_ollama": ("local", "llama3.1:8b"),  # a colon in the model's own name stays
        "sess_refused": (None, "llama3.1:8b"),  # was ollama:llama3.1:8b, refused before routing
        "sess_other_prefix": ("oa", "other:gpt-4o"),  # neither its deployment nor a type: not ours to cut
    }


def test_the_model_migration_runs_once_and_leaves_new_rows_alone(path: Path):
    with Ledger(path) as ledger:
        row_id = ledger.start(session_id="s", deployment="oa", model="oa:gpt-4o")  # a model id with a colon
    with Ledger(path) as ledger:
        assert (ledger.row(row_id) or {})["model"] == "oa:gpt-4o"


def test_rows_are_the_dicts_the_dataframe_is_built_from(ledger: Ledger):
    first = ledger.start(session_id="a", user="ada", now=T0)
    ledger.finish(first, status="ok", failover_path=["x", "y"], cache_hit=True, now=T0 + 1)
    ledger.start(session_id="b", user="bob", now=T0 + 2)
    rows = ledger.rows()
    assert rows == [ledger.row(first), ledger.row(first + 1)]
    assert [row["session_id"] for row in ledger.rows(user="bob")] == ["b"]
    pd.testing.assert_frame_equal(ledger.to_dataframe(), ledger_module.frame_from_rows(rows))
    pd.testing.assert_frame_equal(ledger.to_dataframe(status="ok"), ledger_module.frame_from_rows(rows[:1]))


def test_process_probing_lives_in_its_own_module_and_is_still_exported_here():
    from gtl_nb.engine import processes

    assert ledger_module.process_identity is processes.process_identity
    assert ledger_module.process_alive is processes.process_alive
    assert processes.own_identity() == (os.getpid(), processes.process_identity(os.getpid()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), max_size=4))
def test_the_failover_path_column_is_json_dumps_of_its_steps(steps: list[str]) -> None:
    from gtl_nb.engine.ledger import _path_json

    assert _path_json(steps) == json.dumps(steps)
    assert _path_json(None) is None
    assert _path_json("one") == json.dumps(["one"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
def test_a_bound_that_is_no_finite_time_is_refused(value):
    # NaN matched no row embedded and every row through a gateway's query: neither is what was asked
    with pytest.raises(LedgerValueError, match="since/until takes unix seconds"):
        ledger_module.bound_seconds(value)


def test_a_bound_in_other_scripts_digits_is_refused_and_eight_digits_are_a_day():
    with pytest.raises(LedgerValueError, match="since/until takes unix seconds"):
        ledger_module.bound_seconds("\u0661\u0665\u0667\u0667")  # float() takes Arabic-Indic digits
    day = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
    if sys.version_info >= (3, 11):  # (date.fromisoformat reads the basic form from Python 3.11)
        assert ledger_module.bound_seconds("20200101") == day  # a day without dashes, not 1970-08-23
    else:
        with pytest.raises(LedgerValueError):
            ledger_module.bound_seconds("20200101")
    assert ledger_module.bound_seconds("1577836800") == day and ledger_module.bound_seconds(" 1577836800.5 ") > day
