"""The local spool of the PostgreSQL ledger: rows waiting, in order, for the database to come back.

A SQLite file (WAL, one short transaction per append), append-only in effect: ``append`` adds a
batch of writes at the end, ``head`` reads the oldest, ``remove`` deletes them once PostgreSQL has
committed them. Each entry is one ledger write as its SQL parameters (JSON): ``start`` (a row
inserted ``started``), ``finished`` (a row inserted finished) or ``finish`` (the finishing UPDATE),
with the writing replica and the write's number in that replica.

Every write is idempotent in PostgreSQL (rows are keyed by ``(replica, replica_seq)``; a finish
updates only a row still ``started``), so an entry replayed after a crash between the database's
COMMIT and the spool's DELETE changes nothing: nothing is lost, nothing is doubled. Several processes
of one host may share a spool file (the default one is per database): whoever drains takes the
entries oldest first, and an entry is deleted only after its write is committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from gtl_nb.engine.sqlite_files import create_private_file, retry_while_busy
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["Spool", "SpoolEntry"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool ("
    "n INTEGER PRIMARY KEY AUTOINCREMENT, replica TEXT NOT NULL, op_seq INTEGER NOT NULL, "
    "kind TEXT NOT NULL, params TEXT NOT NULL)"
)


class SpoolEntry(NamedTuple):
    """One spooled write: its place in the file, who wrote it, what it is."""

    n: int
    replica: str
    op_seq: int
    kind: str
    params: dict[str, Any]


class Spool:
    """The spool file at ``path`` (created, mode 600, with its directory)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        create_private_file(
            self.path,
            what="ledger spool",
            advice="pass spool_path= (or ?spool_path= in the ledger URL) a file in a writable directory",
            error=ConfigurationError,
        )
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # switching to WAL while another process opens the same file reports "locked" at once
            retry_while_busy(
                self._set_up, retry_for=30.0, what=f"ledger spool {self.path}", error=StoreError, busy_error=StoreError
            )
        except BaseException:
            self._conn.close()
            raise

    def _set_up(self) -> None:
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a crashed process loses nothing
        self._conn.execute(_SCHEMA)
        self._conn.execute("CREATE INDEX IF NOT EXISTS spool_replica ON spool (replica, op_seq)")

    def append(self, replica: str, entries: Iterable[tuple[int, str, dict[str, Any]]]) -> int:
        """Add ``(op_seq, kind, params)`` writes of ``replica`` at the end, in one transaction; how many."""
        rows = [(replica, seq, kind, json.dumps(params, separators=(",", ":"))) for seq, kind, params in entries]
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT INTO spool (replica, op_seq, kind, params) VALUES (?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    def head(self, limit: int) -> list[SpoolEntry]:
        """The oldest ``limit`` entries, oldest first."""
        with self._lock:
            found = self._conn.execute(
                "SELECT n, replica, op_seq, kind, params FROM spool ORDER BY n LIMIT ?", (limit,)
            ).fetchall()
        return [SpoolEntry(n, replica, seq, kind, json.loads(params)) for n, replica, seq, kind, params in found]

    def remove(self, entries: list[SpoolEntry]) -> None:
        """Delete ``entries`` (a ``head``: contiguous in the file) once their writes are committed."""
        if not entries:
            return
        with self._lock:
            self._conn.execute("DELETE FROM spool WHERE n BETWEEN ? AND ?", (entries[0].n, entries[-1].n))

    def count(self) -> int:
        """How many entries wait (every replica's)."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def first_of(self, replica: str) -> int | None:
        """The smallest ``op_seq`` of ``replica`` still waiting, or ``None`` when none does."""
        with self._lock:
            found = self._conn.execute("SELECT MIN(op_seq) FROM spool WHERE replica = ?", (replica,)).fetchone()
        return None if found[0] is None else int(found[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
