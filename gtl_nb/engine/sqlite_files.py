"""What every SQLite file of the engine shares: a private file, and retrying while another process
holds the write lock (the usage ledger and the SQLite stores both use these)."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError, GTLError

__all__ = ["create_private_file", "is_busy", "lock_holders", "retry_while_busy", "run_transaction"]

log = get_logger("engine.sqlite")
T = TypeVar("T")
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
SAY_WAITING_AFTER = 3.0
"""Seconds of waiting for another process's write lock before one WARNING says so (at most half of
``retry_for``): a start that waits for a lock says why it is not serving yet, not only when it gives up."""
_MOST_HOLDERS = 5


def create_private_file(
    path: Path, *, what: str = "store file", advice: str = "", error: type[ConfigurationError] = ConfigurationError
) -> None:
    """Create the directory and an empty file readable by the owner only, unless they exist (SQLite
    gives its ``-wal`` and ``-shm`` files the database file's permissions). A path that cannot work
    is ``error``, naming ``what`` and ending with ``advice``."""
    tail = f"; {advice}" if advice else ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise error(f"cannot create the {what}'s directory {path.parent} ({reason}){tail}") from None
    if path.is_dir():
        raise error(f"the {what} path {path} is a directory{tail}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise error(f"cannot create the {what} {path} ({exc.strerror or exc}){tail}") from None
    os.close(fd)


def is_busy(exc: sqlite3.Error) -> bool:
    """True when SQLite refused because another connection holds a lock (worth retrying)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def retry_while_busy(
    operation: Callable[[], T],
    *,
    retry_for: float,
    what: str,
    error: type[GTLError],
    busy_error: type[GTLError],
    stop: Callable[[], bool] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> T:
    """Run ``operation``, retrying with jittered backoff while SQLite reports busy/locked.

    Another SQLite failure is ``error``; still busy after ``retry_for`` seconds — or once ``stop()`` says
    so (a writer giving up at its deadline) — is ``busy_error``. The timer is the monotonic clock of this
    worker thread: it bounds waiting on a file lock, not engine time. A wait past ``SAY_WAITING_AFTER``
    seconds is said once in a WARNING; that line and ``busy_error`` name the processes that have ``file``
    open (``lock_holders``) and how to proceed.
    """
    started = time.monotonic()
    deadline = started + retry_for
    say_after = started + min(SAY_WAITING_AFTER, retry_for / 2)
    said = False
    delay = 0.002
    while True:
        try:
            return operation()
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise error(f"{what}: {exc}") from exc
            now = time.monotonic()
            remaining = deadline - now
            if stop is not None and stop():
                raise busy_error(f"{what} is locked by another process; no longer waiting for it") from None
            if remaining <= 0:
                raise busy_error(
                    f"{what} stayed locked for {retry_for:g} s: another process holds its write lock"
                    f"{_held_by(file)}. End that process's transaction (or stop it), then try again"
                ) from None
            if not said and now >= say_after:
                said = True
                log.warning(
                    "waiting for the write lock of %s: another process holds it%s; waiting up to %.0f s more",
                    what,
                    _held_by(file),
                    remaining,
                )
            log.debug("%s busy (%s); retrying", what, exc)
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.1)


def lock_holders(file: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """The other processes (pid, command name) that have ``file`` open — one of them holds its lock —
    as far as this process may see (Linux's ``/proc``; elsewhere, or for another user's processes,
    nothing). Read only when a lock is waited for, never on a request's path."""
    try:
        target = os.path.realpath(file)
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except (OSError, ValueError):
        return []
    found: list[tuple[int, str]] = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in descriptors):
                continue
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                name = comm.read().strip()
        except OSError:  # gone, or not ours to read
            continue
        found.append((pid, name))
    return found


def _held_by(file: str | os.PathLike[str] | None) -> str:
    """`` (it is open in pid 123 (sqlite3), …)`` for the error and the WARNING, or nothing when unknown."""
    holders = lock_holders(file) if file is not None else []
    if not holders:
        return ""
    named = ", ".join(f"pid {pid} ({name})" for pid, name in holders[:_MOST_HOLDERS])
    more = f" and {len(holders) - _MOST_HOLDERS} more" if len(holders) > _MOST_HOLDERS else ""
    return f" (the file is open in {named}{more})"


def run_transaction(
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], begin: str = "BEGIN IMMEDIATE"
) -> T:
    """``work`` in one transaction on ``conn`` (``BEGIN IMMEDIATE`` takes the write lock now, not
    mid-transaction), committed, or rolled back on any exception."""
    conn.execute(begin)
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result
