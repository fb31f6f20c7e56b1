"""CPU time and resident memory of a process and its descendants, read from ``/proc``.

CPU is ``utime + stime`` of ``/proc/<pid>/stat`` (every thread's, exited threads included), in clock
ticks converted to seconds: 10 ms resolution at the usual 100 Hz, so a phase must run long enough for
a few hundred ticks. The tree is found by scanning ``/proc/*/stat`` for parent ids (this kernel has no
``/proc/<pid>/task/<tid>/children``): LiteLLM, for one, may start worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process so far (0 when it is gone)."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    # after the name: state(0) ppid(1) … utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """User plus system CPU seconds so far of each live thread of ``pid``: thread id → (the name the
    kernel knows it by, seconds). Native threads a library starts are counted too (a Python profiler
    cannot see them); Python 3.11's own threads are all named after the executable."""
    threads: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = raw[raw.find(b"(") + 1 : raw.rfind(b")")].decode(errors="replace")
        fields = raw[raw.rfind(b")") + 2 :].decode().split()
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return threads


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return 0


@dataclass(frozen=True)
class Usage:
    """CPU seconds and RSS of a process tree at one moment."""

    cpu: float
    rss: int


def tree_usage(pid: int, pids: list[int] | None = None) -> Usage:
    """CPU seconds and RSS summed over ``pids`` (default: ``pid`` and its descendants, looked up now)."""
    members = pids if pids is not None else descendants(pid)
    return Usage(sum(cpu_seconds(p) for p in members), sum(rss_bytes(p) for p in members))
