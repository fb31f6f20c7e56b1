"""``bench.profile_gateway`` reads py-spy's raw profiles (with and without ``--threads``) and splits a
process's CPU by thread from ``/proc`` — the pieces its report is made of, on fixed inputs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.procstat import thread_cpu_seconds
from bench.profile_gateway import by_thread, parse_raw, per_thread_report, python_thread_names, summarise

THREADED = "\n".join(
    [
        "thread (101): MainThread;run (/x/gtl_nb/engine/core.py:10);send (/x/gtl_nb/engine/http.py:20) 6",
        "thread (101): MainThread;Runner.run (/usr/lib/python3.11/asyncio/runners.py:118) 3",
        "thread (102): gtl_nb ledger writer /tmp/a/b.sqlite3;_write (/x/gtl_nb/engine/ledger_batch.py:5) 1",
        "thread (103): Thread-1 (_poll_wrapper) 2",
    ]
)


def test_a_profile_with_threads_is_read_by_function_owner_and_thread() -> None:
    selves = parse_raw(THREADED)
    assert selves[("send (gtl_nb/engine/http.py)", "gtl_nb (ours)")] == 6
    assert selves[("Runner.run (/usr/lib/python3.11/asyncio/runners.py)", "asyncio")] == 3
    assert selves[("(native code, no Python frame)", "native / unknown")] == 2  # the thread frame is no function
    assert by_thread(THREADED) == {"MainThread": 9, "gtl_nb ledger writer": 1, "Thread-1 (_poll_wrapper)": 2}
    assert python_thread_names(THREADED) == {
        101: "MainThread",
        102: "gtl_nb ledger writer",
        103: "Thread-1 (_poll_wrapper)",
    }
    report = summarise(THREADED)
    assert "samples by thread:" in report and "75.0 %  MainThread" in report


def test_a_profile_without_threads_reads_as_before() -> None:
    plain = "run (/x/gtl_nb/engine/core.py:10);send (/x/gtl_nb/engine/http.py:20) 4"
    assert parse_raw(plain) == {("send (gtl_nb/engine/http.py)", "gtl_nb (ours)"): 4}
    assert by_thread(plain) == {}
    assert "samples by thread" not in summarise(plain)


def test_cpu_per_request_is_split_by_thread_from_proc() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, name="spinner")
    before = thread_cpu_seconds(os.getpid())
    worker.start()
    time.sleep(0.3)
    after = thread_cpu_seconds(os.getpid())
    stop.set()
    worker.join()
    assert os.getpid() in after and worker.native_id in after
    assert after[worker.native_id][1] > 0  # it ran (100 Hz ticks: 0.3 s of spinning is some)
    profile = f"thread ({worker.native_id}): spinner;spin (/x/bench/t.py:1) 5"
    report = per_thread_report(before, after, 10, profile)
    assert report.startswith("gateway CPU per request (/proc, all threads):")
    assert "spinner" in report  # named as the profile names its thread id


def test_threads_that_ended_during_the_phase_are_counted_from_the_process_total() -> None:
    before = {1: ("python", 1.0), 2: ("python", 0.5)}
    after = {1: ("python", 2.0)}  # thread 2 ended: its CPU is in the process's total only
    report = per_thread_report(before, after, 100, "thread (1): MainThread;f (/x/y.py:1) 3", process_seconds=1.5)
    assert "10.000 ms  MainThread" in report
    assert "5.000 ms  (threads that ended during the phase)" in report
    assert report.startswith("gateway CPU per request (/proc, all threads): 15.000 ms")


def test_chunk_cost_reports_the_slope_between_the_two_longest_answers() -> None:
    from bench.chunk_cost import report

    text = report({1: 0.8e6, 16: 1.0e6, 64: 1.96e6})
    assert "| 16 token(s) | 1.000 |" in text
    assert "per chunk (16 → 64 tokens): 20.0 k instructions" in text


def test_the_compiled_comparison_names_modules_that_exist():
    """``bench.ab_compiled`` compiles modules by path: a module renamed or removed must fail here, not
    halfway through a half-hour benchmark."""
    from bench.ab_compiled import HOT_MODULES

    root = Path(__file__).resolve().parents[2]
    assert len(set(HOT_MODULES)) == len(HOT_MODULES)
    assert [module for module in HOT_MODULES if not (root / module).is_file()] == []
