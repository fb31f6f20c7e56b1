"""One SQLite file that the SQLite stores (budgets, cache, breakers) share between processes.

The same discipline as the ledger (``docs/ledger.md``, "Concurrency"): WAL journal, SQLite's
``busy_timeout``, every change one short ``BEGIN IMMEDIATE`` transaction on this process's single
connection (guarded by a lock), and contention that outlasts the busy timeout retried with jittered
backoff until ``retry_for`` — so "database is locked" never reaches a caller. A forked child opens a
connection of its own. The stores call it from the engine's loop through a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gtl_nb.engine.sqlite_files import create_private_file, retry_while_busy, run_transaction
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError

__all__ = ["SqliteDatabase", "StoreBusyError", "StoreError"]

log = get_logger("engine.stores")

T = TypeVar("T")
_INHERITED: list[sqlite3.Connection] = []  # a parent's connections, kept referenced in a forked child


class StoreError(GTLError):
    """A store could not do what was asked (its file is unusable, or it was closed)."""


class StoreBusyError(StoreError):
    """A store's file stayed locked by other writers for longer than ``retry_for`` seconds."""


class SqliteDatabase:
    """A SQLite file opened for one store: ``transaction(work)`` runs ``work`` under ``BEGIN IMMEDIATE``.

    ``setup`` runs once per connection inside such a transaction (``CREATE TABLE IF NOT EXISTS ...``),
    so processes that open a new file at once cannot trip over each other.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        setup: Callable[[sqlite3.Connection], None],
        busy_timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._setup = setup
        self._busy_timeout = busy_timeout
        self._retry_for = retry_for
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._closed = False
        _create_private_file(self.path)

    def transaction(self, work: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction, retried while the file is busy: ``BEGIN IMMEDIATE``, so a
        read-decide-write is one step, or for ``write=False`` a plain (deferred) read."""

        def attempt() -> T:
            return run_transaction(self._connection(), work, "BEGIN IMMEDIATE" if write else "BEGIN")

        with self._lock:
            return self._retrying(attempt)

    def close(self) -> None:
        """Close this process's connection; later calls raise ``StoreError``."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._conn_pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        if self._conn is None or self._conn_pid != os.getpid():
            if self._conn is not None:  # never use (or close) a connection across fork()
                _INHERITED.append(self._conn)
            self._conn = self._open()
            self._conn_pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, BEGIN and COMMIT are ours
        conn = sqlite3.connect(
            str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("store %s: journal mode %s, not WAL; readers may wait for writers", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")  # safe against crashed processes in WAL mode
            conn.execute("BEGIN IMMEDIATE")
            self._setup(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _retrying(self, operation: Callable[[], T]) -> T:
        return retry_while_busy(
            operation, retry_for=self._retry_for, what=f"store {self.path}", error=StoreError, busy_error=StoreBusyError
        )


def _create_private_file(path: Path) -> None:
    create_private_file(path, what="store file")
