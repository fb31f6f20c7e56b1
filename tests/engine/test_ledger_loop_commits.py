"""The ledger's commits on the event loop that queued the rows: they wait for nothing, and whatever
could wait — a lock held by another process, a bad batch, a loop that stopped or is blocked, the
write-ahead log's checkpoints — is the writer thread's."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine import ledger_writer
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

T0 = 1_700_000_000.25
ADA = RequestContext(principal="ada", tenant="acme", key_id="k1", trace_id="t1")
WAIT = 30.0  # a bound for waiting on another thread, never a timing assertion
WINDOW = 0.02


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[str]]]:
    """Every ``write_batch`` call from now on: the thread it ran on and the sessions it wrote."""
    calls: list[tuple[int, list[str]]] = []
    real = ledger_writer.write_batch

    def recorded(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        calls.append((threading.get_ident(), [getattr(op, "session_id", "") or "(outcome)" for op in ops]))
        return real(conn, ops, rowids, hostname)

    monkeypatch.setattr(ledger_writer, "write_batch", recorded)
    return calls


def statuses(path: Path) -> dict[str, str]:
    """The rows in the file now, read by a connection of its own (no flush of the queue)."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT session_id, status FROM requests").fetchall())
    finally:
        conn.close()


def eventually(condition: Any) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def requests(store: SqliteUsageLedger, names: list[str], status: str = "ok") -> None:
    for name in names:
        row = await store.start(session_id=name, context=ADA, model="m", now=T0)
        await store.finish(row, status=status, tokens_in=1, now=T0 + 1)


def test_the_loop_that_queued_the_rows_commits_them(
    path: Path, commits: list[tuple[int, list[str]]], monkeypatch: pytest.MonkeyPatch
):
    # the thread's backstop for a late loop out of reach: on a loaded machine the loop can be three
    # windows late, and the thread would write the rows instead (test_a_loop_blocked_... covers that)
    monkeypatch.setattr(ledger_writer, "BACKSTOP_WINDOWS", 1_000_000)
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)

    async def scenario() -> int:
        await requests(store, ["a", "b", "c"])
        while not commits:  # a window later, on this loop
            await asyncio.sleep(WINDOW / 4)
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(scenario())
        assert statuses(path) == {"a": "ok", "b": "ok", "c": "ok"}  # in the file, nothing flushed
    finally:
        store.close()
    assert commits == [(loop_thread, ["a", "b", "c"])]  # one commit, the loop's; the thread wrote nothing


def test_a_lock_held_by_another_process_never_stalls_the_loop(path: Path, monkeypatch: pytest.MonkeyPatch):
    # SQLite would wait up to busy_timeout for the lock; the loop tries once and hands the batch to the
    # thread, which tries again until the lock is free (every few ms, never inside SQLite's wait: it
    # watches how long the lock lasts), then writes what queued meanwhile too. The busy timeout is
    # longer than the test ever waits: a loop that waited for the lock would still be waiting when the
    # other connection lets go of it — after WAIT seconds at the latest —, so it would return only after
    # the release, which is what the test looks for (no clock is read to judge it).
    # The thread's backstop for a loop that is late with its commit (BACKSTOP_WINDOWS windows) is put
    # out of reach: on a loaded machine the loop can be that late, and the thread would then take the
    # batch before the loop tried — what this test is about is the loop's own attempt.
    monkeypatch.setattr(ledger_writer, "BACKSTOP_WINDOWS", 1_000_000)
    store = SqliteUsageLedger(Ledger(path, busy_timeout=10 * WAIT), owns=True, group_commit=WINDOW, loop_commits=True)
    writer_ledger = store._writer.ledger
    attempts: list[tuple[int, bool, bool]] = []  # (thread, waits for the lock, the lock was still held at its end)
    real = writer_ledger.transaction
    taken, release, released = threading.Event(), threading.Event(), threading.Event()

    def recorded(work: Any, *, wait: bool = True) -> Any:
        try:
            return real(work, wait=wait)
        finally:
            attempts.append((threading.get_ident(), wait, not released.is_set()))

    writer_ledger.transaction = recorded  # type: ignore[method-assign]

    def other_process() -> None:  # another writer of the file: it holds the lock until told (or WAIT s)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(WAIT)
            other.execute("COMMIT")
            released.set()
        finally:
            other.close()

    holder = threading.Thread(target=other_process, name="lock-holder", daemon=True)

    async def until(condition: Any) -> bool:
        deadline = time.monotonic() + WAIT
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def loop_tried(loop_thread: int) -> bool:
        return any(thread == loop_thread and not wait for thread, wait, _ in attempts)

    async def scenario() -> int:
        holder.start()
        assert taken.wait(WAIT)
        loop_thread = threading.get_ident()
        await requests(store, ["held-1", "held-2"])
        assert await until(lambda: loop_tried(loop_thread)), "the loop never tried its commit"
        await requests(store, ["queued-behind"])
        await asyncio.sleep(15 * WINDOW)  # the loop's next windows, while the thread waits for the lock
        release.set()
        rows = await store.rows()
        assert [(row["session_id"], row["status"]) for row in rows] == [
            ("held-1", "ok"),
            ("held-2", "ok"),
            ("queued-behind", "ok"),
        ]
        return loop_thread

    try:
        loop_thread = asyncio.run(scenario())
    finally:
        release.set()
        holder.join(WAIT)
        store.close()
    mine = [(wait, held) for thread, wait, held in attempts if thread == loop_thread]
    assert (False, True) in mine  # the loop tried without waiting, and was done while the lock was held
    assert all(not wait for wait, _ in mine)  # the loop never waits
    assert any(thread != loop_thread and not held for thread, _, held in attempts)  # the thread wrote the batch


def test_rows_a_finished_loop_left_queued_are_written_by_the_thread(path: Path, commits: list[tuple[int, list[str]]]):
    store = SqliteUsageLedger(path, group_commit=1.0, loop_commits=True)  # the loop ends long before its commit is due
    try:
        asyncio.run(requests(store, ["a", "b"]))
        assert eventually(lambda: statuses(path) == {"a": "ok", "b": "ok"})  # no flush: the thread saw
    finally:
        store.close()
    assert commits and all(thread != threading.get_ident() for thread, _ in commits)


def test_a_loop_blocked_by_its_caller_does_not_hold_the_rows_back(path: Path):
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)
    seen = threading.Event()

    def watch() -> None:
        if eventually(lambda: statuses(path) == {"a": "ok"}):
            seen.set()

    async def scenario() -> bool:
        await requests(store, ["a"])
        threading.Thread(target=watch, daemon=True).start()
        return seen.wait(WAIT)  # blocks the loop (a notebook cell's long computation would)

    try:
        assert asyncio.run(scenario())
    finally:
        store.close()


def test_the_thread_checkpoints_the_log_and_the_loops_commits_never_do(path: Path, monkeypatch: pytest.MonkeyPatch):
    checkpoints: list[int] = []
    real = Ledger.checkpoint

    def recorded(self: Ledger) -> None:
        checkpoints.append(threading.get_ident())
        real(self)

    monkeypatch.setattr(Ledger, "checkpoint", recorded)
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)
    writer = store._writer

    async def scenario() -> int:
        await requests(store, [f"s{n}" for n in range(50)])
        while not checkpoints:
            await asyncio.sleep(WINDOW)
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(scenario())
        auto = writer.ledger.transaction(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    finally:
        store.close()
    assert auto == 0  # the writer's connection never checkpoints in a commit
    assert loop_thread not in checkpoints and set(checkpoints) == {writer._thread.ident}
    assert len(statuses(path)) == 50


def test_a_batch_the_loop_cannot_write_goes_to_the_thread_which_writes_it_one_at_a_time(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    real = ledger_writer.write_batch
    calls: list[tuple[int, int]] = []

    def breaks_on_poison(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        calls.append((threading.get_ident(), len(ops)))
        if any(getattr(op, "session_id", None) == "poison" for op in ops):
            raise RuntimeError("a defect in the batch code")
        return real(conn, ops, rowids, hostname)

    monkeypatch.setattr(ledger_writer, "write_batch", breaks_on_poison)
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        await requests(store, ["before", "poison", "after"])
        while len(calls) < 4:  # the loop's attempt, then the thread's: whole, then one at a time
            await asyncio.sleep(WINDOW)
        await requests(store, ["later"])  # the loop commits again
        return threading.get_ident(), await store.rows()

    try:
        with caplog.at_level(logging.WARNING):
            loop_thread, rows = asyncio.run(scenario())
    finally:
        store.close()
    assert [(row["session_id"], row["status"]) for row in rows] == [("before", "ok"), ("after", "ok"), ("later", "ok")]
    assert calls[0] == (loop_thread, 3)  # the loop tried once
    assert all(thread != loop_thread for thread, _ in calls[1:5])  # the thread did the rest
    assert "the finished row of session poison could not be written" in caplog.text


def test_loops_of_two_threads_share_the_files_writer(path: Path):
    stores = [SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True) for _ in range(2)]
    assert stores[0]._writer is stores[1]._writer
    failures: list[BaseException] = []

    def run(store: SqliteUsageLedger, prefix: str) -> None:
        try:
            asyncio.run(requests(store, [f"{prefix}{n}" for n in range(100)]))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(store, prefix)) for store, prefix in zip(stores, "xy", strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    try:
        assert not failures
        rows = asyncio.run(stores[0].rows())
    finally:
        for store in stores:
            store.close()
    assert len(rows) == 200 and {row["status"] for row in rows} == {"ok"}
    assert len({row["session_id"] for row in rows}) == 200


# -- found by review: each of these failed before its fix ------------------------------------------------


def test_a_loop_commit_that_fails_while_the_writer_closes_is_still_written(path: Path, monkeypatch: pytest.MonkeyPatch):
    # close() runs on another thread (aclose hands it to one) while the loop's commit is in flight;
    # that commit then fails: the thread, ending, must wait for it and write what it hands back
    real = ledger_writer.write_batch
    loop_threads: list[int] = []
    in_commit = threading.Event()

    def fails_once_on_the_loop(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        if threading.get_ident() in loop_threads and not in_commit.is_set():
            in_commit.set()
            assert eventually(lambda: store._writer.closed)  # close() has begun meanwhile
            raise sqlite3.OperationalError("database is locked")
        return real(conn, ops, rowids, hostname)

    monkeypatch.setattr(ledger_writer, "write_batch", fails_once_on_the_loop)
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)

    async def scenario() -> None:
        loop_threads.append(threading.get_ident())
        await requests(store, ["a", "b"])
        await asyncio.to_thread(lambda: (in_commit.wait(WAIT), store.close()))

    asyncio.run(scenario())
    assert statuses(path) == {"a": "ok", "b": "ok"}


def test_a_forked_childs_copy_of_the_loop_never_writes_its_parents_rows(path: Path):
    import os

    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)

    async def scenario() -> None:
        await requests(store, ["parent's"])  # queued: a commit is scheduled on this loop
        loop = asyncio.get_running_loop()
        pid = os.fork()
        if pid == 0:  # the child runs its copy of the loop past the commit's time, then leaves
            code = 1
            try:
                later = loop.create_future()  # (asyncio.sleep would ask for the running loop: this
                loop.call_later(WINDOW * 10, later.set_result, None)  # process's has none)
                await later
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        await store.flush()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT session_id, status FROM requests").fetchall() == [("parent's", "ok")]
    finally:
        conn.close()


def test_a_flush_of_many_batches_does_not_wait_for_the_loop_between_them(path: Path):
    # a reader waits for 5 batches' worth of queue while the loop's window is 10 s away: the thread
    # writes batch after batch for it (it used to write one, then wait for the loop's backstop)
    store = SqliteUsageLedger(path, group_commit=10.0, loop_commits=True)
    writer = store._writer
    writer.max_batch = 100

    async def scenario() -> None:
        await requests(store, [f"s{n}" for n in range(250)])  # 500 operations, 5 batches
        writer.flush(timeout=WAIT)  # from the loop's own thread, as a synchronous read in a coroutine

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert len(statuses(path)) == 250


def test_an_idle_thread_checkpoints_after_a_loops_commit(
    path: Path, monkeypatch: pytest.MonkeyPatch, commits: list[tuple[int, list[str]]]
):
    # the thread looked while the loop's first commit was still running (nothing queued, no work of
    # late) and went to sleep; the commit that followed must wake it for the checkpoint it owes
    checkpoints = threading.Event()
    real_checkpoint, real_write = Ledger.checkpoint, ledger_writer.write_batch

    def recorded(self: Ledger) -> None:
        checkpoints.set()
        real_checkpoint(self)

    def slow(conn: sqlite3.Connection, ops: Any, rowids: Any, hostname: str) -> dict[int, int]:
        assert eventually(lambda: writer._idle)  # the thread has gone to sleep meanwhile
        return real_write(conn, ops, rowids, hostname)

    monkeypatch.setattr(Ledger, "checkpoint", recorded)
    monkeypatch.setattr(ledger_writer, "write_batch", slow)
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)
    writer = store._writer

    async def scenario() -> None:
        await requests(store, ["a"])
        while not commits:  # the loop's commit, held until the thread sleeps
            await asyncio.sleep(WINDOW / 4)

    try:
        asyncio.run(scenario())
        assert commits[0][0] == threading.get_ident()  # (the loop's)
        assert checkpoints.wait(WAIT)
    finally:
        store.close()


def test_a_loop_stopped_without_closing_is_let_go_for_the_next_loop_of_its_thread(
    path: Path, commits: list[tuple[int, list[str]]]
):
    store = SqliteUsageLedger(path, group_commit=WINDOW, loop_commits=True)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(requests(store, ["first"]))  # stopped, never closed
        store._writer.flush()
        commits.clear()

        async def second() -> None:
            await requests(store, ["second"])
            while not commits:
                await asyncio.sleep(WINDOW / 4)

        asyncio.run(second())
    finally:
        first.close()
        store.close()
    assert commits == [(threading.get_ident(), ["second"])]  # the running loop committed, not the thread


# -- who commits, by configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "callers_loop", "commits", "on_loop"),
    [
        ("embedded", True, None, True),  # aconnect: the caller's loop, the one busy thread, commits
        ("embedded", False, None, False),  # connect: the engine's own loop thread leaves it to the writer's
        ("gateway", False, None, False),  # a gateway: the thread (its loop's tail latency untouched)
        ("gateway", False, "loop", True),
        ("embedded", True, "thread", False),
    ],
)
def test_who_commits_by_default_and_by_configuration(
    tmp_path: Path, audience: str, callers_loop: bool, commits: str | None, on_loop: bool
):
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings

    table: dict[str, Any] = {"path": str(tmp_path / "ledger.sqlite3")}
    if commits is not None:
        table["commits"] = commits
    engine = build_engine(load_settings(environ={}, ledger=table), audience=audience, on_callers_loop=callers_loop)
    try:
        assert engine.stores.ledger._writer.loop_commits is on_loop  # type: ignore[union-attr]
    finally:
        asyncio.run(engine.aclose())


def test_aconnects_engine_commits_on_the_callers_loop_and_connects_on_the_writers_thread(tmp_path: Path):
    import gtl_nb

    config = {"ledger": {"path": str(tmp_path / "ledger.sqlite3")}}
    connected = gtl_nb.connect(config=config, environ={})
    try:
        assert connected.backend.engine.stores.ledger._writer.loop_commits is False  # type: ignore[attr-defined]
    finally:
        connected.close()

    async def on_callers_loop() -> bool:
        client = await gtl_nb.aconnect(config={"ledger": {"path": str(tmp_path / "other.sqlite3")}}, environ={})
        try:
            return client.backend.engine.stores.ledger._writer.loop_commits  # type: ignore[attr-defined]
        finally:
            await client.aclose()

    assert asyncio.run(on_callers_loop()) is True


def test_a_commits_setting_other_than_loop_or_thread_is_refused(tmp_path: Path):
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.protocol.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="commits must be one of 'loop', 'thread'"):
        load_settings(environ={}, ledger={"path": str(tmp_path / "l.sqlite3"), "commits": "process"})


def test_a_later_users_other_choice_is_said_in_the_log_and_the_first_users_kept(
    path: Path, caplog: pytest.LogCaptureFixture
):
    first = SqliteUsageLedger(path, loop_commits=False)  # e.g. connect()'s engine
    try:
        with caplog.at_level(logging.INFO, logger="gtl_nb.engine.ledger"):
            second = SqliteUsageLedger(path, loop_commits=True)  # then aconnect()'s, in the same process
        try:
            assert second._writer is first._writer and first._writer.loop_commits is False
            assert "commits on the writer's thread, as its first user chose" in caplog.text
        finally:
            second.close()
    finally:
        first.close()
