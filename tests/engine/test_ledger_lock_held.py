"""Another process holds the SQLite ledger file's write lock (``BEGIN EXCLUSIVE``) for longer than
``BLOCKED_AFTER``: the store says it is degraded — the file, for how long, how many rows wait in memory —
with one warning, and recovers with one line once the lock goes and the rows land, each once."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ledger_spool import read_spool, spool_path
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger
from tests.ledger_locks import Holder

REPO = Path(__file__).resolve().parents[2]
ADA = RequestContext(principal="ada", tenant="acme", key_id="k1", trace_id="t1")


def wait_until(condition, what: str, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while not (found := condition()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)
    return found


def sessions_of(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT session_id, status FROM requests ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("loop_commits", [False, True], ids=["thread", "loop"])
def test_a_lock_held_by_another_process_makes_the_ledger_say_it_is_degraded_until_a_commit_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop_commits: bool
):
    path = tmp_path / "ledger.sqlite3"
    store = SqliteUsageLedger(path, loop_commits=loop_commits)
    holder = None
    try:

        async def one(session: str) -> None:
            row = await store.start(session_id=session, context=ADA, model="m")
            await store.finish(row, status="ok", tokens_in=1, tokens_out=2, cost=0.5)

        async def before() -> int:
            await one("early")
            long = await store.start(session_id="long", context=ADA, model="m")  # committed started, finished later
            await store.flush()
            return long

        long = asyncio.run(before())
        running = 0
        assert store.degraded_reason is None
        holder = Holder(path)
        with caplog.at_level(logging.INFO, logger="gtl_nb"):

            async def while_locked() -> str:
                await store.finish(long, status="ok", tokens_in=7)  # the outcome of a row in the file
                for index in range(3):
                    await one(f"s{index}")
                nonlocal running
                running = await store.start(session_id="running", context=ADA, model="m")  # finished after the lock

                def spooled() -> str | None:  # said as the lock passes BLOCKED_AFTER, spooled right after
                    reason = store.degraded_reason
                    return reason if reason and "0 row(s) and 0 outcome(s) wait in memory" in reason else None

                return await asyncio.to_thread(wait_until, spooled, "the ledger to say so")

            reason = asyncio.run(while_locked())
            assert str(path) in reason and "locked by another process for" in reason
            assert f"write(s) spooled in {path}-spool.jsonl since" in reason  # safe from a crash meanwhile
            assert "0 row(s) and 0 outcome(s) wait in memory" in reason
            assert sessions_of(path) == [("early", "ok"), ("long", "started")]  # nothing of them reached it yet
            assert len(read_spool(spool_path(path).read_bytes()).lines) >= 5  # (a start and its end: one or two)
            holder.release()
            asyncio.run(store.flush())  # returns once the spool is written into the file
            assert store.degraded_reason is None
            assert sessions_of(path)[-1] == ("running", "started")

            async def finish_running() -> None:  # the outcome of a row the spool's replay wrote: an UPDATE of it
                await store.finish(running, status="ok", tokens_in=5)
                await store.flush()

            asyncio.run(finish_running())
        said = [record for record in caplog.records if "write lock" in record.getMessage()]
        assert [record.levelname for record in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
        assert "queued write(s)" in said[0].getMessage() and "go to the spool" in said[0].getMessage()
        assert "free again" in said[1].getMessage()
        assert sessions_of(path) == [
            ("early", "ok"),
            ("long", "ok"),
            ("s0", "ok"),
            ("s1", "ok"),
            ("s2", "ok"),
            ("running", "ok"),
        ]
        assert not spool_path(path).exists() or spool_path(path).read_bytes() == b""
    finally:
        if holder is not None:
            holder.release()
        store.close()
    Ledger(path).close()
    assert len(sessions_of(path)) == 6  # each once


# A process that answers requests while the lock is held, then is killed (SIGKILL) once its writes are spooled.
KILLED = textwrap.dedent(
    """
    import asyncio, sys, time
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    async def main():
        store = SqliteUsageLedger(sys.argv[1])
        context = RequestContext(principal="ada")
        row = await store.start(session_id="early", context=context, model="m")
        await store.finish(row, status="ok")
        await store.flush()
        print("written", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the other process holds the lock from now on
        for index in range(5):
            row = await store.start(session_id=f"s{index}", context=context, model="m")
            await store.finish(row, status="ok", tokens_in=index)
        await store.start(session_id="open", context=context, model="m")  # running when killed
        while "0 row(s) and 0 outcome(s) wait in memory" not in (store.degraded_reason or ""):
            await asyncio.sleep(0.02)  # the lock passed BLOCKED_AFTER and the writes are spooled
        print("spooled", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # killed here

    asyncio.run(main())
    """
)


def test_a_process_killed_during_a_long_lock_loses_nothing_its_spool_held_and_each_row_lands_once(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    holder = None
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "written"
        holder = Holder(path)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "spooled"
        child.kill()  # SIGKILL: no exit handler, no drain
        child.wait(30)
        assert sessions_of(path) == [("early", "ok")]
        assert len(read_spool(spool_path(path).read_bytes()).lines) >= 6  # five finished rows, one started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if holder is not None:
            holder.release()
    Ledger(path).close()  # the next opening writes the spool, then recovery judges the rows of the dead process
    expected = [("early", "ok")] + [(f"s{index}", "ok") for index in range(5)] + [("open", "interrupted")]
    assert sessions_of(path) == expected
    Ledger(path).close()
    assert sessions_of(path) == expected  # once


# A process writing a finished row every ~10 ms all through a long lock: once its writes go to the spool (the lock
# passed BLOCKED_AFTER) it says how many rows it has finished 1.5 s later, writes on, and is killed (SIGKILL).
STREAMING = textwrap.dedent(
    """
    import asyncio, sys
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    async def main():
        store = SqliteUsageLedger(sys.argv[1], loop_commits=sys.argv[2] == "loop")
        context = RequestContext(principal="ada")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the other process holds the lock from now on
        finished = 0

        async def write():
            nonlocal finished
            while True:
                row = await store.start(session_id=f"s{finished}", context=context, model="m")
                await store.finish(row, status="ok", tokens_in=finished)
                finished += 1
                await asyncio.sleep(0.01)

        writing = asyncio.create_task(write())
        while "spooled in" not in (store.degraded_reason or ""):  # the lock passed BLOCKED_AFTER
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # many commit windows, each of whose writes goes to the spool
        print("mark", finished, flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # killed here, still writing
        writing.cancel()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("commits", ["thread", "loop"])
def test_a_process_killed_late_in_a_long_lock_loses_none_of_the_rows_it_finished_windows_before(
    tmp_path: Path, commits: str
):
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    child = subprocess.Popen(
        [sys.executable, "-c", STREAMING, str(path), commits],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    holder = None
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        holder = Holder(path)
        child.stdin.write("\n")
        child.stdin.flush()
        word, count = child.stdout.readline().split()
        assert word == "mark"
        marked = int(count)
        assert marked > 0
        time.sleep(1.0)  # it writes on (the writes of the last windows may be lost with it)
        child.kill()  # SIGKILL, 3.5 s into the lock: no exit handler, no drain
        child.wait(30)
        assert sessions_of(path) == []  # nothing reached the file: everything is in the spool or lost
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if holder is not None:
            holder.release()
    Ledger(path).close()  # the next opening writes the spool
    rows = sessions_of(path)
    sessions = [session for session, _ in rows]
    assert len(sessions) == len(set(sessions))  # each once
    landed = dict(rows)
    missing = [index for index in range(marked) if landed.get(f"s{index}") != "ok"]
    assert missing == [], f"{len(missing)} of the {marked} rows finished long before the kill are lost"
    assert len(rows) >= marked
