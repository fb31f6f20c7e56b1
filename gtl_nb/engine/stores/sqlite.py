"""The SQLite stores (``sqlite:///path``): state shared by the processes of one machine.

``SqliteUsageLedger`` is the usage ledger (``engine.ledger.Ledger``) behind the async interface,
its writes queued for one writer thread per file (``engine.ledger_writer``).
``SqliteBudgetCounter``, ``SqliteResponseCache`` and ``SqliteBreakerStore`` each keep one table of
their own, in a file of their own or in the ledger's file (budgets do by default, so processes that
share a ledger share budgets). Each of their calls runs in a worker thread; every read-decide-write is one
``BEGIN IMMEDIATE`` transaction (``SqliteDatabase``), which is what makes ``reserve`` exact across
processes and breaker updates atomic.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gtl_nb.engine.breaker import BreakerConfig, CircuitBreaker
from gtl_nb.engine.cache import CachedAnswer
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import (
    FINISH_FIELDS,
    MEMORY,
    Ledger,
    LedgerBusyError,
    LedgerStateError,
    LedgerValueError,
    Totals,
)
from gtl_nb.engine.ledger_interrupted import InterruptedRows
from gtl_nb.engine.ledger_retention import Retention
from gtl_nb.engine.ledger_schema import FINAL_STATUSES
from gtl_nb.engine.ledger_writer import (
    MAX_PENDING,
    LedgerWriter,
    acquire_writer,
    flush_rows_of,
    release_writer,
)
from gtl_nb.engine.ratelimit import (
    DAY,
    UNCOUNTED_ROW_SQL,
    WINDOW,
    Limits,
    Spend,
    horizon,
    refusal,
    usage_report,
    utc_day_start,
)
from gtl_nb.engine.stores.base import Reservation
from gtl_nb.engine.stores.memory import limits_reached
from gtl_nb.engine.stores.shared_breakers import RulesOverState, stored_json
from gtl_nb.engine.stores.sqlite_db import SqliteDatabase
from gtl_nb.log import get_logger

__all__ = ["SqliteBreakerStore", "SqliteBudgetCounter", "SqliteResponseCache", "SqliteUsageLedger"]

if TYPE_CHECKING:
    import pandas

log = get_logger("engine.stores")

T = TypeVar("T")
_PRUNE_EVERY = 256  # writes between two sweeps of rows no reader needs any more


async def _settled(work: asyncio.Future[T]) -> T:
    """Await ``work`` (running in a thread); if the awaiting task is cancelled, let it land first."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})  # a second cancel stops this wait, not the work
        raise


# ----------------------------------------------------------------------------------------------
# the usage ledger


class SqliteUsageLedger:
    """The SQLite ``Ledger`` as a ``UsageLedger``, its writes off the request path.

    ``start`` and ``finish`` queue the row's write for this process's writer thread of the file
    (``engine.ledger_writer``: one per file, group commits) and return without waiting for the disk;
    ``start`` returns a row handle for ``finish``, not the row's id. Reads (``rows``, ``totals``,
    ``to_dataframe``) run in a worker thread and first wait for the writes queued before them.

    ``SqliteUsageLedger(path)`` opens (and at ``aclose`` closes) the ledger file; ``None`` is the
    default file. ``SqliteUsageLedger(ledger)`` wraps a ``Ledger`` its caller keeps and closes
    (``owns=True`` hands it over). ``clock`` stamps rows written without ``now`` and drives
    ``retention`` (``engine.ledger_retention``; ``None``: keep every row). ``max_pending`` bounds the
    queue: beyond it a ``start`` waits for room, up to the ledger's ``retry_for``, then raises
    ``LedgerBusyError``. ``group_commit``: the seconds a busy writer gathers rows into one commit
    (``None``: the file's writer keeps its own, ``GROUP_COMMIT`` for a new one). ``loop_commits``: the
    rows are committed on the event loop that queued them, not on the writer's thread (the file's
    first user in the process decides, ``engine.ledger_writer``; ``build_engine`` chooses by
    ``[ledger] commits`` and where the engine runs).
    """

    def __init__(
        self,
        ledger: Ledger | str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        owns: bool | None = None,
        retention: Retention | None = None,
        max_pending: int = MAX_PENDING,
        group_commit: float | None = None,
        loop_commits: bool = False,
    ) -> None:
        if isinstance(ledger, Ledger):
            self.ledger = ledger
            self._owns = bool(owns)
        else:
            self.ledger = Ledger(ledger, clock=clock)
            self._owns = True if owns is None else owns
        self._clock = clock
        self._options: dict[str, Any] = {
            "retention": retention,
            "max_pending": max_pending,
            "clock": clock,
            "group_commit": group_commit,
            "loop_commits": loop_commits,
        }
        try:
            self._writer = acquire_writer(self.ledger, **self._options)
        except BaseException:
            if self._owns:
                self.ledger.close()
            raise
        self._closed = False

    @property
    def interrupted(self) -> InterruptedRows:
        """The rows the file's crash recovery marked ``interrupted`` (``Ledger.interrupted``)."""
        return self.ledger.interrupted

    @property
    def path(self) -> Path | None:
        """The ledger's file, or ``None`` for an in-memory ledger."""
        return None if self.ledger.path == MEMORY else Path(self.ledger.path)

    @property
    def degraded_reason(self) -> str | None:
        """What ``/readyz`` (and ``gtl_store_degraded``) should say of the ledger, or ``None`` when all is
        well: while another process's write lock has held the file's commits back for
        ``ledger_writer.BLOCKED_AFTER`` seconds or more, the file, for how long, and how many rows wait
        in memory (``LedgerWriter.degraded_reason``). It clears with the next commit."""
        writer = self._writer
        if self._closed or writer.forked:
            return None
        return writer.degraded_reason

    async def start(
        self, *, session_id: str, context: RequestContext, model: str | None, now: float | None = None
    ) -> int:
        """Queue the row (status ``started``) and return its handle, without waiting for the disk
        (unless the queue is full: then wait for room)."""
        handle, when, row = self._try_start(session_id, context, model, now)
        if handle is None:
            handle = await self._start_when_room(when, row)
        return handle

    def start_nowait(
        self, *, session_id: str, context: RequestContext, model: str | None, now: float | None = None
    ) -> int | None:
        """``start`` without a coroutine: the handle, or ``None`` when the queue is full (then
        ``start``, which waits for room). The engine's fast path: no task, nothing to cancel."""
        return self._try_start(session_id, context, model, now)[0]

    def _try_start(
        self, session_id: str, context: RequestContext, model: str | None, now: float | None
    ) -> tuple[int | None, float, dict[str, Any]]:
        self._check_open()
        when = self._clock() if now is None else float(now)
        row = {
            "session_id": session_id,
            "user": context.principal,
            "model": model,
            "tenant": context.tenant,
            "key_id": context.key_id,
            "trace_id": context.trace_id,
        }
        return self._live_writer().start(when, **row), when, row

    async def finish(self, row_id: int, *, status: str, now: float | None = None, **fields: Any) -> None:
        """Queue the row's outcome (``Ledger.finish``'s fields); raise at once for a wrong status or
        field, and for a handle that is finished already or unknown (the first outcome wins)."""
        self._queue_finish(row_id, status, now, fields)

    def finish_nowait(self, row_id: int, *, status: str, now: float | None = None, **fields: Any) -> None:
        """``finish`` without a coroutine (a finish is always accepted: it never waits). The engine
        prefers it to ``finish``: a subclass that changes ``finish`` changes or disables this too."""
        self._queue_finish(row_id, status, now, fields)

    def _queue_finish(self, row_id: int, status: str, now: float | None, fields: dict[str, Any]) -> None:
        self._check_open()
        unknown = set(fields) - FINISH_FIELDS
        if unknown:
            raise TypeError(f"finish() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if status not in FINAL_STATUSES:
            raise LedgerValueError(f"finish status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        when = self._clock() if now is None else float(now)
        self._live_writer().finish(int(row_id), status, when, fields)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed to the file."""
        self._check_open()
        await asyncio.to_thread(self._live_writer().flush)

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every write queued so far is committed to the file — at once when none
        waits, else right after that commit, from the thread or loop that made it (``LedgerWriter.when_committed``):
        what must not be known before its row is (the gateway's audit record) waits here, the request not. A
        write a stop past its deadline spooled counts as committed (``engine.ledger_spool``)."""
        self._live_writer().when_committed(callback)

    async def rows(self, *, offset: int = 0, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """``Ledger.rows(offset=, limit=, **filters)``: dicts of every column, oldest first (queued writes
        included)."""
        self._check_open()
        return await asyncio.to_thread(self.ledger.rows, offset=offset, limit=limit, **filters)

    async def totals(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
    ) -> Totals:
        """``Ledger.totals`` (queued writes included)."""
        self._check_open()
        return await asyncio.to_thread(self.ledger.totals, user, since, until=until, tenant=tenant)

    def to_dataframe(self, **filters: Any) -> pandas.DataFrame:
        """The rows as the documented DataFrame, read now (``Ledger.to_dataframe``; prefer
        ``client.usage()``, which works over every backend)."""
        return self.ledger.to_dataframe(**filters)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Write what is queued and close, without a loop (the ledger file only if this store opened it)."""
        if self._closed:
            return
        self._closed = True
        release_writer(self._writer)
        if self._owns:
            self.ledger.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerStateError(f"the ledger {self.ledger.path} is closed")

    def _live_writer(self) -> LedgerWriter:
        if self._writer.forked:  # a forked child: its parent's writer thread does not exist here
            self._writer = acquire_writer(self.ledger, **self._options)
        return self._writer

    async def _start_when_room(self, when: float, row: dict[str, Any]) -> int:
        """Back-pressure: wait (in a worker thread) until the writer has room, within ``retry_for``."""
        writer = self._live_writer()
        deadline = time.monotonic() + self.ledger.retry_for
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LedgerBusyError(
                    f"the ledger {self.ledger.path} is {writer.pending()} write(s) behind for "
                    f"{self.ledger.retry_for:g} s; see the log"
                )
            await asyncio.to_thread(writer.wait_for_room, remaining)
            handle = writer.start(when, **row)
            if handle is not None:
                return handle


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    def report(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("%s: %s", what, future.exception())

    return report


# ----------------------------------------------------------------------------------------------
# budgets

_BUDGET_TABLE = """
CREATE TABLE IF NOT EXISTS budget_reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    principal TEXT NOT NULL,
    time REAL NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0.0,
    session_id TEXT
)
"""


def _budget_setup(conn: sqlite3.Connection) -> None:
    conn.execute(_BUDGET_TABLE)
    # covers the checks (a principal's minute and day: count, tokens, cost) without reading the table;
    # it replaces (principal, time), which files written by earlier versions have
    conn.execute(
        "CREATE INDEX IF NOT EXISTS budget_reservations_window ON budget_reservations (principal, time, tokens, cost)"
    )
    conn.execute("DROP INDEX IF EXISTS budget_reservations_principal")
    conn.execute("CREATE INDEX IF NOT EXISTS budget_reservations_time ON budget_reservations (time)")
    conn.execute("CREATE INDEX IF NOT EXISTS budget_reservations_session ON budget_reservations (session_id)")


class SqliteBudgetCounter:
    """A ``BudgetCounter`` in a SQLite table (``budget_reservations``), exact across processes.

    ``reserve`` sums the principal's minute and day, decides (``ratelimit.refusal``) and inserts the
    reservation in one ``BEGIN IMMEDIATE`` transaction. Times are the ``now`` callers pass (wall-clock
    unix seconds, the clock processes share). The sums are SQL aggregates over a covering index
    (~0.05 µs per reservation in the minute, the rows never reach Python); only a refusal fetches the
    minute's rows, for its ``retry_after``. They still grow with the minute: running totals, as the
    memory and Redis counters keep, would have to follow the ledger's rows too (``ledger_rows``), which
    the ledger's writer inserts.

    ``ledger_rows=True`` (the default store, which lives in the usage ledger's file) also counts the
    ledger rows of requests that made no reservation — those of processes or principals without
    budgets, as budgets always did — so a process pays nothing for budgets it does not have, and
    one that has them still sees everybody's use of the file. Before it reads them it waits for
    the principal's rows this process's ledger writer still holds (``ledger_writer.flush_rows_of``;
    nothing to wait for when none are queued), so queued rows count as written ones did. It skips
    the rows of requests refused before any provider was called (``ratelimit``'s "What counts") and
    those a reservation of the same principal and session id counts already.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ledger_rows: bool = False,
        busy_timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        self.db = SqliteDatabase(path, setup=_budget_setup, busy_timeout=busy_timeout, retry_for=retry_for)
        self.ledger_rows = ledger_rows
        self._writes = 0

    async def reserve(
        self,
        principal: str,
        limits: Limits,
        *,
        now: float,
        tokens: int = 0,
        cost: float = 0.0,
        session_id: str | None = None,
    ) -> Reservation:
        """Check and count one request in one transaction; raise the refusal, which counts nothing.

        A principal without limits is counted too: other processes sharing the file may enforce
        limits for it (as they did when budgets were read from the ledger)."""
        tokens, cost = int(tokens), float(cost)

        def work(conn: sqlite3.Connection) -> int | Exception:
            per_minute = limits.requests_per_minute is not None or limits.tokens_per_minute is not None
            per_day = limits.usd_per_day is not None
            requests, used, spent = _budget_totals(
                conn, principal, now, minute=per_minute, day=per_day, ledger_rows=self.ledger_rows
            )
            if limits_reached(limits, requests=requests, tokens=used, spent_today=spent):
                minute, spent = _budget_window(
                    conn, principal, now, minute=per_minute, day=per_day, ledger_rows=self.ledger_rows
                )
                refused = refusal(principal, limits, now=now, minute=minute, spent_today=spent)
                if refused is not None:
                    return refused
            cursor = conn.execute(
                "INSERT INTO budget_reservations (principal, time, tokens, cost, session_id) VALUES (?, ?, ?, ?, ?)",
                (principal, now, tokens, cost, session_id),
            )
            self._prune(conn, now)
            return int(cursor.lastrowid or 0)

        attempt = asyncio.ensure_future(asyncio.to_thread(self._counted, principal, work))
        try:
            outcome = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(self._uncount)  # the request will not be sent: take it back
            raise
        if isinstance(outcome, Exception):
            raise outcome
        return Reservation(outcome, principal, tokens, cost, now)

    async def settle(
        self, reservation: Reservation, *, tokens: int | None, cost: float | None, now: float | None = None
    ) -> None:
        """Replace the estimate with the actual figures (``None``: keep the estimate)."""
        if not reservation.id or (tokens is None and cost is None):
            return
        values = (None if tokens is None else int(tokens), None if cost is None else float(cost), int(reservation.id))

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE budget_reservations SET tokens = COALESCE(?, tokens), cost = COALESCE(?, cost) WHERE id = ?",
                values,
            )

        await _settled(asyncio.ensure_future(asyncio.to_thread(self.db.transaction, work)))

    async def release(self, reservation: Reservation) -> None:
        """Take the reservation back whole: its row goes (the request was never sent)."""
        if not reservation.id:
            return
        row_id = int(reservation.id)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM budget_reservations WHERE id = ?", (row_id,))

        await _settled(asyncio.ensure_future(asyncio.to_thread(self.db.transaction, work)))

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute`` and ``usd_today`` of ``principal``."""

        def work(conn: sqlite3.Connection) -> tuple[list[Spend], float]:
            return _budget_window(conn, principal, now, minute=True, day=True, ledger_rows=self.ledger_rows)

        minute, spent = await asyncio.to_thread(self._counted, principal, work, write=False)
        return usage_report(now=now, minute=minute, spent_today=spent)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.db.close)

    def close(self) -> None:
        """Close now, without a loop."""
        self.db.close()

    def _counted(self, principal: str, work: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """``work`` in a transaction, after the principal's queued ledger rows are written (worker thread)."""
        if self.ledger_rows:
            flush_rows_of(self.db.path, principal)
        return self.db.transaction(work, write=write)

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 1:  # a day of slack for clocks of other processes
            conn.execute("DELETE FROM budget_reservations WHERE time < ?", (horizon(now) - DAY,))

    def _uncount(self, attempt: asyncio.Future[Any]) -> None:
        if attempt.cancelled() or attempt.exception() is not None or not isinstance(attempt.result(), int):
            return
        row_id = attempt.result()
        undo = asyncio.get_running_loop().run_in_executor(
            None,
            self.db.transaction,
            lambda conn: conn.execute("DELETE FROM budget_reservations WHERE id = ?", (row_id,)),
        )
        undo.add_done_callback(_log_failure("could not take back a cancelled reservation"))


# Ledger rows that budgets count: not refused before any provider was called (``ratelimit``'s "What
# counts": an error or cancellation with no deployment — a budget's refusal too), and not counted
# already by a reservation — the principal's own: clients choose session ids, so another principal's
# reservation of the same id must neither hide the row nor be hidden by it. (The request being counted
# has no row yet: the engine starts it once the count is made, ``Engine.stream_batches``.)
_UNRESERVED_LEDGER_ROWS = (
    f"FROM requests WHERE user = ? AND time >= ? AND NOT {UNCOUNTED_ROW_SQL} "
    "AND NOT EXISTS (SELECT 1 FROM budget_reservations r "
    "WHERE r.session_id = requests.session_id AND r.principal = requests.user)"
)
_LEDGER_TOKENS = "CASE WHEN cache_hit OR coalesced THEN 0 ELSE COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) END"


def _budget_totals(
    conn: sqlite3.Connection,
    principal: str,
    now: float,
    *,
    minute: bool,
    day: bool,
    ledger_rows: bool = False,
) -> tuple[int, int, float]:
    """``_budget_window``'s figures as sums: the minute's requests and tokens, today's USD (each
    read only when asked for, else 0)."""
    requests = tokens = 0
    spent = 0.0
    if minute:
        since = now - WINDOW
        found = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM budget_reservations WHERE principal = ? AND time >= ?",
            (principal, since),
        ).fetchone()
        requests, tokens = int(found[0]), int(found[1])
        if ledger_rows:
            counted = f"SELECT COUNT(*), COALESCE(SUM({_LEDGER_TOKENS}), 0) {_UNRESERVED_LEDGER_ROWS}"
            found = conn.execute(counted, (principal, since)).fetchone()
            requests, tokens = requests + int(found[0]), tokens + int(found[1])
    if day:
        spent = _budget_window(conn, principal, now, minute=False, day=True, ledger_rows=ledger_rows)[1]
    return requests, tokens, spent


def _budget_window(
    conn: sqlite3.Connection,
    principal: str,
    now: float,
    *,
    minute: bool,
    day: bool,
    ledger_rows: bool = False,
) -> tuple[list[Spend], float]:
    """The principal's spends of the last minute and USD of today (each read only when asked for);
    with ``ledger_rows``, the ledger's rows without a reservation count too."""
    spends: list[Spend] = []
    spent = 0.0
    if minute:
        since = now - WINDOW
        found = conn.execute(
            "SELECT time, tokens FROM budget_reservations WHERE principal = ? AND time >= ?", (principal, since)
        ).fetchall()
        if ledger_rows:
            found += conn.execute(
                f"SELECT time, {_LEDGER_TOKENS} {_UNRESERVED_LEDGER_ROWS}", (principal, since)
            ).fetchall()
        spends = [Spend(float(at), int(tokens)) for at, tokens in found]
    if day:
        start = utc_day_start(now)
        row = conn.execute(
            "SELECT COALESCE(SUM(cost), 0.0) FROM budget_reservations WHERE principal = ? AND time >= ?",
            (principal, start),
        ).fetchone()
        spent = float(row[0])
        if ledger_rows:
            spent += float(
                conn.execute(
                    f"SELECT COALESCE(SUM(cost), 0.0) {_UNRESERVED_LEDGER_ROWS}", (principal, start)
                ).fetchone()[0]
            )
    return spends, spent


# ----------------------------------------------------------------------------------------------
# the response cache


def _cache_setup(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS response_cache (key TEXT PRIMARY KEY, answer BLOB NOT NULL, expires REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS response_cache_expires ON response_cache (expires)")


_ANSWER = msgspec.json.Decoder(CachedAnswer)


class SqliteResponseCache:
    """A ``ResponseCache`` in a SQLite table: the key, the msgspec-encoded ``CachedAnswer``, and its
    expiry in wall-clock unix seconds (``wall_clock``; processes share it). Expired rows are never
    returned, and are deleted when read and in periodic sweeps. There is no entry limit: the table
    holds at most what one ``ttl`` of traffic stores."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_ttl: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        self.db = SqliteDatabase(path, setup=_cache_setup, busy_timeout=busy_timeout, retry_for=retry_for)
        self.default_ttl = default_ttl
        self.wall_clock = wall_clock
        self._writes = 0

    async def get(self, key: str) -> CachedAnswer | None:
        now = self.wall_clock()

        def read(conn: sqlite3.Connection) -> tuple[bytes, float] | None:
            found = conn.execute("SELECT answer, expires FROM response_cache WHERE key = ?", (key,)).fetchone()
            return None if found is None else (bytes(found[0]), float(found[1]))

        found = await asyncio.to_thread(self.db.transaction, read, write=False)  # a hit takes no write lock
        if found is None:
            return None
        data, expires = found
        if expires <= now:
            await self._delete_expired(key, now)
            return None
        try:
            return _ANSWER.decode(data)
        except msgspec.DecodeError:  # written by another version of gtl_nb: a miss, and gone
            log.debug("cache entry %s could not be read; dropped", key)
            await self.delete(key)
            return None

    async def set(self, key: str, answer: CachedAnswer, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            await self.delete(key)
            return
        now = self.wall_clock()
        data = msgspec.json.encode(answer)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO response_cache (key, answer, expires) VALUES (?, ?, ?)", (key, data, now + ttl)
            )
            self._writes += 1
            if self._writes % _PRUNE_EVERY == 1:
                conn.execute("DELETE FROM response_cache WHERE expires <= ?", (now,))

        await asyncio.to_thread(self.db.transaction, work)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(
            self.db.transaction, lambda conn: conn.execute("DELETE FROM response_cache WHERE key = ?", (key,))
        )

    async def clear(self) -> None:
        await asyncio.to_thread(self.db.transaction, lambda conn: conn.execute("DELETE FROM response_cache"))

    async def _delete_expired(self, key: str, now: float) -> None:
        # only if still expired: another process may have stored a fresh answer meanwhile
        statement = "DELETE FROM response_cache WHERE key = ? AND expires <= ?"
        await asyncio.to_thread(self.db.transaction, lambda conn: conn.execute(statement, (key, now)))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.db.close)

    def close(self) -> None:
        """Close now, without a loop."""
        self.db.close()


# ----------------------------------------------------------------------------------------------
# circuit breakers


def _breaker_setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS breakers (deployment TEXT PRIMARY KEY, state TEXT NOT NULL)")


class SqliteBreakerStore(RulesOverState):
    """A ``BreakerStore`` in a SQLite table: per deployment, ``CircuitBreaker.to_state()`` as JSON
    (``shared_breakers.stored_json``: a few hundred bytes whatever the traffic).

    Each call loads the state, applies ``engine.breaker``'s rules and writes it back in one
    ``BEGIN IMMEDIATE`` transaction, so the processes of one machine share every circuit — except
    ``acquire`` on a closed circuit, which only reads (the common case takes no write lock). Times
    are the ``wall_clock``'s (monotonic clocks differ between processes). A half-open probe slot
    whose process never reported back (it died) is given back after ``probe_lease`` seconds."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: BreakerConfig | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        probe_lease: float = 300.0,
        busy_timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        self.db = SqliteDatabase(path, setup=_breaker_setup, busy_timeout=busy_timeout, retry_for=retry_for)
        self.config = config or BreakerConfig()
        self.wall_clock = wall_clock
        self.probe_lease = probe_lease

    async def snapshots(self, deployments: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each deployment's ``snapshot()`` plus ``"allowed"``; times are wall-clock unix seconds."""
        names = list(deployments)

        def work(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            now = self.wall_clock()
            result = {}
            for name in names:
                breaker, _ = self._load(conn, name, now)
                result[name] = {**breaker.snapshot(), "allowed": breaker.would_allow()}
            return result

        return await asyncio.to_thread(self.db.transaction, work, write=False)

    async def acquire(self, deployment: str) -> str | None:
        """``"pass"`` after a read alone while the circuit is closed; else as every other call."""
        if not self.config.enabled:
            return "pass"

        def closed(conn: sqlite3.Connection) -> bool:
            found = conn.execute("SELECT state FROM breakers WHERE deployment = ?", (deployment,)).fetchone()
            if found is None:
                return True  # no state yet: closed
            try:
                return json.loads(found[0]).get("state") == "closed"  # only an open circuit changes with the clock
            except (ValueError, AttributeError):
                return False  # unreadable: _update says so and starts it closed

        if await asyncio.to_thread(self.db.transaction, closed, write=False):
            return "pass"
        return await self._update(deployment, lambda breaker: breaker.acquire())

    async def aclose(self) -> None:
        await asyncio.to_thread(self.db.close)

    def close(self) -> None:
        """Close now, without a loop."""
        self.db.close()

    async def _update(self, deployment: str, operation: Callable[[CircuitBreaker], T]) -> T:
        def work(conn: sqlite3.Connection) -> T:
            now = self.wall_clock()  # read with the write lock held: processes apply changes in time order
            breaker, probe_at = self._load(conn, deployment, now)
            before = breaker.to_state()
            result = operation(breaker)
            after = breaker.to_state()
            if after != before:
                if result == "probe":
                    probe_at = now  # the newest grant: the lease runs from the last sign of life
                after["probe_at"] = probe_at if after["probes"] else None
                text = stored_json(after)
                conn.execute("INSERT OR REPLACE INTO breakers (deployment, state) VALUES (?, ?)", (deployment, text))
            return result

        return await _settled(asyncio.ensure_future(asyncio.to_thread(self.db.transaction, work)))

    def _load(self, conn: sqlite3.Connection, deployment: str, now: float) -> tuple[CircuitBreaker, float | None]:
        """The deployment's breaker as stored, at the instant ``now``, and when its last probe was granted."""

        def clock() -> float:
            return now  # one instant per transaction

        found = conn.execute("SELECT state FROM breakers WHERE deployment = ?", (deployment,)).fetchone()
        if found is None:
            return CircuitBreaker(deployment, self.config, clock=clock), None
        try:
            state = json.loads(found[0])
            probe_at = state.get("probe_at")
            if state.get("probes") and probe_at is not None and now - float(probe_at) > self.probe_lease:
                log.info("circuit %s: probe slots held for over %g s were given back", deployment, self.probe_lease)
                state["probes"], probe_at = 0, None
            return CircuitBreaker.from_state(state, deployment, self.config, clock=clock), probe_at
        except (ValueError, TypeError, AttributeError):
            log.warning("circuit %s: unreadable stored state; starting closed", deployment)
            return CircuitBreaker(deployment, self.config, clock=clock), None
