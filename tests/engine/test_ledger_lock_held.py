"""Another process holds the SQLite ledger file's write lock (``BEGIN EXCLUSIVE``) for longer than
``BLOCKED_AFTER``: the store says it is degraded — the file, for how long, how many rows wait in memory —
with one warning, and recovers with one line once the lock goes and the rows land, each once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

ADA = RequestContext(principal="ada", tenant="acme", key_id="k1", trace_id="t1")

# Another process holding the file's write lock (BEGIN EXCLUSIVE) until it reads a line.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("held", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    """
)


class Holder:
    """The other process: ``release()`` lets the lock go and waits for it to end."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            assert self.process.wait(30) == 0


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

        async def before() -> None:
            await one("early")
            await store.flush()

        asyncio.run(before())
        assert store.degraded_reason is None
        holder = Holder(path)
        with caplog.at_level(logging.INFO, logger="gtl_nb"):

            async def while_locked() -> str:
                for index in range(3):
                    await one(f"s{index}")
                await store.start(session_id="running", context=ADA, model="m")  # started, not finished
                return await asyncio.to_thread(wait_until, lambda: store.degraded_reason, "the ledger to say so")

            reason = asyncio.run(while_locked())
            assert str(path) in reason and "locked by another process for" in reason
            assert "4 row(s) and 0 outcome(s) wait in memory" in reason
            assert sessions_of(path) == [("early", "ok")]  # nothing of them reached the file yet
            holder.release()
            asyncio.run(store.flush())
            assert store.degraded_reason is None
        said = [record for record in caplog.records if "write lock" in record.getMessage()]
        assert [record.levelname for record in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
        assert "4 queued write(s) wait in memory" in said[0].getMessage()
        assert "free again" in said[1].getMessage()
        assert sessions_of(path) == [
            ("early", "ok"),
            ("s0", "ok"),
            ("s1", "ok"),
            ("s2", "ok"),
            ("running", "started"),
        ]
    finally:
        if holder is not None:
            holder.release()
        store.close()
    Ledger(path).close()
    assert len(sessions_of(path)) == 5  # each once
