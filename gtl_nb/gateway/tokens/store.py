"""Revocation and the registry of minted tokens: the ``RevocationList`` and ``TokenRegistry``
protocols, a deny-list in memory, and ``SqliteTokenStore``, which keeps both in one owner-only SQLite
file and answers ``is_revoked`` from memory, looking at the file at most every ``refresh`` seconds."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gtl_nb.engine.ledger import default_ledger_path
from gtl_nb.engine.sqlite_files import create_private_file
from gtl_nb.protocol.errors import ConfigurationError, InternalError

DEFAULT_REFRESH = 5.0
MINTED_KEPT_AFTER_EXPIRY = 7 * 24 * 3600.0
"""Seconds a minted token's record outlives its expiry, so ``gtl token list`` shows it ``expired`` —
what an operator looks for when a client's token stops working. Revocations are forgotten at expiry:
an expired token is refused anyway."""


def default_token_store_path() -> Path:
    """``tokens.sqlite3`` in the ledger's folder (``<user data dir>/gtl_nb/``)."""
    return default_ledger_path().with_name("tokens.sqlite3")


@runtime_checkable
class RevocationList(Protocol):
    """A deny-list of token ids. ``expires_at`` (Unix seconds) is when an entry may be forgotten: the
    token's ``exp`` plus the policy's leeway, after which the token is refused as expired anyway.
    ``is_revoked`` is called for every connection, so it must be cheap (memory, not I/O)."""

    def revoke(self, jti: str, expires_at: float) -> None: ...

    def is_revoked(self, jti: str) -> bool: ...

    def prune(self, now: float) -> int:
        """Forget the entries whose ``expires_at`` has passed; how many were forgotten."""
        ...


@dataclass(frozen=True)
class MintedToken:
    """What the registry keeps of a minted token: never the token itself."""

    jti: str
    subject: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    tenant: str | None = None


@runtime_checkable
class TokenRegistry(Protocol):
    """Where ``mint_token`` records what it minted (``gtl token list`` reads it)."""

    def record(self, token: MintedToken) -> None: ...

    def minted(self) -> list[MintedToken]: ...


class MemoryRevocationList:
    """A ``RevocationList`` in memory: for tests and single-process gateways without a file."""

    def __init__(self) -> None:
        self._entries: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, jti: str, expires_at: float) -> None:
        with self._lock:
            self._entries[jti] = max(expires_at, self._entries.get(jti, expires_at))

    def is_revoked(self, jti: str) -> bool:
        return jti in self._entries

    def prune(self, now: float) -> int:
        with self._lock:
            gone = [jti for jti, until in self._entries.items() if until <= now]
            for jti in gone:
                del self._entries[jti]
        return len(gone)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL, revoked_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS minted (jti TEXT PRIMARY KEY, subject TEXT NOT NULL, scopes TEXT NOT NULL, "
    "tenant TEXT, issued_at REAL NOT NULL, expires_at REAL NOT NULL)",
)


class SqliteTokenStore:
    """The revocation list and the registry of minted tokens in one SQLite file, readable by its owner only.

    ``is_revoked`` answers from a set in memory. At most every ``refresh`` seconds (by ``clock``) it asks
    SQLite's ``PRAGMA data_version`` whether another connection — ``gtl token revoke`` in another
    process — committed since, and re-reads the deny-list only then; a revocation made through this
    object is in the set at once. So a revocation reaches a running gateway within ``refresh`` seconds,
    and a connection costs a set look-up. Entries are forgotten by ``prune`` (``revoke`` and ``record``
    prune too), never on the authentication path, which only reads.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time, refresh: float = DEFAULT_REFRESH
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        create_private_file(self.path, what="token store", advice="set [gateway.jwt] revocations to another file")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"the token store {self.path} cannot be used ({exc})") from None
        self._revoked: frozenset[str] = frozenset()
        self._version: int | None = None
        self._checked: float | None = None

    def __repr__(self) -> str:
        return f"SqliteTokenStore({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteTokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return work(self._conn)
        except sqlite3.Error as exc:
            raise InternalError(f"the token store {self.path}: {what} failed ({exc})") from None

    # RevocationList

    def revoke(self, jti: str, expires_at: float) -> None:
        """Deny ``jti`` until ``expires_at`` (an earlier revocation's later time is kept)."""
        now = self._clock()
        with self._lock:
            self._run(
                "revoking",
                lambda conn: conn.execute(
                    "INSERT INTO revoked (jti, expires_at, revoked_at) VALUES (?, ?, ?) ON CONFLICT (jti) "
                    "DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                    (jti, float(expires_at), now),
                ),
            )
            self._prune(now)
            self._reload(force=True)

    def is_revoked(self, jti: str) -> bool:
        now = self._clock()
        with self._lock:
            # a clock that went backwards also looks again, rather than trusting the set for that long
            if self._checked is None or now < self._checked or now - self._checked >= self._refresh:
                self._reload(force=False)
                self._checked = now
            return jti in self._revoked

    def prune(self, now: float) -> int:
        with self._lock:
            count = self._prune(now)
            self._reload(force=True)
            return count

    def _prune(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            gone = conn.execute("DELETE FROM revoked WHERE expires_at <= ?", (now,)).rowcount
            forgotten = (now - MINTED_KEPT_AFTER_EXPIRY,)
            return gone + conn.execute("DELETE FROM minted WHERE expires_at <= ?", forgotten).rowcount

        return int(self._run("pruning", work))

    def _reload(self, *, force: bool) -> None:
        version = self._run("reading", lambda conn: conn.execute("PRAGMA data_version").fetchone()[0])
        if force or version != self._version:
            rows = self._run("reading", lambda conn: conn.execute("SELECT jti FROM revoked").fetchall())
            self._revoked = frozenset(row[0] for row in rows)
            self._version = version

    def revoked(self) -> dict[str, float]:
        """Every revoked ``jti`` and when it may be forgotten."""
        with self._lock:
            return dict(
                self._run("reading", lambda conn: conn.execute("SELECT jti, expires_at FROM revoked").fetchall())
            )

    # TokenRegistry

    def record(self, token: MintedToken) -> None:
        now = self._clock()
        with self._lock:
            self._run(
                "recording a minted token",
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO minted (jti, subject, scopes, tenant, issued_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        token.jti,
                        token.subject,
                        json.dumps(list(token.scopes)),
                        token.tenant,
                        token.issued_at,
                        token.expires_at,
                    ),
                ),
            )
            self._prune(now)

    def minted(self) -> list[MintedToken]:
        with self._lock:
            rows = self._run(
                "reading",
                lambda conn: conn.execute(
                    "SELECT jti, subject, scopes, issued_at, expires_at, tenant FROM minted ORDER BY issued_at, jti"
                ).fetchall(),
            )
        return [MintedToken(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5]) for row in rows]

    def expiry_of(self, jti: str) -> float | None:
        """The ``exp`` of a token minted here, ``None`` for one this store never recorded."""
        with self._lock:
            row = self._run(
                "reading", lambda conn: conn.execute("SELECT expires_at FROM minted WHERE jti = ?", (jti,)).fetchone()
            )
        return None if row is None else float(row[0])


def stored_revocations(path: str | os.PathLike[str]) -> dict[str, float]:
    """The revocations of the token store at ``path`` (``jti`` -> when each may be forgotten), read without
    writing to it: opened read-only, its tables neither created nor pruned (``gtl token push-revocations
    --from`` reads an old gateway's store, or a copy of one; SQLite may make its own -wal and -shm files
    beside a store in WAL mode). ``ConfigurationError`` for a file that is missing or is not a token store
    — another SQLite file (a ledger), or no database at all."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"no token store at {path}: no such file")
    not_a_store = f"{path} is not a token store (the SQLite file of gtl token revoke and the gateway)"
    uri = path.resolve().as_uri()
    try:
        try:
            return _read_revocations(f"{uri}?mode=ro", not_a_store)
        except sqlite3.OperationalError as exc:
            # a store in WAL mode in a folder this user cannot write (its -shm cannot be made): with no
            # -wal file beside it every committed row is in the file itself, which nobody is writing then
            if "unable to open" not in str(exc) or Path(f"{path}-wal").exists():
                raise
            return _read_revocations(f"{uri}?mode=ro&immutable=1", not_a_store)
    except sqlite3.OperationalError as exc:
        raise ConfigurationError(
            f"the token store {path} cannot be read ({exc}): if another process holds it, try again; if its "
            "folder is not yours to write, copy the file (and its -wal file) to one that is and name the copy"
        ) from None
    except sqlite3.DatabaseError as exc:  # not a database at all
        raise ConfigurationError(f"{not_a_store}: {exc}") from None


def _read_revocations(uri: str, not_a_store: str) -> dict[str, float]:
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(revoked)")}
        if not {"jti", "expires_at"} <= columns:
            raise ConfigurationError(f"{not_a_store}: it has no table of revocations")
        return {str(jti): float(until) for jti, until in conn.execute("SELECT jti, expires_at FROM revoked")}
    finally:
        conn.close()
