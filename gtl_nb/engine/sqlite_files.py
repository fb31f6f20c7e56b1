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

__all__ = ["create_private_file", "is_busy", "retry_while_busy", "run_transaction"]

log = get_logger("engine.sqlite")
T = TypeVar("T")
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


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
) -> T:
    """Run ``operation``, retrying with jittered backoff while SQLite reports busy/locked.

    Another SQLite failure is ``error``; still busy after ``retry_for`` seconds — or once ``stop()`` says
    so (a writer giving up at its deadline) — is ``busy_error``. The timer is the monotonic clock of this
    worker thread: it bounds waiting on a file lock, not engine time.
    """
    deadline = time.monotonic() + retry_for
    delay = 0.002
    while True:
        try:
            return operation()
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise error(f"{what}: {exc}") from exc
            remaining = deadline - time.monotonic()
            if stop is not None and stop():
                raise busy_error(f"{what} is locked by another process; no longer waiting for it") from None
            if remaining <= 0:
                raise busy_error(
                    f"{what} stayed busy for {retry_for:g} s; another process holds its write lock"
                ) from None
            log.debug("%s busy (%s); retrying", what, exc)
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.1)


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
