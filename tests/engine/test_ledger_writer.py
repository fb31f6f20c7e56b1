"""The ledger's writer thread: rows leave the request path, are group-committed, read back by every
reader of the file in this process, retried when the file fails, and drained at the end."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import MEMORY, Ledger, LedgerBusyError, LedgerStateError
from gtl_nb.engine.ledger_writer import LedgerWriter, acquire_writer, release_writer
from gtl_nb.engine.stores.sqlite import SqliteBudgetCounter, SqliteUsageLedger

T0 = 1_700_000_000.25
ADA = RequestContext(principal="ada", tenant="acme", key_id="k1", trace_id="t1")
WAIT = 30.0  # a bound for waiting on an event in the writer thread, never a timing assertion


class GatedLedger(Ledger):
    """A ledger whose writes wait at a gate once it is closed: the test decides when the writer's
    transaction may run, so what is queued meanwhile is deterministic."""

    def __init__(self, path: Any, **options: Any) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.statements: list[str] = []
        super().__init__(path, **options)

    def transaction(self, work, *, wait: bool = True):
        if not self.gate.is_set():
            self.waiting.set()
            if not wait:  # an attempt that waits for nothing (a loop's, the thread's): a file locked by another process
                raise LedgerBusyError("gated")
            assert self.gate.wait(WAIT)
        return super().transaction(work, wait=wait)

    def trace(self) -> None:
        """Record every statement the writer connection runs from now on."""
        super().transaction(lambda conn: conn.set_trace_callback(self.statements.append))


def start(writer: LedgerWriter, session: str, user: str = "ada", when: float = T0) -> int:
    handle = writer.start(when, session_id=session, user=user, model="m", tenant="acme")
    assert handle is not None
    return handle


def by_session(ledger: Ledger) -> dict[str, dict[str, Any]]:
    return {row["session_id"]: row for row in ledger.rows()}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


# -- group commits ------------------------------------------------------------------------------------


def test_a_request_that_ended_before_its_start_was_written_is_one_insert(path: Path):
    ledger = GatedLedger(path)
    writer = LedgerWriter(ledger)
    try:
        ledger.trace()
        ledger.gate.clear()
        first = start(writer, "first")  # taken by the writer, which now waits at the gate
        assert ledger.waiting.wait(WAIT)
        second = start(writer, "second", when=T0 + 1)
        writer.finish(second, "ok", T0 + 2, {"tokens_in": 3, "cost": 0.5, "deployment": "oa"})
        writer.finish(first, "error", T0 + 3, {"error_code": "TIMEOUT"})
        ledger.gate.set()
        writer.flush()
    finally:
        writer.close()
    inserts = [s for s in ledger.statements if s.startswith("INSERT INTO requests")]
    updates = [s for s in ledger.statements if s.startswith("UPDATE requests")]
    begins = [s for s in ledger.statements if s.startswith("BEGIN")]
    assert len(inserts) == 2 and len(updates) == 1  # "second" was one INSERT of its finished row
    assert len(begins) == 2  # two group commits for four operations
    rows = by_session(ledger)
    assert (rows["second"]["status"], rows["second"]["tokens_in"], rows["second"]["deployment"]) == ("ok", 3, "oa")
    assert (rows["first"]["status"], rows["first"]["error_code"]) == ("error", "TIMEOUT")
    assert rows["first"]["id"] < rows["second"]["id"]  # ids still follow the starts' order
    ledger.close()


def test_a_busy_writer_gathers_a_window_of_work_into_one_commit(path: Path):
    ledger = GatedLedger(path)
    writer = LedgerWriter(ledger, group_commit=1.0)
    try:
        ledger.trace()
        start(writer, "wakes the idle writer")
        writer.flush()  # committed at once: the writer is busy now, looking again in a second
        for number in range(5):
            start(writer, f"later-{number}", when=T0 + number)
            time.sleep(0.02)  # one commit each at the old 5 ms window
        writer.flush()  # a reader wakes a lingering writer at once
    finally:
        writer.close()
    begins = [s for s in ledger.statements if s.startswith("BEGIN")]
    assert len(begins) == 2, ledger.statements  # the five later rows in one commit
    assert len(by_session(ledger)) == 6
    ledger.close()


@pytest.mark.parametrize("window", [0, 0.5, 1001, "20", True])
def test_group_commit_ms_is_a_number_of_milliseconds_from_1_to_1000(window: object):
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.protocol.errors import ConfigurationError

    assert load_settings(environ={}).ledger.group_commit is None  # the writer's own: GROUP_COMMIT, 20 ms
    assert load_settings(environ={}, ledger={"group_commit_ms": 250}).ledger.group_commit == 0.25
    with pytest.raises(ConfigurationError, match=r"\[ledger\].*group_commit_ms"):
        load_settings(environ={}, ledger={"group_commit_ms": window})


def test_a_merged_row_equals_the_row_an_update_would_have_finished(path: Path):
    ledger = GatedLedger(path)
    writer = LedgerWriter(ledger)
    outcome = {"model": None, "tokens_in": 7, "tokens_out": None, "cost": 0.25, "cache_hit": None,
               "coalesced": True, "failover_path": ["a", "b"], "ttft_ms": 12.5}  # fmt: skip
    try:
        updated = start(writer, "updated")
        writer.flush()  # committed started: its finish will be an UPDATE
        ledger.gate.clear()
        blocker = start(writer, "blocker")
        assert ledger.waiting.wait(WAIT)
        merged = start(writer, "merged")  # still queued: its finish merges into it
        writer.finish(updated, "ok", T0 + 2.5, dict(outcome))
        writer.finish(merged, "ok", T0 + 2.5, dict(outcome))
        writer.finish(blocker, "cancelled", T0 + 3, {"error_code": "CANCELLED"})
        ledger.gate.set()
        writer.flush()
    finally:
        writer.close()
    rows = by_session(ledger)
    ignored = ("id", "session_id")
    assert {k: v for k, v in rows["merged"].items() if k not in ignored} == {
        k: v for k, v in rows["updated"].items() if k not in ignored
    }
    assert rows["merged"]["latency_ms"] == 2500.0 and rows["merged"]["model"] == "m"
    ledger.close()


def test_start_and_finish_return_while_the_file_is_locked(path: Path):
    # another process holds the write lock: the request path does not wait for it
    store = SqliteUsageLedger(Ledger(path, busy_timeout=0.01), owns=True)
    other = sqlite3.connect(path, isolation_level=None)
    try:

        async def scenario() -> list[dict[str, Any]]:
            other.execute("BEGIN IMMEDIATE")
            row = await store.start(session_id="s", context=ADA, model="m", now=T0)
            await store.finish(row, status="ok", tokens_in=1, now=T0 + 1)
            assert other.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)  # not written yet
            other.execute("COMMIT")
            return await store.rows()

        rows = asyncio.run(scenario())
    finally:
        other.close()
        store.close()
    assert [(row["session_id"], row["status"], row["tokens_in"]) for row in rows] == [("s", "ok", 1)]


# -- exactly one outcome, checked at once --------------------------------------------------------------


def test_a_second_finish_and_an_unknown_handle_are_refused_at_once(path: Path):
    with Ledger(path) as ledger:
        writer = LedgerWriter(ledger)
        try:
            handle = start(writer, "s")
            assert handle < 0  # a handle, never to be confused with a row id
            writer.finish(handle, "ok", T0, {})
            with pytest.raises(LedgerStateError, match="already finished"):
                writer.finish(handle, "error", T0, {})
            with pytest.raises(LedgerStateError, match="does not exist"):
                writer.finish(handle - 1000, "ok", T0, {})
            with pytest.raises(LedgerStateError, match="does not exist"):
                writer.finish(1, "ok", T0, {})  # a row id is not a handle
            writer.flush()
        finally:
            writer.close()
        assert [row["status"] for row in ledger.rows()] == ["ok"]


def test_a_closed_writer_refuses_new_work_and_has_written_the_old(path: Path):
    with Ledger(path) as ledger:
        writer = LedgerWriter(ledger)
        handles = [start(writer, f"s{i}") for i in range(50)]
        for handle in handles[::2]:
            writer.finish(handle, "ok", T0 + 1, {})
        writer.close()
        with pytest.raises(LedgerStateError, match="closed"):
            start(writer, "late")
        rows = ledger.rows()
    assert len(rows) == 50
    assert sorted(row["status"] for row in rows) == ["ok"] * 25 + ["started"] * 25


# -- read-your-writes --------------------------------------------------------------------------------


def hold_writer(store: SqliteUsageLedger, seconds: float) -> threading.Event:
    """Make the store's writer wait before its next commit until ``seconds`` have passed (a reader
    that does not wait for queued rows would answer without them meanwhile); return an event set
    once the writer is held."""
    writer = store._writer
    held, real = threading.Event(), writer.ledger.transaction

    def late(work, *, wait=True):
        if threading.current_thread() is not writer._thread:  # the loop's attempt: the file is busy, the thread
            raise LedgerBusyError("held")  # retries (and is held)
        writer.ledger.transaction = real  # type: ignore[method-assign]
        held.set()
        time.sleep(seconds)
        return real(work, wait=wait)

    writer.ledger.transaction = late  # type: ignore[method-assign]
    return held


def test_every_reader_of_the_file_in_this_process_sees_the_queued_rows(path: Path):
    store = SqliteUsageLedger(path)
    another = Ledger(path)  # a Ledger of its own, opened before: it still waits for this process's queue
    try:

        async def write() -> None:
            row = await store.start(session_id="s", context=ADA, model="m", now=T0)
            await store.finish(row, status="ok", cost=0.5, now=T0 + 1)

        held = hold_writer(store, 0.2)
        asyncio.run(write())
        assert held.wait(WAIT)
        assert [(row["status"], row["cost"]) for row in another.rows()] == [("ok", 0.5)]
        assert another.totals("ada").cost == 0.5
        assert list(store.to_dataframe()["status"]) == ["ok"]
    finally:
        another.close()
        store.close()


def test_a_read_waits_for_a_batch_the_writer_is_still_writing():
    ledger = GatedLedger(MEMORY)
    store = SqliteUsageLedger(ledger, owns=True)

    async def scenario() -> list[str]:
        ledger.gate.clear()
        row = await store.start(session_id="s", context=ADA, model="m", now=T0)
        assert await asyncio.to_thread(ledger.waiting.wait, WAIT)
        await store.finish(row, status="ok", now=T0 + 1)
        reading = asyncio.ensure_future(store.rows())
        await asyncio.sleep(0.05)  # give the read every chance to run early; it must wait instead
        ledger.gate.set()
        return [r["status"] for r in await reading]

    try:
        assert asyncio.run(scenario()) == ["ok"]
    finally:
        store.close()


def test_the_budget_counter_counts_rows_still_queued(path: Path):
    store = SqliteUsageLedger(Ledger(path, busy_timeout=0.01), owns=True)
    counter = SqliteBudgetCounter(path, ledger_rows=True)
    other = sqlite3.connect(path, isolation_level=None)
    asyncio.run(counter.usage("nobody", now=T0))  # its connection is open: its reads take no lock

    async def scenario() -> dict[str, float]:
        other.execute("BEGIN IMMEDIATE")  # the writer cannot commit yet
        row = await store.start(session_id="s", context=ADA, model="m", now=T0)
        await store.finish(row, status="ok", cost=1.25, now=T0)
        usage = asyncio.ensure_future(counter.usage("ada", now=T0 + 1))
        await asyncio.sleep(0.05)  # without the flush the read would have answered by now, with nothing
        other.execute("COMMIT")
        return await usage

    try:
        usage = asyncio.run(scenario())
    finally:
        other.close()
        counter.close()
        store.close()
    assert usage["usd_today"] == 1.25 and usage["requests_last_minute"] == 1


# -- bounded memory --------------------------------------------------------------------------------


def test_a_full_queue_makes_start_wait_for_room_and_a_cancelled_wait_queues_nothing():
    ledger = GatedLedger(MEMORY)
    store = SqliteUsageLedger(ledger, owns=True, max_pending=2)

    async def scenario() -> list[str]:
        ledger.gate.clear()
        await store.start(session_id="taken", context=ADA, model="m")
        assert await asyncio.to_thread(ledger.waiting.wait, WAIT)
        await store.start(session_id="q1", context=ADA, model="m")
        await store.start(session_id="q2", context=ADA, model="m")  # the queue is full now
        waiting = asyncio.ensure_future(store.start(session_id="waits", context=ADA, model="m"))
        cancelled = asyncio.ensure_future(store.start(session_id="gives up", context=ADA, model="m"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not cancelled.done()
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        ledger.gate.set()
        await waiting
        return [row["session_id"] for row in await store.rows()]

    try:
        assert asyncio.run(scenario()) == ["taken", "q1", "q2", "waits"]
    finally:
        store.close()


# -- failures of the file and of one request -----------------------------------------------------------


class Signal(logging.Handler):
    """Sets an event when a record containing ``text`` is logged (the writer thread logs it)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def test_a_full_disk_is_retried_until_the_rows_land(path: Path, caplog: pytest.LogCaptureFixture):
    signal = Signal("database or disk is full")
    logger = logging.getLogger("gtl_nb.engine.ledger")
    logger.addHandler(signal)
    ledger = Ledger(path)
    pages = ledger.transaction(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    ledger.transaction(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))
    writer = LedgerWriter(ledger)
    try:
        for index in range(200):  # far more than the one free page holds
            writer.finish(start(writer, f"s{index}"), "ok", T0 + 1, {"model": "x" * 100})
        assert signal.seen.wait(WAIT)  # the writer failed, said so, and keeps the rows
        ledger.transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1000000"))
        writer.flush()
    finally:
        writer.close()
        logger.removeHandler(signal)
    rows = ledger.rows()
    assert len(rows) == 200 and {row["status"] for row in rows} == {"ok"}
    ledger.close()
    assert "one at a time" not in caplog.text  # the file's trouble: the batch retried whole, never split


def test_one_requests_unstorable_text_does_not_fail_the_others(path: Path, caplog: pytest.LogCaptureFixture):
    with Ledger(path) as ledger:
        writer = LedgerWriter(ledger)
        try:
            good = start(writer, "good")
            bad = start(writer, "bad\udc80session")  # a lone surrogate: SQLite cannot store it as is
            writer.finish(bad, "error", T0 + 1, {"error_code": "TIMEOUT", "failover_path": 5})
            writer.finish(good, "ok", T0 + 1, {})
            writer.flush()
        finally:
            writer.close()
        rows = ledger.rows()
    assert [(row["session_id"], row["status"]) for row in rows] == [
        ("good", "ok"),
        ("bad\\udc80session", "error"),
    ]
    assert rows[1]["error_code"] == "TIMEOUT" and "escaped" in caplog.text
    # a client's session id is quoted in the log, its characters escaped: no raw surrogate, no forged line
    assert "bad\udc80session" not in caplog.text and "'bad\\udc80session'" in caplog.text


def test_a_merged_row_whose_details_are_refused_is_written_with_its_outcome_alone(
    path: Path, caplog: pytest.LogCaptureFixture
):
    with Ledger(path) as ledger:
        writer = LedgerWriter(ledger)
        try:
            handle = start(writer, "details refused")
            writer.finish(handle, "ok", T0 + 2, {"model": "bad\udc80model", "tokens_in": 4})  # (merged or not)
            writer.flush()
        finally:
            writer.close()
        [row] = ledger.rows()
    assert (row["session_id"], row["status"], row["model"], row["tokens_in"]) == ("details refused", "ok", "m", None)
    assert row["end_time"] == T0 + 2 and "recording its status only" in caplog.text


def test_a_configured_window_is_kept_by_a_later_user_that_configured_none(path: Path):
    first = SqliteUsageLedger(path, group_commit=0.001)
    second = SqliteUsageLedger(path)  # the same file, the same writer: it does not undo the first's setting
    try:
        assert first._writer is second._writer and first._writer.group_commit == 0.001
        third = SqliteUsageLedger(path, group_commit=0.05)  # a configuration that says one: the newest wins
        assert first._writer.group_commit == 0.05
        asyncio.run(third.aclose())
    finally:
        asyncio.run(second.aclose())
        asyncio.run(first.aclose())


@pytest.mark.parametrize("window", [0, -1, float("nan"), float("inf"), True, "0.02"])
def test_a_window_made_in_code_is_checked_too(path: Path, window: object):
    from gtl_nb.engine.lingering import LingeringQueue

    with pytest.raises(ValueError, match="group commit window"):
        LedgerWriter(Ledger(MEMORY), group_commit=window)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group commit window"):
        LingeringQueue(linger=window)  # type: ignore[arg-type]


def test_a_start_that_finds_the_queue_full_wakes_a_lingering_writer(path: Path):
    with Ledger(path) as ledger:
        writer = LedgerWriter(ledger, max_pending=3, group_commit=30.0)
        try:
            start(writer, "wakes the idle writer")
            writer.flush()  # busy now: it would look again only in 30 s
            for number in range(3):
                start(writer, f"fills-{number}")
            assert writer.start(T0, session_id="one too many", user="ada", model="m") is None
            assert writer.wait_for_room(10)  # the refused start woke the writer: room long before its 30 s look
        finally:
            writer.close()


# -- one writer per file per process -----------------------------------------------------------------


def test_stores_of_one_file_share_one_writer_until_the_last_closes(path: Path):
    first, second = SqliteUsageLedger(path), SqliteUsageLedger(Ledger(path), owns=True)
    try:
        assert first._writer is second._writer
        writer = first._writer
        first.close()
        assert not writer.closed
        asyncio.run(second.start(session_id="s", context=ADA, model="m"))
    finally:
        second.close()
    assert writer.closed
    with Ledger(path) as reopened:
        assert [row["status"] for row in reopened.rows()] == ["started"]


def test_a_writer_is_reacquired_after_it_closed(path: Path):
    with Ledger(path) as ledger:
        writer = acquire_writer(ledger)
        release_writer(writer)
        again = acquire_writer(ledger)
        try:
            assert again is not writer and writer.closed and not again.closed
        finally:
            release_writer(again)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_through_a_writer_of_its_own(path: Path):
    store = SqliteUsageLedger(path)
    writer = store._writer
    gate, entered = threading.Event(), threading.Event()
    real = writer.ledger.transaction

    def gated(work, **options):
        entered.set()
        assert gate.wait(WAIT)
        return real(work, **options)

    writer.ledger.transaction = gated  # type: ignore[method-assign]
    try:
        asyncio.run(store.start(session_id="parent", context=ADA, model="m"))
        assert entered.wait(WAIT)  # the parent's row is queued across the fork, its writer held
        pid = os.fork()
        if pid == 0:  # the child: a writer of its own; the parent's row is not its to write
            code = 1
            try:

                async def child() -> None:
                    row = await store.start(session_id="child", context=ADA, model="m")
                    await store.finish(row, status="ok")
                    await store.flush()

                asyncio.run(child())
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        gate.set()
        rows = asyncio.run(store.rows())
    finally:
        gate.set()
        store.close()
    assert sorted((row["session_id"], row["status"]) for row in rows) == [("child", "ok"), ("parent", "started")]


def test_a_batch_that_fails_for_its_own_sake_is_written_one_at_a_time(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # A batch that fails for anything but the file (a defect in the batch code, a value it cannot
    # take) is not retried whole — no retry would change it, and the writer would stall, every later
    # row queued behind it. Each operation goes alone; only the one that fails alone is lost, loudly.
    from gtl_nb.engine import ledger_writer

    real = ledger_writer.write_batch

    def breaks_on_poison(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        if any(getattr(op, "session_id", None) == "poison" for op in ops):
            raise RuntimeError("a defect in the batch code")
        return real(conn, ops, rowids, hostname)

    monkeypatch.setattr(ledger_writer, "write_batch", breaks_on_poison)
    ledger = GatedLedger(path)
    writer = LedgerWriter(ledger)
    try:
        early = start(writer, "early")  # committed alone, left started: its outcome comes in the bad batch
        writer.flush()
        ledger.gate.clear()
        before = start(writer, "before")
        assert ledger.waiting.wait(WAIT)  # the writer holds ``before`` at the gate: what follows is one batch
        poison = start(writer, "poison")
        after = start(writer, "after")
        writer.finish(early, "ok", T0 + 1, {"tokens_in": 3})
        writer.finish(poison, "ok", T0 + 1, {})
        writer.finish(before, "ok", T0 + 1, {})
        ledger.gate.set()
        writer.flush()
        writer.finish(after, "error", T0 + 2, {"error_code": "TIMEOUT"})  # its row was left started
        later = start(writer, "later")  # the writer goes on: rows after the bad batch land
        writer.finish(later, "ok", T0 + 3, {})
        writer.flush()
    finally:
        writer.close()
    rows = by_session(ledger)
    ledger.close()
    assert set(rows) == {"early", "before", "after", "later"}
    assert rows["early"]["status"] == "ok" and rows["early"]["tokens_in"] == 3
    assert (rows["after"]["status"], rows["after"]["error_code"]) == ("error", "TIMEOUT")
    assert rows["before"]["status"] == rows["later"]["status"] == "ok"
    assert "writing them one at a time" in caplog.text
    assert "the finished row of session poison could not be written" in caplog.text
    assert "retrying, nothing is dropped" not in caplog.text  # never retried as a whole


def test_a_defect_in_the_sql_is_the_batchs_own_failure_and_never_retried_whole(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # sqlite3 raises OperationalError for a wrong column as for a full disk: SQLite's result code
    # (a generic SQL error) tells them apart, so the defect does not stall the writer either.
    from gtl_nb.engine import ledger_batch

    if not ledger_batch.BATCHED_UPDATES or sys.version_info < (3, 11):
        pytest.skip("UPDATE … FROM (SQLite 3.33+) and SQLite's result codes on errors (Python 3.11+)")
    monkeypatch.setattr(
        ledger_batch, "FINISH_UPDATE_ROWS", ledger_batch.FINISH_UPDATE_ROWS.replace("v.column18", "v.x")
    )
    ledger_batch._update_rows.cache_clear()
    ledger = Ledger(path)
    writer = LedgerWriter(ledger)
    try:
        early = start(writer, "early")
        writer.flush()
        writer.finish(early, "ok", T0 + 1, {})  # an UPDATE of many rows: the broken statement
        writer.finish(start(writer, "innocent"), "ok", T0 + 1, {})  # in the same batch, written whole
        writer.flush()
    finally:
        writer.close()
        ledger_batch._update_rows.cache_clear()
    rows = by_session(ledger)
    ledger.close()
    assert (rows["innocent"]["status"], rows["early"]["status"]) == ("ok", "started")  # only the outcome is lost
    assert f"the outcome ok of ledger row {rows['early']['id']} could not be written" in caplog.text
    assert "retrying, nothing is dropped" not in caplog.text


def test_rows_written_one_at_a_time_before_close_gave_up_keep_their_ids(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # A batch that fails as a whole is written a row at a time; when close gives up on a failing file
    # part-way, the rows written until then are still known: their outcomes, queued behind, land.
    from gtl_nb.engine import ledger_writer

    real = ledger_writer.write_batch
    failing = threading.Event()
    failing.set()

    def breaks(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        names = [getattr(op, "session_id", None) for op in ops]
        if "poison" in names:
            raise RuntimeError("a defect in the batch code")
        if names == ["stuck"] and failing.is_set():
            raise sqlite3.OperationalError("disk I/O error")  # the file, for this row alone
        return real(conn, ops, rowids, hostname)

    monkeypatch.setattr(ledger_writer, "write_batch", breaks)
    ledger = GatedLedger(path)
    writer = LedgerWriter(ledger, wait_for=0.5)
    try:
        ledger.gate.clear()
        start(writer, "held")
        assert ledger.waiting.wait(WAIT)  # the writer holds ``held`` at the gate: the next three are one batch
        early = start(writer, "early")
        writer.finish(start(writer, "poison"), "ok", T0 + 1, {})
        start(writer, "stuck")
        ledger.gate.set()
        deadline = time.monotonic() + WAIT
        while "writing them one at a time" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.finish(early, "ok", T0 + 2, {"tokens_in": 7})  # queued behind the failing row
        writer.close(timeout=0.5)  # gives up on ``stuck`` (still failing); the writer drains what follows
        writer._thread.join(WAIT)
        assert not writer._thread.is_alive()
    finally:
        failing.clear()
    rows = by_session(ledger)
    ledger.close()
    assert (rows["early"]["status"], rows["early"]["tokens_in"]) == ("ok", 7)
    assert "never written is lost" not in caplog.text


def test_a_trigger_that_adds_rows_does_not_send_outcomes_to_the_wrong_rows(
    path: Path, caplog: pytest.LogCaptureFixture
):
    # A started row's id is read from its statement's last id; a trigger added to the table by hand
    # would put rows of its own between them: the statement says so, and the rows go one at a time.
    ledger = GatedLedger(path)
    ledger.transaction(
        lambda conn: conn.execute(
            "CREATE TRIGGER copies AFTER INSERT ON requests WHEN NEW.session_id LIKE 's%' BEGIN "
            "INSERT INTO requests (time, time_utc, session_id, status) VALUES (NEW.time, NEW.time_utc, "
            "'copy-' || NEW.session_id, 'started'); END"
        )
    )
    writer = LedgerWriter(ledger)
    try:
        ledger.gate.clear()
        start(writer, "held")
        assert ledger.waiting.wait(WAIT)
        handles = [start(writer, f"s{n}") for n in range(1, 4)]
        ledger.gate.set()
        writer.flush()
        for n, handle in enumerate(handles, 1):
            writer.finish(handle, "ok", T0 + n, {"tokens_in": n})
        writer.flush()
    finally:
        writer.close()
    rows = by_session(ledger)
    ledger.close()
    assert [(rows[f"s{n}"]["status"], rows[f"s{n}"]["tokens_in"]) for n in range(1, 4)] == [
        ("ok", 1),
        ("ok", 2),
        ("ok", 3),
    ]
    assert {rows[f"copy-s{n}"]["status"] for n in range(1, 4)} == {"started"}  # the trigger's own, untouched
    assert "a trigger on requests?" in caplog.text
