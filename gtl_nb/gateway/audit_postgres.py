"""Audit records in PostgreSQL: where replicas keep the audit log they share, one hash chain each.

The records are the file log's (``gateway.audit``: what a record says, sealed the same way: the
SHA-256 of the line's own bytes without its ``"hash"``), but the chain is **per replica run**: each
``PostgresAuditSink`` starts a chain of its own, named by its ``replica`` id (host, pid and a
random part), so replicas never wait for each other to link a record. Each record is one row of
``audit_records`` keyed by ``(replica, seq)``; ``line`` is the exact sealed JSON the hash covers
(the record also names its replica, so a row moved to another chain no longer verifies). The head
of each chain — the last ``seq`` and its hash, what the file log's checkpoint holds — is the chain's
row in ``audit_chains``, updated in the same transaction as the records it counts.

**Writing.** ``AuditLog``'s writer thread calls ``append(records)`` with each batch (the same
interface as the file log's writer, ``_ChainFiles``): the records are sealed here, in order, and
written in one transaction. Every wait on the database is bounded: a batch (getting a connection,
the statements, the commit) gets ``write_timeout`` seconds (``WRITE_TIMEOUT``), the connections carry
a ``statement_timeout`` of as much and TCP keepalives, so a server that stopped answering (frozen,
a dead host) is treated as an unreachable one. When PostgreSQL cannot be used the sealed lines go to
a local spool file (JSON lines, the file log's format, fsynced) and are written, oldest first and
exactly once (the primary key makes a replay change nothing; a head only moves forward), before the
next batch once it answers — or, with no traffic, at the writer's next ``retry`` — and a spool left
by a stopped process is drained when the next sink on that file opens. With no traffic the idle
writer also asks the database every ``probe_every`` seconds (``PROBE_EVERY``, an empty transaction)
whether it still answers, so an outage shows in ``degraded_reason`` (``/readyz``) without waiting for
the next record. A pooled connection the server closed meanwhile (a restart, ``pg_terminate_backend``,
a proxy's idle kill) is no outage: the batch is written again on a new connection
(``postgres_pool.PooledConnections``), which the keys above make safe.

A record is part of the chain once it is in the database or in the spool: a spool write that fails
(a full disk) is cut back to where it was and its records are reported lost, and the next record
takes their place in the chain — ``AuditLog`` then writes a ``dropped`` record counting them, as for
the file log. (Only when the failed write to PostgreSQL may have committed — the server stopped
answering mid-batch — are their numbers kept: ``verify`` then shows them missing, after which the
``dropped`` record says why.)

**The shared spool.** The processes of one host may share a spool file (the default one is per
database). Appending holds an exclusive ``flock`` on it for the write only. A drain holds it only to
*take* the spool's lines: it renames the file to ``<spool>.<time>.<random>.draining`` (the next
append starts a new spool), keeps that file locked while it writes the lines to PostgreSQL — with no
lock on the spool itself, so other processes append meanwhile — and removes it once they are
written. When the write fails the file stays where it is, unlocked, and the next drain (of any
process) writes it first: files are taken oldest first, and a ``.draining`` file whose process died
(its lock is gone) is adopted by the next drain or the next sink that opens. While PostgreSQL is
away a drain first probes it and takes nothing until it answers. ``close`` tries the database once
more: a server that does not answer holds it ``write_timeout`` (twice if it stops answering in the
middle of the drain) plus a few seconds to close the pool. Nothing written to the spool is lost.

**Verifying.** ``verify_postgres(url)`` is ``gtl audit verify`` for the database: every chain is
walked in ``seq`` order, and an edited record (its hash no longer matches), a deleted one (a gap, or
a record that does not link to the one before), a record in the wrong chain, records removed from
the end (fewer than the head counts) and a head that does not match its last record are reported,
each with its chain and ``seq``; ``PostgresAuditReport.per_chain`` says how each chain fared.
``last_records`` is ``gtl audit tail --url``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import os
import platform
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtl_nb.engine.ledger import default_ledger_path
from gtl_nb.engine.sqlite_files import create_private_file
from gtl_nb.engine.stores.postgres_pool import (
    CONNECT_TIMEOUT,
    INSUFFICIENT_PRIVILEGE,
    ConnectErrors,
    PooledConnections,
    PostgresLoop,
    PostgresUnavailableError,
    PostgresURL,
    application_name_option,
    describe,
    is_unreachable,
    parse_postgres_url,
    require_psycopg,
)
from gtl_nb.engine.stores.postgres_schema import AUDIT_MIGRATIONS, migrate
from gtl_nb.gateway.audit import FORMAT_VERSION, GENESIS, Problem, _seal, _unseal
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError

try:
    import fcntl
except ImportError:  # Windows: one gateway per spool file is the operator's to ensure
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PROBE_EVERY",
    "WRITE_TIMEOUT",
    "ChainReport",
    "PostgresAuditReport",
    "PostgresAuditSink",
    "last_records",
    "records_of",
    "verify_postgres",
]

log = get_logger("gateway.audit")

PROBE_EVERY = 5.0
"""Seconds without a record after which the idle writer asks PostgreSQL whether it still answers (one
empty transaction): an outage with no traffic shows in ``/readyz`` as the ledger's does."""
WRITE_TIMEOUT = 5.0
"""Seconds one batch (or one chunk of the spool) may take in PostgreSQL — a connection, the statements,
the commit — before the server counts as unreachable and the records go to the spool."""

_INSERT = (
    "INSERT INTO audit_records (replica, seq, time, kind, session_id, trace_id, principal, line) "
    "VALUES (%(replica)s, %(seq)s, %(time)s, %(kind)s, %(session_id)s, %(trace_id)s, %(principal)s, %(line)s) "
    "ON CONFLICT (replica, seq) DO NOTHING"
)
# The head moves forward only: a replayed spool never takes it back.
_HEAD = (
    "INSERT INTO audit_chains (replica, hostname, pid, count, head) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (replica) DO UPDATE SET count = EXCLUDED.count, head = EXCLUDED.head "
    "WHERE audit_chains.count < EXCLUDED.count"
)
_FIRST_RETRY = 0.5  # seconds before the first new attempt at an unreachable database, doubling up to
_LAST_RETRY = 30.0  # this: a batch never waits for a connection timeout while the database is known to be away
_TEXT_LIMIT = 256  # the indexed columns are copies of the record's own (cut as the file log cuts them)
_DRAIN_CHUNK = 1000  # spooled records per transaction: a long outage's spool is not one huge write
_POOL_CLOSE = 2.0  # seconds closing the pool may take (its workers may wait on a server that does not answer)
_DRAINING = ".draining"  # the suffix of a spool taken by a drain
# libpq's keepalives (unless the URL sets them): a vanished host is noticed by the socket too
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


@dataclass(frozen=True)
class _Line:
    """A sealed record on its way to the database: its chain, number, hash and exact text."""

    replica: str
    seq: int
    digest: str
    text: str
    record: dict[str, Any]

    def params(self) -> dict[str, Any]:
        return {"replica": self.replica, "seq": self.seq, **_copies(self.record), "line": self.text}


_COPIED = ("time", "kind", "session_id", "trace_id", "principal")
"""The record's fields the table keeps a copy of, in columns of the same names, for searches and indexes."""


def _copies(record: dict[str, Any]) -> dict[str, str | None]:
    """The columns ``_COPIED`` of ``record``: each field as text, cut as the file log cuts them, a NUL
    written U+FFFD (PostgreSQL's text takes none: a record holding one was refused on every retry, and the
    records behind it waited in the spool for good). The sealed line keeps the value as it was."""
    copies: dict[str, str | None] = {}
    for name in _COPIED:
        value = record.get(name)
        text = None if value is None else str(value)[:_TEXT_LIMIT]
        copies[name] = text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text
    return copies


class PostgresAuditSink:
    """The audit records of one gateway replica in PostgreSQL (see the module docstring).

    ``AuditLog`` plugs it in beside (or instead of) the file log: it is an ``audit.AuditSink``
    (``recovered``, ``append``, ``retry``, ``close``, ``degraded_reason``, ``probe_every``).
    ``replica`` prefixes the chain's id (the host name by default). ``spool_path`` is the local file
    for records written while the database is away (default: ``audit-spool-<digest>.jsonl`` beside
    the default ledger). ``write_timeout`` bounds each batch's time in the database (a server that
    takes longer counts as unreachable). ``probe_every``: seconds without a write after which the
    idle writer's ``retry`` sees whether the database still answers (``PROBE_EVERY``). Opening
    migrates the tables; an unreachable database is not an error (the records wait in the spool), a
    database that refuses the migration is.
    """

    recovered: dict[str, Any] | None = None  # what AuditLog writes first after a repair: nothing to repair

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        fsync: bool = True,
        probe_every: float | None = None,
    ) -> None:
        self._url = parse_postgres_url(url, where="[gateway.audit] url")
        self._psycopg, self._psycopg_pool = require_psycopg()
        self.hostname = platform.node() or "localhost"
        name = replica or self._url.options["replica"] or self.hostname
        #: This run's chain: its id in ``audit_chains`` and in its records.
        self.replica = f"{name}:{os.getpid()}:{secrets.token_hex(4)}"
        chosen = spool_path or self._url.options["spool_path"]
        self.spool_path = (
            Path(chosen).expanduser()
            if chosen
            else default_ledger_path().parent / f"audit-spool-{self._url.digest}.jsonl"
        )
        create_private_file(self.spool_path, what="audit spool", error=ConfigurationError)
        self._fsync = fsync
        self._timeout = connect_timeout
        self._write_timeout = write_timeout
        #: Seconds without a record before ``retry`` sees whether PostgreSQL still answers (``AuditLog``
        #: calls ``retry`` at least this often while no record arrives).
        self.probe_every = PROBE_EVERY if probe_every is None else probe_every
        self._answered_at = time.monotonic()  # when PostgreSQL last took a write or a probe
        self._count = 0  # the chain so far: records kept (in the database or the spool) and the last hash
        self._head = GENESIS
        self._lock = threading.Lock()  # append and close may come from different threads
        self._problem: str | None = None
        self._migrated = False  # whether the tables are known to exist (else the next write creates them)
        self._retry_at = 0.0  # monotonic: while PostgreSQL is away, when to try it again
        self._retry_delay = _FIRST_RETRY
        self._loop = PostgresLoop(name=f"gtl_nb postgres audit {self.replica}")
        self._pool: Any = None
        self._connections: Any = None  # the pool's connections, a stale one retried (PooledConnections)
        self._connect_errors = ConnectErrors()  # why the pool's last connection attempt failed
        try:
            self._run(self._open(), connect_timeout + write_timeout)
        except _NoAnswer as exc:  # a server that hangs is one that is away
            self._failed(exc)
        except BaseException:
            self._loop.stop()
            raise
        self._drain(everything=True)  # what a stopped process left, too

    @property
    def degraded_cause(self) -> str | None:
        """Why PostgreSQL cannot be used, alone (for the gateway's ``ready`` line), or ``None``."""
        return self._problem

    @property
    def degraded_reason(self) -> str | None:
        """Why records wait in the spool now, or ``None`` (for ``/readyz``)."""
        if self._problem is None:
            return None
        return f"audit records wait in {self.spool_path}: PostgreSQL {self._url.shown} cannot be used ({self._problem})"

    # -- AuditLog's writer interface

    def append(self, records: list[dict[str, Any]]) -> int:
        """Seal ``records`` into this replica's chain and write them (to the spool when PostgreSQL is
        away); returns how many were lost — 0 unless even the local disk refused them. Lost records
        are not part of the chain (the next record takes their place), unless they may have reached
        the database (see the module docstring). Takes ``write_timeout`` at most (plus a drain of
        the spool, a chunk of the same bound at a time)."""
        with self._lock:
            lines = self._sealed(records)
            if not lines:
                return 0
            self._drain()
            maybe_sent = False
            if self._problem is None and self._spool_empty():
                try:
                    self._run(self._write(lines))
                except Exception as exc:
                    self._failed(exc)
                    # without a connection nothing was sent; otherwise the COMMIT may have been
                    maybe_sent = not isinstance(exc, self._psycopg_pool.PoolTimeout)
                else:
                    self._keep(lines)
                    return 0
            lost = self._spool(lines)
            if not lost or maybe_sent:
                self._keep(lines)
            return lost

    def sync(self) -> None:
        """Nothing to do: each batch is committed with its chain's head."""

    def retry(self) -> None:
        """What the writer thread calls when no record arrives: while PostgreSQL is away, try it again
        (when the back-off allows) and write the spool if it answers; while it is not, and nothing was
        written for ``probe_every`` seconds, see whether it still answers (a failure is an outage,
        said and shown in ``degraded_reason`` as a failed write's)."""
        with self._lock:
            if self._pool is None:
                return
            if self._problem is None and time.monotonic() - self._answered_at >= self.probe_every:
                self._probe()
            self._drain()

    def _probe(self) -> None:
        """One empty transaction (on a new connection if the pooled one was closed: not an outage)."""
        try:
            self._run(self._write([]))
        except Exception as exc:
            self._failed(exc)

    def close(self) -> None:
        """Write what the spool holds if the database answers (one more try, back-off or not), then
        close (idempotent). A server that does not answer holds it ``write_timeout`` (twice at most)
        plus a few seconds."""
        with self._lock:
            if self._pool is None:
                return
            if self._spooled():
                self._drain(now=True, everything=True)
            with contextlib.suppress(Exception):
                self._loop.run(self._pool.close(timeout=_POOL_CLOSE), timeout=_POOL_CLOSE + 1)
            self._pool = None
            self._loop.stop()

    # -- sealing and writing

    def _sealed(self, records: list[dict[str, Any]]) -> list[_Line]:
        """``records`` sealed after the chain's head (which moves only once they are kept: ``_keep``)."""
        count, head, lines = self._count, self._head, []
        for record in records:
            count += 1
            raw, head = _seal({"v": FORMAT_VERSION, "replica": self.replica, "seq": count, **record}, head)
            lines.append(_Line(self.replica, count, head, raw.decode("ascii").rstrip("\n"), record))
        return lines

    def _keep(self, lines: list[_Line]) -> None:
        self._count, self._head = lines[-1].seq, lines[-1].digest

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the pool's loop for ``timeout`` seconds at most (``write_timeout``); a server
        that does not answer by then is ``_NoAnswer`` (the work is cancelled on the loop)."""
        timeout = self._write_timeout if timeout is None else timeout
        try:
            return self._loop.run(coro, timeout=timeout)
        except concurrent.futures.TimeoutError:  # TimeoutError itself from 3.11
            raise _NoAnswer(f"no answer within {timeout:g} s") from None

    def _connection_options(self) -> dict[str, Any]:
        """What every connection of the pool gets besides the URL's own: TCP keepalives and a bound on
        unacknowledged data (unless the URL sets them)."""
        given = self._psycopg.conninfo.conninfo_to_dict(self._url.conninfo)
        options: dict[str, Any] = dict(_KEEPALIVES)
        if self._psycopg.pq.version() >= 120000:  # libpq 12 knows tcp_user_timeout
            options["tcp_user_timeout"] = max(1000, int(self._write_timeout * 1000))
        return {name: value for name, value in options.items() if name not in given}

    async def _configure(self, conn: Any) -> None:
        """A new connection: statements end after ``write_timeout`` on the server's side too."""
        timeout = f"{max(1, int(self._write_timeout * 1000))}ms"
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))

    async def _open(self) -> None:
        self._pool = self._psycopg_pool.AsyncConnectionPool(
            self._url.conninfo,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={
                "autocommit": True,
                **application_name_option(self._url.conninfo, f"gtl_nb audit {self.replica}"),
                **self._connection_options(),
            },
            configure=self._configure,
            timeout=self._timeout,
            reconnect_timeout=max(2 * self._timeout, 10.0),
            name=f"gtl_nb-audit-{self.replica}",
            connection_class=self._connect_errors.connection_class(),
        )
        self._connections = PooledConnections(
            self._pool,
            timeout=self._timeout,
            where=f"audit {self._url.shown}",
            configure=self._configure,
            errors=self._connect_errors,
        )
        await self._pool.open(wait=False)
        try:
            await self._connections.run(lambda conn: migrate(conn, "audit", AUDIT_MIGRATIONS))
            self._migrated = True
        except Exception as exc:
            # a role without the privileges degrades the start as the ledger does (docs/deploy.md,
            # "Database role"): a GRANT on the server mends it, and the records wait in the spool
            if not is_unreachable(exc) and getattr(exc, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                await self._pool.close(timeout=_POOL_CLOSE)
                raise ConfigurationError(
                    f"[gateway.audit] cannot set up the audit tables in PostgreSQL {self._url.shown}: {describe(exc)}"
                ) from None
            self._failed(exc)

    async def _write(self, lines: list[_Line]) -> None:
        """Insert ``lines`` and move each chain's head, in one transaction."""
        heads: dict[str, _Line] = {}
        for line in lines:
            if line.replica not in heads or heads[line.replica].seq < line.seq:
                heads[line.replica] = line

        async def transaction(conn: Any) -> None:
            async with conn.transaction():
                if not self._migrated:  # the server was away at opening
                    await migrate(conn, "audit", AUDIT_MIGRATIONS)
                cursor = conn.cursor()
                if lines:  # none: a probe of a server that was away
                    await cursor.executemany(_INSERT, [line.params() for line in lines])
                for replica, last in heads.items():
                    pid = os.getpid() if replica == self.replica else None
                    await cursor.execute(_HEAD, (replica, self.hostname, pid, last.seq, last.digest))

        # run again on a new connection when the pooled one was closed by the server: the same sealed
        # lines, keyed by (replica, seq) and inserted only where missing, and a head that only moves
        # forward — a transaction that did commit the first time changes nothing the second
        await self._connections.run(transaction)
        self._migrated = True
        self._answered_at = time.monotonic()

    def _failed(self, exc: BaseException) -> None:
        reason = self._connect_errors.describe(exc)  # a pool timeout's real cause, not "couldn't get a connection"
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(2 * self._retry_delay, _LAST_RETRY)
        if self._problem is None:
            log.warning(
                "audit: PostgreSQL %s cannot be used (%s); records wait in %s", self._url.shown, reason, self.spool_path
            )
        self._problem = reason

    # -- the spool

    def _spool_empty(self) -> bool:
        try:
            return self.spool_path.stat().st_size == 0
        except FileNotFoundError:
            return True

    def _taken_files(self) -> list[Path]:
        """The spools drains took (in flight, or left to write again), oldest first."""
        pattern = f"{glob.escape(self.spool_path.name)}.*{_DRAINING}"
        return sorted(self.spool_path.parent.glob(pattern))

    def _spooled(self) -> bool:
        """Whether records wait anywhere: in the spool, or in a file a drain took."""
        return not self._spool_empty() or bool(self._taken_files())

    def _spool(self, lines: list[_Line]) -> int:
        """Append ``lines`` to the spool (fsynced); on failure cut it back to where it was and return
        how many were lost."""
        data = "".join(line.text + "\n" for line in lines).encode("ascii")
        try:
            with _locked(self.spool_path) as fd:
                size = os.fstat(fd).st_size
                if size and _last_byte(fd, size) != b"\n":  # a line a crash cut short: it must not swallow ours
                    data = b"\n" + data
                try:
                    _write_all(fd, data)
                    if self._fsync:
                        os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # no partial line left to glue the next record onto
                    raise
        except OSError as exc:
            log.error("audit: cannot spool %d record(s) in %s (%s)", len(lines), self.spool_path, exc.strerror or exc)
            return len(lines)
        return 0

    def _take(self) -> list[_Taken]:
        """The spooled lines to write, oldest first, each file locked by this drain: the files earlier
        drains left (their process stopped, or their write failed), then the spool itself, renamed
        away under its lock (held only for the rename)."""
        taken: list[_Taken] = []
        try:
            for path in self._taken_files():
                adopted = _Taken.adopt(path)
                if adopted is not None:
                    taken.append(adopted)
            mine = self.spool_path.with_name(
                f"{self.spool_path.name}.{time.time_ns():020d}.{secrets.token_hex(4)}{_DRAINING}"
            )
            if fcntl is None:  # Windows renames no open file (and there is no lock to keep)
                if not self._spool_empty():
                    os.replace(self.spool_path, mine)
                    _new_spool(self.spool_path)
                    taken.append(_Taken(mine, os.open(mine, os.O_RDWR | _BINARY)))
            else:
                fd = _lock_spool(self.spool_path)
                try:
                    if os.fstat(fd).st_size:
                        os.replace(self.spool_path, mine)
                        _new_spool(self.spool_path)  # the next append writes there
                        taken.append(_Taken(mine, fd))  # still locked: no other drain adopts it meanwhile
                        fd = -1
                finally:
                    if fd >= 0:
                        os.close(fd)
        except BaseException:
            for held in taken:
                held.release(written=False)
            raise
        return taken

    def _drain(self, *, now: bool = False, everything: bool = False) -> None:
        """Write the spooled lines (this run's, another process's, a stopped one's) oldest first and
        empty the spool; while PostgreSQL is away, first see whether it answers again (nothing is taken
        from the spool until it does). Waits for the back-off unless ``now``; looks for the files
        other drains left only when the spool holds something, PostgreSQL is away or ``everything``.
        No lock on the spool is held while PostgreSQL is written (see the module docstring)."""
        waiting = self._spooled() if everything else not self._spool_empty()
        if self._problem is None and not waiting:
            return
        if not now and time.monotonic() < self._retry_at:
            return
        if self._problem is not None:
            try:
                self._run(self._write([]))  # a probe (and the tables, when it was away at opening)
            except Exception as exc:
                self._failed(exc)
                return
        try:
            taken = self._take()
            lines = [line for held in taken for line in held.lines()]
        except OSError as exc:
            log.error("audit: cannot read the spool %s (%s)", self.spool_path, exc.strerror or exc)
            return
        try:
            for start in range(0, len(lines), _DRAIN_CHUNK):
                self._run(self._write(lines[start : start + _DRAIN_CHUNK]))
        except Exception as exc:
            self._failed(exc)
            for held in taken:  # left for the next drain, which writes them first (a replay changes nothing)
                held.release(written=False)
            return
        for held in taken:
            held.release(written=True)
        if self._problem is not None:
            log.warning("audit: PostgreSQL %s answers again; %d spooled record(s) written", self._url.shown, len(lines))
        self._problem = None
        self._retry_delay = _FIRST_RETRY


_BINARY = getattr(os, "O_BINARY", 0)


class _NoAnswer(TimeoutError):
    """PostgreSQL did not finish within ``write_timeout``: it counts as unreachable."""


@dataclass
class _Taken:
    """A spool file a drain took: its path and an open descriptor (holding its lock where ``flock`` exists)."""

    path: Path
    fd: int

    @classmethod
    def adopt(cls, path: Path) -> _Taken | None:
        """``path``, locked, unless a live drain holds it (or it is gone)."""
        try:
            fd = os.open(path, os.O_RDWR | _BINARY)
        except FileNotFoundError:
            return None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)  # a drain of a live process is writing it
                    return None
                if not _names(path, fd):  # written and removed while we were opening it
                    os.close(fd)
                    return None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def lines(self) -> list[_Line]:
        return [line for line in (_spooled(text) for text in _read_all(self.fd).split(b"\n")) if line is not None]

    def release(self, *, written: bool) -> None:
        """Remove the file once its lines are in the database; else leave it (unlocked) for the next drain."""
        if self.fd < 0:
            return
        if written and fcntl is None:
            os.close(self.fd)  # Windows removes no open file
            self.fd = -1
        if written:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # written again by the next drain: a replay changes nothing
                log.error("audit: cannot remove the written spool %s (%s)", self.path, exc.strerror or exc)
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The spool at ``path`` (created if missing), open for appending and reading and, where ``fcntl``
    exists, locked against the other processes of this host that share it (closing releases the lock)."""
    fd = _lock_spool(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _lock_spool(path: Path) -> int:
    """A descriptor of the spool ``path`` names now, with its lock held. A drain renames the spool under
    this lock: the file a waiting process opened may be gone from ``path`` by the time it is free, and
    waiting for it would mean waiting for that drain's writes to PostgreSQL — so the lock is polled, and
    ``path`` opened again whenever it no longer names the file held open."""
    delay = 0.001
    for reopened in range(1000):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _BINARY, 0o600)
        if fcntl is None:
            return fd
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    locked = False
                if reopened == 999:  # a file system whose inode numbers cannot be compared: wait for it
                    if not locked:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    return fd
                if not _names(path, fd):
                    break  # renamed away by a drain: open the new spool
                if locked:
                    return fd
                time.sleep(delay)
                delay = min(2 * delay, 0.02)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise AssertionError("unreachable")  # the last round returns


def _new_spool(path: Path) -> None:
    """An empty spool where a drain took the last one (an append creates it anyway: this one is for
    whoever looks at the folder)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o600))


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _last_byte(fd: int, size: int) -> bytes:
    os.lseek(fd, size - 1, os.SEEK_SET)
    return os.read(fd, 1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _spooled(text: bytes) -> _Line | None:
    """A spooled line read back (``None`` for a blank or cut-short one: the crash it shows is logged)."""
    if not text.strip():
        return None
    sealed = _unseal(text)
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if sealed is None or not isinstance(record, dict) or not isinstance(record.get("replica"), str):
        log.warning("audit: a spooled record is unreadable (cut short by a crash?) and is skipped")
        return None
    return _Line(record["replica"], sealed.seq, sealed.stored, text.decode("ascii"), record)


# ----------------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class ChainReport:
    """How one replica's chain fared in ``verify_postgres``."""

    replica: str
    """The chain's id: the replica's name, the process id and a random part."""
    hostname: str | None
    records: int
    last_seq: int
    head: str | None
    """The hash in ``audit_chains`` (``None`` when that row is missing)."""
    problems: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: the chain, where it was written, how many records, and the verdict."""
        host = f" (host {self.hostname})" if self.hostname else ""
        size = f"{self.records} record{'s' if self.records != 1 else ''}"
        if self.ok:
            tip = f", head {self.head[:16]}… at record {self.last_seq}" if self.head and self.last_seq else ""
            return f"chain {self.replica}{host}: {size}{tip}: intact"
        return f"chain {self.replica}{host}: {size}: {self.problems} problem{'s' if self.problems != 1 else ''}"


@dataclass(frozen=True)
class PostgresAuditReport:
    """What ``verify_postgres`` found: ``ok`` when every chain is intact and matches its head."""

    url: str
    chains: int
    records: int
    problems: tuple[Problem, ...]
    per_chain: tuple[ChainReport, ...] = ()
    """Each replica's chain, by id."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """A few lines for a person: the verdict, a line per chain, then each problem and where it is."""
        head = f"audit records in {self.url}: {self.records} in {self.chains} chain{'s' if self.chains != 1 else ''}"
        chains = [f"  {chain.describe()}" for chain in self.per_chain]
        if self.ok:
            return "\n".join([f"{head}; every chain is intact and matches its head", *chains])
        lines = [f"{head}; {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:"]
        lines.extend(f"  - {problem.message}" for problem in self.problems)
        lines.extend(chains)
        return "\n".join(lines)


def verify_postgres(url: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> PostgresAuditReport:
    """Check every replica's chain in the database at ``url`` (what ``gtl audit verify`` does for a file).
    An unreachable server raises ``PostgresUnavailableError`` naming it (never its password)."""
    parsed = parse_postgres_url(url, where="audit verify")
    psycopg, _ = require_psycopg()
    with _connect(parsed, connect_timeout) as conn:
        # one snapshot for heads and records: replicas writing meanwhile cannot make them disagree
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        if not conn.execute("SELECT to_regclass('audit_records') IS NOT NULL").fetchone()[0]:
            return PostgresAuditReport(parsed.shown, 0, 0, ())
        chains = conn.execute("SELECT replica, count, head, hostname FROM audit_chains")
        heads = {replica: (int(count), head, hostname) for replica, count, head, hostname in chains}
        problems: list[Problem] = []
        records = 0
        walks: dict[str, _ChainWalk] = {}
        with conn.cursor(name="audit_walk") as cursor:  # server-side: a large table is streamed, not loaded
            cursor.itersize = 2000
            columns = ", ".join(_COPIED)
            cursor.execute(f"SELECT replica, seq, line, {columns} FROM audit_records ORDER BY replica, seq")
            for replica, seq, line, *copied in cursor:
                walk = walks.get(replica)
                if walk is None:
                    walk = walks[replica] = _ChainWalk(replica, problems.append)
                walk.line(int(seq), line, dict(zip(_COPIED, copied, strict=True)))
                records += 1
        conn.rollback()
    per_chain = []
    for replica in sorted(set(heads) | set(walks)):
        walk = walks.get(replica) or _ChainWalk(replica, problems.append)
        found = heads.get(replica)
        walk.finish(found[:2] if found is not None else None)
        per_chain.append(
            ChainReport(
                replica=replica,
                hostname=found[2] if found is not None else None,
                records=walk.records,
                last_seq=walk.last_seq,
                head=found[1] if found is not None else None,
                problems=walk.problems,
            )
        )
    return PostgresAuditReport(parsed.shown, len(per_chain), records, tuple(problems), tuple(per_chain))


def _differing_copies(text: str, copied: dict[str, Any]) -> list[str]:
    """The columns of ``copied`` that are not what the sealed line ``text`` holds (``_copies``)."""
    try:
        record = json.loads(text)
    except ValueError:
        return []
    expected = _copies(record) if isinstance(record, dict) else {}
    return [name for name in _COPIED if copied.get(name) != expected.get(name)]


class _ChainWalk:
    """One pass over one replica's chain, in ``seq`` order."""

    def __init__(self, replica: str, report: Callable[[Problem], None]) -> None:
        self.replica = replica
        self.report = report
        self.expect_seq = 1
        self.expect_prev = GENESIS
        self.last_seq = 0
        self.last_hash = GENESIS
        self.records = 0
        self.problems = 0

    def problem(self, kind: str, message: str, seq: int | None = None) -> None:
        self.problems += 1
        self.report(Problem(kind, f"chain {self.replica}: {message}", file=self.replica, seq=seq))

    def line(self, seq: int, text: str, copied: dict[str, Any] | None = None) -> None:
        """The record ``seq``: its sealed ``text`` and (``copied``) the table's copies of its fields,
        which searches and the indexes read, so they must say what the sealed line says."""
        self.records += 1
        sealed = _unseal(text.encode("utf-8", "backslashreplace"))
        where = f"record {seq}"
        if sealed is None:
            self.problem("unreadable", f"{where} is not an audit record", seq)
        elif sealed.computed != sealed.stored:
            self.problem("edited", f"{where} was changed: its hash does not match its content", seq)
        elif copied is not None and (differ := _differing_copies(text, copied)):
            self.problem(
                "edited",
                f"{where}'s {', '.join(differ)} {'columns' if len(differ) > 1 else 'column'} of the table "
                f"{'differ' if len(differ) > 1 else 'differs'} from its sealed line: the copies searches read "
                "were changed (the line is the evidence)",
                seq,
            )
        elif sealed.seq != seq or _replica_of(text) != self.replica:
            self.problem("edited", f"{where} says it is record {sealed.seq} of another place: it was moved", seq)
        elif seq > self.expect_seq:
            missing = (
                f"record {self.expect_seq}" if seq - self.expect_seq == 1 else f"records {self.expect_seq}-{seq - 1}"
            )
            self.problem("deleted", f"{missing} missing before {where}", seq)
        elif sealed.prev != self.expect_prev:
            self.problem("edited", f"{where} does not chain to the record before it: that one was changed", seq)
        self.expect_seq = seq + 1
        self.expect_prev = sealed.stored if sealed is not None else ""
        self.last_seq, self.last_hash = seq, self.expect_prev

    def finish(self, head: tuple[int, str] | None) -> None:
        if head is None:
            self.problem("checkpoint", "its head is missing from audit_chains (removed?)")
            return
        count, digest = head
        if self.last_seq < count:
            self.problem(
                "truncated",
                f"the chain ends at record {self.last_seq} but its head counts {count}: "
                f"the last {count - self.last_seq} record(s) were removed",
            )
        elif self.last_seq > count:
            self.problem("checkpoint", f"{self.last_seq - count} record(s) follow its head (the head was set back)")
        elif self.last_hash != digest:
            self.problem("checkpoint", "its last record does not match its head (one of them was rewritten)")


def _replica_of(text: str) -> Any:
    try:
        return json.loads(text).get("replica")
    except (ValueError, AttributeError):
        return None


def _connect(parsed: PostgresURL, connect_timeout: float, *, autocommit: bool = False) -> Any:
    """A psycopg connection to ``parsed``; ``PostgresUnavailableError`` (never quoting the password) when
    the server cannot be reached or refuses us."""
    psycopg, _ = require_psycopg()
    try:
        return psycopg.connect(parsed.conninfo, connect_timeout=max(1, int(connect_timeout)), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise PostgresUnavailableError(f"PostgreSQL {parsed.shown} cannot be used: {describe(exc)}") from None


def last_records(
    url: str, count: int, *, replica: str | None = None, connect_timeout: float = CONNECT_TIMEOUT
) -> list[str]:
    """The exact lines of the last ``count`` records, oldest first, ordered by time (then chain and
    ``seq``); only the chains of ``replica`` (a chain's id, or the name it starts with) when given."""
    parsed = parse_postgres_url(url, where="audit tail")
    if count <= 0:
        return []
    with _connect(parsed, connect_timeout, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('audit_records') IS NOT NULL").fetchone()[0]:
            return []
        where, params = "", []
        if replica:  # the chain's id, or every chain of the replica of that name (id = name:pid:random)
            where, params = "WHERE replica = %s OR starts_with(replica, %s)", [replica, f"{replica}:"]
        found = conn.execute(
            f"SELECT line FROM audit_records {where} ORDER BY time DESC NULLS LAST, replica DESC, seq DESC LIMIT %s",
            [*params, count],
        ).fetchall()
    return [line for (line,) in reversed(found)]


def replica_names(url: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """The names of the replicas with records in the database (a chain's id is ``name:pid:random``)."""
    parsed = parse_postgres_url(url, where="audit tail")
    with _connect(parsed, connect_timeout, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('audit_records') IS NOT NULL").fetchone()[0]:
            return []
        chains = conn.execute("SELECT DISTINCT replica FROM audit_records").fetchall()
    return sorted({chain.split(":", 1)[0] for (chain,) in chains})


def records_of(url: str, replica: str | None = None) -> Iterable[dict[str, Any]]:
    """The records (as dicts) in the database, chain by chain in ``seq`` order; one chain with ``replica``."""
    parsed = parse_postgres_url(url, where="audit")
    with _connect(parsed, CONNECT_TIMEOUT, autocommit=True) as conn:
        sql = "SELECT line FROM audit_records"
        found = conn.execute(
            f"{sql} WHERE replica = %s ORDER BY seq" if replica else f"{sql} ORDER BY replica, seq",
            (replica,) if replica else None,
        ).fetchall()
    return [json.loads(line) for (line,) in found]
