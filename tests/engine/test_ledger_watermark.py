"""The watermark the ledgers' ``when_written`` share (``engine.ledger_watermark``): callbacks run in the
order of their writes once the watermark reaches them, at once when it has already, each on its own
(one that raises neither stops the others nor the writer), and safely from many threads."""

from __future__ import annotations

import logging
import threading

import pytest

from gtl_nb.engine.ledger_watermark import Watermark
from gtl_nb.log import get_logger

log = get_logger("engine.ledger")


def test_callbacks_run_in_the_order_of_their_writes_once_the_watermark_reaches_them():
    mark = Watermark("ledger test", log)
    called: list[str] = []
    # registered out of their writes' order (two threads read the write number, then register)
    mark.call_when(3, lambda: called.append("c"))
    mark.call_when(1, lambda: called.append("a"))
    mark.call_when(2, lambda: called.append("b1"))
    mark.call_when(2, lambda: called.append("b2"))  # the same write: in the order they were registered
    mark.raise_to(0)
    assert called == []
    mark.raise_to(2)
    assert called == ["a", "b1", "b2"]
    assert mark.value == 2 and mark.pending() == 1
    mark.raise_to(3)
    assert called == ["a", "b1", "b2", "c"]
    assert mark.pending() == 0


def test_the_watermark_never_goes_down():
    mark = Watermark("ledger test", log)
    mark.raise_to(5)
    mark.raise_to(3)  # a late report of an older commit
    assert mark.value == 5
    called: list[int] = []
    mark.call_when(4, lambda: called.append(4))
    assert called == [4]


def test_a_callback_registered_after_the_watermark_passed_runs_at_once_on_the_caller_thread():
    mark = Watermark("ledger test", log)
    mark.raise_to(7)
    threads: list[threading.Thread] = []
    mark.call_when(7, lambda: threads.append(threading.current_thread()))
    mark.call_when(1, lambda: threads.append(threading.current_thread()))
    mark.call_when(0, lambda: threads.append(threading.current_thread()))  # nothing was queued
    assert threads == [threading.current_thread()] * 3
    assert mark.pending() == 0


def test_a_callback_that_raises_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture):
    mark = Watermark("ledger /tmp/x.sqlite3", log)
    called: list[int] = []

    def broken() -> None:
        raise RuntimeError("a watcher's defect")

    mark.call_when(1, lambda: called.append(1))
    mark.call_when(2, broken)
    mark.call_when(2, lambda: called.append(2))
    mark.call_when(3, lambda: called.append(3))
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        mark.raise_to(3)  # never raises: the writer goes on
    assert called == [1, 2, 3]
    assert "ledger /tmp/x.sqlite3: a call after a commit failed" in caplog.text
    assert "a watcher's defect" in caplog.text  # the traceback, for whoever fixes the watcher
    assert mark.pending() == 0


def test_a_callback_that_raises_when_called_at_once_raises_to_its_caller():
    mark = Watermark("ledger test", log)

    def broken() -> None:
        raise RuntimeError("the caller's own defect")

    with pytest.raises(RuntimeError, match="the caller's own defect"):
        mark.call_when(0, broken)


def test_a_shared_lock_lets_the_owner_raise_the_watermark_with_its_own_state():
    lock = threading.Lock()
    mark = Watermark("ledger test", log, lock=lock)
    called: list[int] = []
    mark.call_when(2, lambda: called.append(2))
    with lock:  # as the SQLite writer does: its flushes' condition reads the value under the same lock
        ready = mark.raise_locked(2)
        assert mark.value == 2
        assert called == []  # nothing runs while the lock is held
    mark.run(ready)
    assert called == [2]


def test_a_callback_may_register_another_when_it_runs():
    mark = Watermark("ledger test", log)
    called: list[str] = []
    mark.call_when(1, lambda: mark.call_when(1, lambda: called.append("inner")))
    mark.raise_to(1)  # the lock is not held while callbacks run: no deadlock, and the inner one runs at once
    assert called == ["inner"]


def test_many_threads_registering_while_another_raises_each_callback_runs_once_in_order():
    mark = Watermark("ledger test", log)
    writes = 2_000
    registrars = 4
    numbering = threading.Lock()
    queued = [0]  # the writes queued so far, numbered as a ledger numbers them
    calls: list[tuple[int, int, str]] = []  # (target, the watermark when it ran, the thread that ran it)
    calls_lock = threading.Lock()
    start = threading.Barrier(registrars + 1)

    def register() -> None:
        start.wait()
        for _ in range(writes // registrars):
            with numbering:
                queued[0] += 1
                target = queued[0]

            def done(target: int = target) -> None:
                with calls_lock:
                    calls.append((target, mark.value, threading.current_thread().name))

            mark.call_when(target, done)

    def raise_watermark() -> None:
        start.wait()
        while mark.value < writes:
            with numbering:
                bound = queued[0]
            mark.raise_to(bound)

    threads = [threading.Thread(target=register) for _ in range(registrars)]
    threads.append(threading.Thread(target=raise_watermark, name="raiser"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(target for target, _, _ in calls) == list(range(1, writes + 1))  # each exactly once
    assert all(seen >= target for target, seen, _ in calls)  # never before its write was safe
    assert mark.pending() == 0 and mark.value == writes
    # the ones the raising thread called, it called in the order of their writes
    raised = [target for target, _, name in calls if name == "raiser"]
    assert raised == sorted(raised)
