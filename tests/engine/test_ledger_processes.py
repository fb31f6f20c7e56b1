"""Processes writing one ledger file through their writer threads: no lost rows, no "database is
locked", rows drained at a normal exit, and the committed rows of a killed process recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from gtl_nb.engine.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# One worker: `count` requests, ten at a time, on the shared file; a busy timeout of 1 ms makes the
# processes collide on the write lock all the time, so the retries are what keeps rows from failing.
WORKER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    logging.basicConfig(level=logging.WARNING)

    async def main(path, name, count):
        store = SqliteUsageLedger(Ledger(path, busy_timeout=0.001), owns=True)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        context = RequestContext(principal=name)

        async def one(index):
            row = await store.start(session_id=f"{name}-{index}", context=context, model="m")
            await asyncio.sleep(0.001 * (index % 3))  # the upstream call: some end in the same batch
            if index % 2:
                await store.finish(row, status="ok", tokens_in=index, cost=0.001)
            else:
                await store.finish(row, status="error", error_code="TIMEOUT")

        for base in range(0, count, 10):
            await asyncio.gather(*(one(base + i) for i in range(10)))
        await store.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_four_processes_lose_no_row_and_never_report_a_locked_file(tmp_path: Path):
    path = tmp_path / "shared.sqlite3"
    Ledger(path).close()  # created and migrated once, so the workers race only on rows
    names = [f"p{index}" for index in range(4)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), name, "200"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for name in names
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # released together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            assert "locked" not in err and "WARNING" not in err and "ERROR" not in err, err
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    with Ledger(path) as ledger:
        rows = ledger.rows()
    assert len(rows) == 800
    assert Counter(row["session_id"] for row in rows) == Counter(f"{n}-{i}" for n in names for i in range(200))
    assert Counter(row["status"] for row in rows) == {"ok": 400, "error": 400}
    assert all(row["tokens_in"] == int(row["session_id"].split("-")[1]) for row in rows if row["status"] == "ok")
    assert len({row["pid"] for row in rows}) == 4


EXITS = textwrap.dedent(
    """
    import asyncio, sys, time
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    store = SqliteUsageLedger(sys.argv[1])
    ledger = store._writer.ledger
    commit = ledger.transaction

    def slow(work, **options):  # a slow disk: rows are certainly still queued when the script ends
        time.sleep(0.02)
        return commit(work, **options)

    ledger.transaction = slow

    async def main():
        context = RequestContext(principal="ada")
        for index in range(100):
            row = await store.start(session_id=f"s{index}", context=context, model="m")
            await store.finish(row, status="ok")

    asyncio.run(main())  # no aclose: the interpreter's exit drains the queue
    """
)


def test_rows_still_queued_at_a_normal_exit_are_written(tmp_path: Path):
    path = tmp_path / "exit.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", EXITS, str(path)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with Ledger(path) as ledger:
        rows = ledger.rows()
    assert [row["session_id"] for row in rows] == [f"s{index}" for index in range(100)]
    assert {row["status"] for row in rows} == {"ok"}


KILLED = textwrap.dedent(
    """
    import asyncio, sys
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.sqlite import SqliteUsageLedger

    async def main():
        store = SqliteUsageLedger(sys.argv[1])
        context = RequestContext(principal="ada")
        for index in range(20):
            row = await store.start(session_id=f"s{index}", context=context, model="m")
            if index < 5:
                await store.finish(row, status="ok")
        await store.flush()  # committed: only what is queued after this could be lost
        print("written", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # killed here, 15 requests in flight

    asyncio.run(main())
    """
)


def test_the_committed_rows_of_a_killed_process_are_recovered_as_interrupted(tmp_path: Path):
    path = tmp_path / "killed.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with Ledger(path) as ledger:  # opening recovers the rows of dead processes
        rows = ledger.rows()
    assert Counter(row["status"] for row in rows) == {"ok": 5, "interrupted": 15}
