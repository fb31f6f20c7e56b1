"""The SQLite ledger's spool (``engine.ledger_spool``): a stop whose writes another process keeps out of
the file past the deadline spools them beside it, and the next opening writes them — each exactly
once, whatever crash cuts a replay short — while a damaged spool line is reported and skipped."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine import ledger_batch, ledger_spool, ledger_writer
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ledger_spool import read_spool, spool_path
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger
from tests.ledger_locks import Holder

REPO = Path(__file__).resolve().parents[2]
ADA = RequestContext(principal="ada", tenant="acme", key_id="k1", trace_id="t1")
T0 = 1_700_000_000.25


def rows_of(path: Path) -> list[tuple[Any, ...]]:
    """(session, status, tokens_in, cost) of every row, read as another program would (a WAL reader
    never waits for the write lock)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT session_id, status, tokens_in, cost FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    found = tmp_path / "ledger.sqlite3"
    Ledger(found).close()
    return found


@pytest.fixture
def stopped_while_locked(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Holder, int]]:
    """A ledger that wrote one row, then stopped while another process held the lock past its
    deadline (``retry_for`` 0.5 s): the holder, still holding, and how many writes the stop spooled."""
    monkeypatch.setattr(ledger_writer, "BLOCKED_AFTER", 3600.0)  # the stop spools them, not the running writer
    store = SqliteUsageLedger(Ledger(path, busy_timeout=0.1, retry_for=0.5), owns=True)

    async def before() -> int:
        early = await store.start(session_id="early", context=ADA, model="m", now=T0)
        await store.flush()  # committed started: its outcome below is an UPDATE of that row
        return early

    early = asyncio.run(before())
    holder = Holder(path, "IMMEDIATE")

    async def while_locked() -> None:
        await store.finish(early, status="ok", tokens_in=1, cost=0.5, now=T0 + 1)
        for index in range(3):
            row = await store.start(session_id=f"s{index}", context=ADA, model="m", now=T0 + index)
            await store.finish(row, status="ok", tokens_in=10 + index, cost=0.25, now=T0 + index + 1)
        await store.start(session_id="running", context=ADA, model="m", now=T0 + 5)  # never finished

    try:
        asyncio.run(while_locked())
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            store.close()  # gives up after retry_for and spools what it holds
        assert "they are spooled in" in caplog.text and "are lost" not in caplog.text
        yield holder, 5
    finally:
        holder.release()


def test_a_stop_past_its_deadline_spools_its_writes_and_the_next_open_writes_them_once(
    path: Path, stopped_while_locked: tuple[Holder, int]
):
    holder, spooled = stopped_while_locked
    spool = spool_path(path)
    contents = read_spool(spool.read_bytes())
    assert contents.damaged == [] and len(contents.lines) == spooled
    assert rows_of(path) == [("early", "started", None, None)]  # nothing reached the file
    holder.release()
    Ledger(path).close()  # the next opening replays the spool
    expected = [
        ("early", "ok", 1, 0.5),
        ("s0", "ok", 10, 0.25),
        ("s1", "ok", 11, 0.25),
        ("s2", "ok", 12, 0.25),
        ("running", "started", None, None),  # its process (this one) is alive: recovery leaves it
    ]
    assert rows_of(path) == expected
    assert spool.read_bytes() == b""
    Ledger(path).close()
    assert rows_of(path) == expected


def test_a_spool_replayed_again_after_a_crash_before_it_was_emptied_counts_nothing_twice(
    path: Path, stopped_while_locked: tuple[Holder, int], caplog: pytest.LogCaptureFixture
):
    holder, spooled = stopped_while_locked
    holder.release()
    spool = spool_path(path)
    copy = path.with_name("spool-copy")
    shutil.copy(spool, copy)
    Ledger(path).close()
    once = rows_of(path)
    shutil.copy(copy, spool)  # as if the replay's process died between its commit and emptying the spool
    with caplog.at_level(logging.WARNING, logger="gtl_nb"):
        Ledger(path).close()
    assert rows_of(path) == once and len(once) == 5
    said = f"0 write(s) left in the spool {spool} (by a stop, or during a lock) are in the ledger now"
    assert f"{said} ({spooled} found there already)" in caplog.text


def test_a_replay_cut_short_is_undone_whole_and_done_once_at_the_next_open(
    path: Path,
    stopped_while_locked: tuple[Holder, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    holder, _ = stopped_while_locked
    holder.release()
    real = ledger_spool._execute
    calls = []

    def failing_third(conn: sqlite3.Connection, statement: str, values: list[Any], where: Any) -> Any:
        calls.append(statement)
        if len(calls) == 3:  # the disk fails in the middle of the replay's transaction
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, statement, values, where)

    monkeypatch.setattr(ledger_spool, "_execute", failing_third)
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        Ledger(path).close()  # opens all the same
    assert "stay there for the next opening" in caplog.text
    assert rows_of(path) == [("early", "started", None, None)]  # nothing of the replay happened
    monkeypatch.setattr(ledger_spool, "_execute", real)
    Ledger(path).close()
    assert [row[:2] for row in rows_of(path)] == [
        ("early", "ok"),
        ("s0", "ok"),
        ("s1", "ok"),
        ("s2", "ok"),
        ("running", "started"),
    ]
    assert spool_path(path).read_bytes() == b""


def test_damaged_spool_lines_are_reported_kept_aside_and_skipped(
    path: Path, stopped_while_locked: tuple[Holder, int], caplog: pytest.LogCaptureFixture
):
    holder, _ = stopped_while_locked
    holder.release()
    spool = spool_path(path)
    lines = spool.read_bytes().splitlines(keepends=True)
    # lines: the early row's outcome, the three finished rows, the running row
    edited = lines[1].replace(b'"ok"', b'"error"')  # its checksum no longer matches
    garbage = b"not a spool line at all\n"
    cut = lines[4][: len(lines[4]) // 2]  # the last write cut short: no end of line
    spool.write_bytes(lines[0] + edited + garbage + lines[2] + lines[3] + cut)
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        Ledger(path).close()
    assert rows_of(path) == [("early", "ok", 1, 0.5), ("s1", "ok", 11, 0.25), ("s2", "ok", 12, 0.25)]
    assert f"ledger spool {spool}: line 2 is damaged (its checksum does not match)" in caplog.text
    assert f"ledger spool {spool}: line 3 is damaged (no checksum)" in caplog.text
    assert f"ledger spool {spool}: line 6 is damaged (cut short (no end of line))" in caplog.text
    assert spool.with_name(spool.name + ".damaged").read_bytes() == edited + garbage + cut + b"\n"
    assert spool.read_bytes() == b""


def test_an_unreadable_spool_never_stops_the_ledger_opening(path: Path, caplog: pytest.LogCaptureFixture):
    spool = spool_path(path)
    spool.write_bytes(os.urandom(64) + b"\n" + b"\x00" * 10)
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        ledger = Ledger(path)
    try:
        assert ledger.rows() == []
    finally:
        ledger.close()
    assert "line 1 is damaged" in caplog.text and "line 2 is damaged" in caplog.text


def test_an_audit_logs_records_follow_rows_a_stuck_stop_spooled(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The engine stops while another process holds the ledger's lock: its rows go to the spool, which
    lets their audit records go (a spooled row survives a crash and is written at the next opening) —
    the audit log does not have to force them out at its own close."""
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.audit import AuditLog, AuditSettings, read_records
    from gtl_nb.protocol.messages import CompletionRequest, Message

    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    store = SqliteUsageLedger(Ledger(path, busy_timeout=0.1, retry_for=0.5), owns=True)
    engine = build_engine(settings, ledger=store)
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)
    holder = Holder(path, "IMMEDIATE")
    request = CompletionRequest(session_id="stuck", model="echo", messages=[Message(role="user", content="hi")])

    async def answer_then_stop() -> None:
        async for _ in engine.stream(request, context=ADA):
            pass
        await engine.aclose()  # the ledger gives up after retry_for: the row is spooled

    try:
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            asyncio.run(answer_then_stop())
            audit.close()
    finally:
        holder.release()
    records = [(r["session_id"], r["status"]) for r in read_records(log_path) if r["kind"] == "request"]
    assert records == [("stuck", "ok")]
    assert "written without their ledger rows committed" not in caplog.text
    assert rows_of(path) == []
    Ledger(path).close()
    assert [row[:2] for row in rows_of(path)] == [("stuck", "ok")]


# A process that queues a finished request and one still running, then stops while the holder keeps the
# file locked past its deadline (retry_for 0.5 s): both are spooled, and it exits.
STOPPING = textwrap.dedent(
    """
    import asyncio, sys
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    async def main(path):
        store = SqliteUsageLedger(Ledger(path, busy_timeout=0.1, retry_for=0.5), owns=True)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        context = RequestContext(principal="ada")
        done = await store.start(session_id="done", context=context, model="m")
        await store.finish(done, status="ok", tokens_in=3)
        await store.start(session_id="running", context=context, model="m")
        await store.aclose()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_spooled_row_of_a_process_gone_is_recovered_as_interrupted_by_its_own_pid(path: Path):
    """A spooled row keeps its writer's pid and process identity: replayed by another process, a row
    its writer never finished is judged by that writer (gone: ``interrupted``), not by the replayer."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stopping = subprocess.Popen(
        [sys.executable, "-c", STOPPING, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert stopping.stdout is not None and stopping.stdout.readline().strip() == "ready"
    holder = Holder(path, "IMMEDIATE")
    try:
        assert stopping.stdin is not None
        stopping.stdin.write("\n")
        stopping.stdin.flush()
        assert stopping.wait(60) == 0
        assert len(read_spool(spool_path(path).read_bytes()).lines) == 2
    finally:
        holder.release()
    ledger = Ledger(path)
    try:
        assert [(row["session_id"], row["status"], row["pid"]) for row in ledger.rows()] == [
            ("done", "ok", stopping.pid),
            ("running", "interrupted", stopping.pid),
        ]
        handed: list[list[dict[str, Any]]] = []
        ledger.interrupted.follow(handed.append)  # what a gateway's audit log would record
        assert [[row["session_id"] for row in batch] for batch in handed] == [["running"]]
    finally:
        ledger.close()


def _edited_spool(spool: Path, session_id: str, edit: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rewrite the spool's row line of ``session_id`` with ``edit(values)`` applied, its checksum made
    good again (a line as a stopping process could have written it); (the line as it was, as it is now)."""
    contents = read_spool(spool.read_bytes())
    out = []
    found: tuple[dict[str, Any], dict[str, Any]] | None = None
    for body in contents.lines:
        if body["kind"] == "row" and session_id in body["values"]:
            changed = {**body, "values": edit(list(body["values"]))}
            found = (body, changed)
            body = changed
        out.append(ledger_spool._line(body))
    assert found is not None
    spool.write_bytes(b"".join(out))
    return found


def _without_time(values: list[Any]) -> list[Any]:
    values[0] = None  # the start time: the table refuses a row without one (NOT NULL)
    return values


def _with_an_object(values: list[Any]) -> list[Any]:
    values[3] = {"session": values[3]}  # a JSON object where a text goes: no value SQLite can bind
    return values


@pytest.mark.parametrize(
    ("edit", "why"),
    [(_without_time, "NOT NULL constraint failed: requests.time"), (_with_an_object, "not supported")],
    ids=["refused-by-the-table", "unbindable"],
)
def test_a_spooled_row_the_file_refuses_is_moved_to_the_rejected_file_never_dropped(
    path: Path, stopped_while_locked: tuple[Holder, int], caplog: pytest.LogCaptureFixture, edit: Any, why: str
):
    holder, _ = stopped_while_locked
    holder.release()
    spool = spool_path(path)
    original, refused = _edited_spool(spool, "s1", edit)
    with caplog.at_level(logging.WARNING, logger="gtl_nb"):
        Ledger(path).close()  # opens all the same
    assert [row[0] for row in rows_of(path)] == ["early", "s0", "s2", "running"]
    rejected = ledger_spool.rejected_path(path)
    assert rejected.name == "ledger.sqlite3-spool-rejected.jsonl"
    kept = read_spool(rejected.read_bytes())
    assert kept.damaged == [] and kept.lines == [refused]  # the line as it was, checksum and all
    assert oct(rejected.stat().st_mode & 0o777) == "0o600"
    said = [record.getMessage() for record in caplog.records if "refused and not applied" in record.getMessage()]
    assert len(said) == 1  # once, with the count
    assert f"1 write(s) of the spool {spool} were refused" in said[0] and why in said[0] and str(rejected) in said[0]
    assert "it is lost" not in caplog.text
    assert spool.read_bytes() == b""
    # the cause fixed (here, the line itself) and appended to the spool: the next opening writes it, once
    spool.write_bytes(ledger_spool._line(original))
    Ledger(path).close()
    assert [row[:2] for row in rows_of(path)] == [
        ("early", "ok"),
        ("s0", "ok"),
        ("s2", "ok"),
        ("running", "started"),
        ("s1", "ok"),
    ]
    spool.write_bytes(ledger_spool._line(original))  # a second copy changes nothing
    Ledger(path).close()
    assert len(rows_of(path)) == 5


def test_damaged_lines_that_cannot_be_kept_aside_leave_the_spool_as_it_is(
    path: Path, stopped_while_locked: tuple[Holder, int], caplog: pytest.LogCaptureFixture
):
    holder, _ = stopped_while_locked
    holder.release()
    spool = spool_path(path)
    lines = spool.read_bytes().splitlines(keepends=True)
    corrupt = lines[2].replace(b'"ok"', b'"error"')  # s1's row: its checksum no longer matches
    spool.write_bytes(lines[0] + lines[1] + corrupt + lines[3] + lines[4])
    damaged = spool.with_name(spool.name + ".damaged")
    damaged.mkdir()  # where the damaged lines go cannot be written
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        Ledger(path).close()
    assert f"cannot be kept in {damaged}" in caplog.text
    assert spool.read_bytes() == lines[0] + lines[1] + corrupt + lines[3] + lines[4]  # the only copy stays
    applied = rows_of(path)
    assert [row[0] for row in applied] == ["early", "s0", "s2", "running"]
    damaged.rmdir()
    Ledger(path).close()  # the lines applied are found applied, the damaged one is kept aside now
    assert rows_of(path) == applied
    assert damaged.read_bytes() == corrupt
    assert spool.read_bytes() == b""


class _FailingConnection:
    """A connection whose ``nth`` statement fails with ``error``, as a corrupt file fails one."""

    def __init__(self, conn: sqlite3.Connection, nth: int, error: BaseException) -> None:
        self.conn, self.nth, self.error, self.calls = conn, nth, error, 0

    def execute(self, statement: str, values: Any = ()) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise self.error
        return self.conn.execute(statement, values)


def test_a_corrupt_file_is_no_rows_fault_the_replay_waits_whole(
    path: Path,
    stopped_while_locked: tuple[Holder, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    holder, _ = stopped_while_locked
    holder.release()
    spool = spool_path(path)
    before = spool.read_bytes()
    real = ledger_spool._execute
    failing: dict[int, _FailingConnection] = {}

    def on_a_corrupt_file(conn: sqlite3.Connection, statement: str, values: list[Any], where: Any) -> Any:
        proxy = failing.setdefault(
            id(conn), _FailingConnection(conn, 3, sqlite3.DatabaseError("database disk image is malformed"))
        )
        return real(proxy, statement, values, where)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_spool, "_execute", on_a_corrupt_file)
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        Ledger(path).close()
    assert "stay there for the next opening" in caplog.text and "it is lost" not in caplog.text
    assert rows_of(path) == [("early", "started", None, None)]  # nothing of the replay happened
    assert spool.read_bytes() == before
    assert not ledger_spool.rejected_path(path).exists()
    monkeypatch.setattr(ledger_spool, "_execute", real)
    Ledger(path).close()
    assert [row[0] for row in rows_of(path)] == ["early", "s0", "s1", "s2", "running"]


# Appends to a spool whose disk fills mid-append: the process's file size limit (RLIMIT_FSIZE, SIGXFSZ ignored)
# lets the first bytes of the append through and refuses the rest (EFBIG), as a filling disk does (ENOSPC).
FILLING = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from gtl_nb.engine.ledger_batch import Start
    from gtl_nb.engine.ledger_spool import SpoolWriter

    spool = Path(sys.argv[1])
    writer = SpoolWriter(spool, "host")

    def lines(first, count):
        ops = [Start(-(first + i + 1), first + i + 1, 1.0, f"s{first + i}", "ada", "m") for i in range(count)]
        return writer.lines(ops, {})[0]

    writer.append(lines(0, 2))
    size = spool.stat().st_size
    more = lines(2, 50)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, resource.RLIM_INFINITY))
    try:
        writer.append(more)
    except OSError as exc:
        print("refused", exc.errno, size, flush=True)
    else:
        print("taken", 0, size, flush=True)
    """
)


def test_an_append_the_disk_fills_during_is_refused_whole_and_leaves_the_spool_as_it_was(tmp_path: Path):
    spool = tmp_path / "ledger.sqlite3-spool.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", FILLING, str(spool)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    said, errno, size = done.stdout.split()
    assert said == "refused" and int(errno) in (27, 28)  # EFBIG (the limit), ENOSPC (a full disk)
    assert spool.stat().st_size == int(size)  # the lines that got through were cut off again
    contents = read_spool(spool.read_bytes())
    assert contents.damaged == []
    assert [line["kind"] for line in contents.lines] == ["row", "row"]


def test_an_append_whose_sync_fails_leaves_nothing_of_its_lines_in_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    spool = tmp_path / "ledger.sqlite3-spool.jsonl"
    writer = ledger_spool.SpoolWriter(spool, "host")
    first, _ = writer.lines([ledger_batch.Start(-1, 1, T0, "s0", "ada", "m")], {})
    writer.append(first)
    before = spool.read_bytes()
    real = os.fsync
    synced: list[int] = []

    def failing_once(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    more, _ = writer.lines([ledger_batch.Start(-2, 2, T0, "s1", "ada", "m")], {})
    with pytest.raises(OSError, match="Input/output error"):
        writer.append(more)
    assert spool.read_bytes() == before  # written, then cut off again: the caller keeps the write for the file


def test_writes_the_spool_refused_during_a_lock_land_once_when_it_goes(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(ledger_writer, "BLOCKED_AFTER", 0.2)
    real = os.fsync
    refused: list[int] = []

    def failing_while_it_holds_lines(fd: int) -> None:  # the spool's sync fails once its bytes are written
        if os.fstat(fd).st_size > 0:
            refused.append(fd)
            raise OSError(5, "Input/output error")
        real(fd)

    store = SqliteUsageLedger(path)
    holder = Holder(path, "IMMEDIATE")
    try:
        monkeypatch.setattr(os, "fsync", failing_while_it_holds_lines)

        async def while_locked() -> None:
            for index in range(3):
                row = await store.start(session_id=f"s{index}", context=ADA, model="m", now=T0 + index)
                await store.finish(row, status="ok", tokens_in=index, now=T0 + index + 1)

        with caplog.at_level(logging.ERROR, logger="gtl_nb"):
            asyncio.run(while_locked())
            deadline = time.monotonic() + 30
            while not refused:  # the lock passed BLOCKED_AFTER: the writer tried the spool, which refused
                assert time.monotonic() < deadline, "the writer never tried the spool"
                time.sleep(0.02)
        assert "refused" in caplog.text and "they wait in memory for the file" in caplog.text
        assert not spool_path(path).exists() or read_spool(spool_path(path).read_bytes()).lines == []
        monkeypatch.setattr(os, "fsync", real)
        holder.release()
        asyncio.run(store.flush())
    finally:
        monkeypatch.setattr(os, "fsync", real)
        holder.release()
        store.close()
    Ledger(path).close()  # a spool holding the refused lines too would write them a second time here
    assert [row[:3] for row in rows_of(path)] == [("s0", "ok", 0), ("s1", "ok", 1), ("s2", "ok", 2)]
