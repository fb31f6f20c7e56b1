"""The usage ledger in PostgreSQL (``postgresql://``): one ``requests`` table that gateway replicas share.

Same columns, statuses and rules as the SQLite ledger (``docs/ledger.md``; the table's PostgreSQL
shape is in ``engine.stores.postgres_schema``), the same ``UsageLedger`` contract, and writes off
the request path as the SQLite writer does them:

* **Writes.** ``start`` and ``finish`` put the write on a bounded queue and return at once; ``start``
  returns a row *handle* (a negative int, never mistaken for a row id). One writer task per ledger
  takes everything queued (up to ``max_batch``) and writes it in ONE transaction — a group commit,
  sent as one query (``_commit``): one round trip. A request that ended before its start was written
  is one INSERT of the finished row. Beyond ``max_pending`` queued writes a ``start`` waits for room
  (back-pressure).
* **Lingering**, as the SQLite writer does (``engine.ledger_writer``): an idle writer is woken by the
  next write; a busy one (a commit within the last ``IDLE_AFTER`` seconds) is not woken per write —
  a wake-up of the ledger's loop thread, and its fight with the event loop for the GIL, per request —
  but looks again every ``group_commit`` seconds (``[ledger] group_commit_ms``, 20 ms by default) and
  takes what came meanwhile as one batch. A write waits at most ``group_commit`` before its batch is
  taken, which is also what a SIGKILL can lose beyond
  the batch being written; a reader (read-your-writes) and ``aclose`` wake a lingering writer at once.
* **Read-your-writes.** ``rows``, ``totals`` and ``to_dataframe`` first wait until every write this
  ledger queued before them is committed in PostgreSQL.
* **When a row is safe.** ``when_written`` calls back once the writes queued before it are committed in
  PostgreSQL or in the spool (both survive a crash of this process), as the SQLite ledger's does after
  its commit: the gateway's audit log holds a request's record until then. With ``strict_durability``
  (``[ledger] strict_durability``) only PostgreSQL's commit counts: a spooled write's callback waits
  for the drain that writes it there.
* **Idempotent rows.** Every row carries its writer's ``replica`` id and its number there
  (``replica_seq``), unique together; inserts do nothing on conflict and a finish updates only a row
  still ``started``. A write replayed (from the spool, after a crash) changes nothing.
* **Leases, not process ids.** Each ledger registers its replica id in ``ledger_leases`` with a lease
  it renews every ``renew`` seconds (default 5) and that runs out ``lease`` seconds after the last
  renewal (default 15), judged by the database's clock, so hosts' clocks never matter. Every replica,
  at each renewal, marks ``interrupted`` the ``started`` rows of every replica whose lease ran out:
  one UPDATE guarded by ``status = 'started'``, so two replicas doing it at once mark each row once.
  Such a row is flagged ``recovered``: if its writer was only cut off (a network partition longer
  than the lease) its real outcome, arriving later, replaces the guess. The replica whose UPDATE
  marked a row hands it over (``interrupted``: ``engine.ledger_interrupted``), so its gateway writes
  the row's audit record — one replica's record for each row marked (a writer only cut off later
  writes its own record of the real outcome too: its row is replaced, records are not). A clean
  ``aclose`` marks its own unfinished rows ``interrupted`` and gives its lease back. The lease of a replica that did not
  (killed, its host lost) is deleted once it ran out more than ``forget_after`` seconds ago
  (``FORGET_AFTER``, 15 minutes) and none of its rows is still ``started`` — judged first, in the
  same round, so recovery never loses the lease it needs; each replica sweeps when it opens and
  every minute. A replica that was only cut off for that long takes a new lease at its next renewal
  (an upsert), and its late outcomes need none.
* **Retention** (``retention``: ``[ledger] retention_days`` and ``max_rows``), as the SQLite
  writer's: a task of its own prunes once PostgreSQL is usable after opening, then every
  ``prune_every`` seconds (an hour) — in bounded batches that other replicas pruning at once never
  collide with (``engine.stores.postgres_retention``). Not in the lease keeper: a first prune of a
  large table takes a while, and the lease must not run out meanwhile.
* **PostgreSQL unreachable** — down, refusing, or not answering a write, a lease renewal or the first
  contact within ``write_timeout`` (a hung host, a network black hole: the connection stays open and
  would never fail). Writes go to a local spool (``engine.stores.postgres_spool``; default
  file ``postgres-spool-<digest>.sqlite3`` — host, port, database and user, hashed — beside the
  default SQLite ledger) instead, in order; the
  lease keeper probes the server (backoff up to ``renew``) and, once it answers, the writer drains the
  spool oldest first, one transaction per chunk, before it writes anything new of its own. Nothing
  is lost and nothing doubled. ``degraded`` and ``degraded_reason`` say so (for ``/readyz``); reads
  raise ``PostgresUnavailableError`` meanwhile (they could not include the spooled rows).
* **A pooled connection the server closed** while it sat idle (a restart, ``pg_terminate_backend``,
  a PgBouncer or fail-over idle kill) is not the server being unreachable: the batch, renewal or read
  that finds it closed runs again, once, on a new connection (``postgres_pool.PooledConnections``) —
  idempotent as a spooled replay is, so a batch whose COMMIT did reach the server doubles nothing.

The pool and both tasks live on a loop thread of the ledger's own (``postgres_pool.PostgresLoop``):
callers on any loop — the engine's, a test's ``asyncio.run``, a notebook — reach it safely, and a
caller's loop ending never cancels a write. A forked child must open its own ledger.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import platform
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import (
    DAY,
    FINISH_FIELDS,
    LedgerBusyError,
    LedgerStateError,
    LedgerValueError,
    Totals,
    bound_seconds,
    checked_filter_value,
    clean_finish_fields,
    default_ledger_path,
    frame_from_rows,
    iso_utc,
    page_bounds,
    unknown_filter,
)
from gtl_nb.engine.ledger_interrupted import COLUMNS as INTERRUPTED_COLUMNS
from gtl_nb.engine.ledger_interrupted import InterruptedRows
from gtl_nb.engine.ledger_retention import PRUNE_EVERY, Retention
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, COLUMNS, FINAL_STATUSES, TABLE
from gtl_nb.engine.ledger_watermark import Watermark
from gtl_nb.engine.ledger_writer import IDLE_AFTER
from gtl_nb.engine.lingering import GROUP_COMMIT, checked_window
from gtl_nb.engine.loop import stop_shared_loop
from gtl_nb.engine.processes import own_identity
from gtl_nb.engine.stores.postgres_pool import (
    CONNECT_TIMEOUT,
    ConnectErrors,
    PooledConnections,
    PostgresLoop,
    PostgresUnavailableError,
    application_name_option,
    describe,
    is_unreachable,
    parse_postgres_url,
    require_psycopg,
)
from gtl_nb.engine.stores.postgres_retention import prune_postgres
from gtl_nb.engine.stores.postgres_schema import LEASES, LEDGER_MIGRATIONS, migrate, quoted
from gtl_nb.engine.stores.postgres_spool import Spool, SpoolEntry
from gtl_nb.log import get_logger

if TYPE_CHECKING:
    import pandas

__all__ = ["FORGET_AFTER", "MAX_BATCH", "MAX_PENDING", "SPOOL_CHUNK", "WRITE_TIMEOUT", "PostgresUsageLedger"]

log = get_logger("engine.stores")

T = TypeVar("T")

MAX_PENDING = 10_000  # queued writes before a start waits: a few MB at most
MAX_BATCH = 500  # writes per transaction
SPOOL_CHUNK = 500  # spooled writes replayed per transaction
FORGET_AFTER = 900.0  # seconds past its end a dead replica's lease is kept (to see who ran lately)
WRITE_TIMEOUT = 10.0
"""Seconds a write, a lease renewal or the first contact may wait for the server's answer before it
counts as unreachable: a batch is one round trip of milliseconds, and a server that stopped answering
(a hung host, a network black hole) keeps the connection open without ever failing it."""
_SWEEP_EVERY = 60.0  # seconds between two sweeps of dead leases, at most
_REFUSALS = ("RATE_LIMIT", "BUDGET_EXCEEDED")  # a request refused by a budget (totals skip them)

# ----------------------------------------------------------------------------------------------
# SQL

_START_COLUMNS = (
    "time",
    "time_utc",
    "session_id",
    "user",
    "model",
    "pid",
    "proc_start",
    "hostname",
    "tenant",
    "key_id",
    "trace_id",
    "replica",
    "replica_seq",
)
_OUTCOME_COLUMNS = (
    "end_time",
    "status",
    "error_code",
    "finish_reason",
    "deployment",
    "provider_type",
    "tokens_in",
    "tokens_out",
    "cached_tokens_in",
    "cache_write_tokens_in",
    "reasoning_tokens_out",
    "cost",
    "usage_estimated",
    "ttft_ms",
    "latency_ms",
    "cache_hit",
    "coalesced",
    "failover_path",
)


_KIND = {column.name: column.sql for column in COLUMNS}
_FLAGS = ("cache_hit", "coalesced", "usage_estimated")  # boolean columns here, INTEGER 0/1 in SQLite


def _pg_type(name: str) -> str:
    """The PostgreSQL type of a ``requests`` column (``postgres_schema``)."""
    if name in _FLAGS:
        return "boolean"
    if name == "failover_path":
        return "jsonb"
    if name == "replica_seq":
        return "bigint"
    return {"INTEGER": "bigint", "REAL": "double precision"}.get(_KIND.get(name, "TEXT"), "text")


# A batch is one query (``_commit``): these statements, the values written in as SQL literals.
# One INSERT for rows started and rows finished already, so a batch inserts them in queue order
# (the ids then follow the order of the starts, as in SQLite).
_INSERT_COLUMNS = (*_START_COLUMNS, *_OUTCOME_COLUMNS)
_INSERT_HEAD = f"INSERT INTO {TABLE} ({', '.join(quoted(name) for name in _INSERT_COLUMNS)}) VALUES ".encode()
_INSERT_TAIL = b" ON CONFLICT (replica, replica_seq) DO NOTHING"
_STARTED = {
    **dict.fromkeys(_OUTCOME_COLUMNS),
    "status": "started",
    "cache_hit": False,
    "coalesced": False,
}
# One UPDATE completes the batch's rows: measures as given, who answered and the flags only when
# given; a row the lease keeper guessed ``interrupted`` (``recovered``) takes its real outcome.
_FINISH_COLUMNS = (*_OUTCOME_COLUMNS, "model", "replica", "replica_seq")
_FINISH_HEAD = (
    f"UPDATE {TABLE} AS r SET status = v.status, end_time = v.end_time, error_code = v.error_code, "
    "finish_reason = v.finish_reason, deployment = COALESCE(v.deployment, r.deployment), "
    "provider_type = COALESCE(v.provider_type, r.provider_type), "
    "model = COALESCE(v.model, r.model), tokens_in = v.tokens_in, tokens_out = v.tokens_out, "
    "cached_tokens_in = v.cached_tokens_in, cache_write_tokens_in = v.cache_write_tokens_in, "
    "reasoning_tokens_out = v.reasoning_tokens_out, cost = v.cost, usage_estimated = v.usage_estimated, "
    "ttft_ms = v.ttft_ms, latency_ms = COALESCE(v.latency_ms, (v.end_time - r.time) * 1000.0), "
    "cache_hit = COALESCE(v.cache_hit, r.cache_hit), coalesced = COALESCE(v.coalesced, r.coalesced), "
    "failover_path = COALESCE(v.failover_path, r.failover_path), recovered = false FROM (VALUES "
).encode()
_FINISH_TAIL = (
    f") AS v ({', '.join(quoted(name) for name in _FINISH_COLUMNS)}) "
    "WHERE r.replica = v.replica AND r.replica_seq = v.replica_seq AND (r.status = 'started' OR r.recovered)"
).encode()
# What follows each value's literal: the INSERT's values take the table's types; the UPDATE's VALUES
# list needs them said (a column of NULLs would be text).
_INSERT_CASTS = tuple(b"::jsonb" if name == "failover_path" else b"" for name in _INSERT_COLUMNS)
_FINISH_CASTS = tuple(f"::{_pg_type(name)}".encode() for name in _FINISH_COLUMNS)


def _rows(
    literal: Callable[[Any], bytes], rows: list[dict[str, Any]], columns: tuple[str, ...], casts: tuple[bytes, ...]
) -> bytes:
    """``(v, v, ...), (v, v, ...)``: each row's values as SQL literals, in ``columns`` order."""
    return b", ".join(
        b"(" + b", ".join(literal(row[name]) + cast for name, cast in zip(columns, casts, strict=True)) + b")"
        for row in rows
    )


_RENEW = (
    f"INSERT INTO {LEASES} (replica, hostname, pid, lease_until) "
    "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
    "ON CONFLICT (replica) DO UPDATE SET lease_until = EXCLUDED.lease_until"
)
# The rows of a replica whose spooled writes another process drains: it gets one lease period to
# come back and renew (if it is alive), then its unfinished rows are judged like any others. An
# update, not DO NOTHING, of a lease that is there: it locks the row, so a sweep of dead leases
# (_FORGET_LEASES) waits for the drain's commit and then finds the lease running again.
_ADOPT = (
    f"INSERT INTO {LEASES} AS l (replica, lease_until) "
    "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) "
    "ON CONFLICT (replica) DO UPDATE SET lease_until = GREATEST(l.lease_until, EXCLUDED.lease_until)"
)
# Exactly once per row however many replicas run it at once: the second waits for the first's row
# locks, then finds the rows no longer 'started'.
_JUDGE = (
    f"UPDATE {TABLE} AS r SET status = 'interrupted', end_time = extract(epoch FROM clock_timestamp()), "
    f"recovered = true FROM {LEASES} AS l "
    "WHERE r.replica = l.replica AND r.status = 'started' AND l.lease_until < clock_timestamp() "
    f"RETURNING r.replica, {', '.join('r.' + quoted(name) for name in INTERRUPTED_COLUMNS)}"
)
# Run after _JUDGE: a lease whose rows are still started is kept, or nothing could judge them.
_FORGET_LEASES = (
    f"DELETE FROM {LEASES} AS l WHERE l.lease_until < clock_timestamp() - make_interval(secs => %s) "
    f"AND NOT EXISTS (SELECT 1 FROM {TABLE} AS r WHERE r.replica = l.replica AND r.status = 'started')"
)
_RELEASE_ROWS = (
    f"UPDATE {TABLE} SET status = 'interrupted', end_time = %s, recovered = true "
    "WHERE replica = %s AND status = 'started'"
)
_RELEASE_LEASE = f"DELETE FROM {LEASES} WHERE replica = %s"
_SELECT = f"SELECT {', '.join(quoted(name) for name in COLUMN_NAMES)} FROM {TABLE}"
_TOKENS = "CASE WHEN cache_hit OR coalesced THEN 0 ELSE COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) END"
_NOT_REFUSED = (
    "NOT (status = 'error' AND deployment IS NULL "
    f"AND COALESCE(error_code, '') IN ({', '.join(repr(code) for code in _REFUSALS)}))"
)
_Entry = tuple[int, str, dict[str, Any]]  # one write: its number in the queue, its kind, its SQL parameters


# ----------------------------------------------------------------------------------------------
# the queued writes


@dataclass(slots=True, eq=False)
class _Finish:
    """A queued ``finish``: the outcome as the caller gave it (cleaned by the writer, off the request path)."""

    seq: int
    number: int
    status: str
    when: float
    fields: dict[str, Any]


@dataclass(slots=True, eq=False)
class _Start:
    """A queued ``start``; ``finish`` is set when the request ended before the row was written."""

    seq: int
    number: int
    when: float
    session_id: str | None
    user: str | None
    model: str | None
    tenant: Any
    key_id: Any
    trace_id: Any
    finish: _Finish | None = None


class PostgresUsageLedger:
    """The usage ledger in PostgreSQL (see the module docstring).

    ``url`` is ``postgresql://user:password@host:5432/database`` (``postgres_pool.parse_postgres_url``
    lists the query options); the keyword arguments override its options. ``replica`` prefixes this
    writer's id (the host name by default; a random part keeps ids unique). ``clock`` stamps rows
    written without ``now``. Opening makes one attempt to reach the server (``connect_timeout``): a
    server that does not answer leaves the ledger ``degraded``, spooling, not failed. ``group_commit``:
    the seconds a busy writer gathers rows into one transaction. ``forget_after``: the seconds a dead
    replica's lease is kept once it ran out (its rows judged). ``retention``: which finished rows to
    delete (``None``: keep them all), every ``prune_every`` seconds. ``strict_durability``: ``when_written``
    waits for PostgreSQL's commit of the writes, never counting the local spool as safe.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        spool_path: str | os.PathLike[str] | None = None,
        replica: str | None = None,
        lease: float | None = None,
        renew: float | None = None,
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        wait_for: float = 60.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        group_commit: float | None = None,
        forget_after: float = FORGET_AFTER,
        retention: Retention | None = None,
        prune_every: float = PRUNE_EVERY,
        strict_durability: bool = False,
    ) -> None:
        self.group_commit = GROUP_COMMIT if group_commit is None else checked_window(group_commit)
        self._url = parse_postgres_url(url, where="ledger")
        self._psycopg, self._psycopg_pool = require_psycopg()
        options = self._url.options
        self._lease = float(lease if lease is not None else options["lease"])
        self._renew = float(renew if renew is not None else options["renew"])
        if not 0 < self._renew < self._lease:
            raise LedgerValueError(
                f"renew ({self._renew:g} s) must be positive and shorter than lease ({self._lease:g} s)"
            )
        self.hostname = platform.node() or "localhost"
        name = replica or options["replica"] or self.hostname
        #: This writer's id in ``ledger_leases`` and in its rows' ``replica`` column.
        self.replica = f"{name}:{os.getpid()}:{secrets.token_hex(4)}"
        self._clock = clock
        self._max_pending = max(1, max_pending)
        self._max_batch = max(1, max_batch)
        self._wait_for = wait_for
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._pool_max = int(options["pool_max"])
        self._forget_after = max(0.0, float(forget_after))
        self._swept = -math.inf  # monotonic time of the last sweep of dead leases
        self._retention = retention if retention is not None and retention.enabled else None
        self._prune_every = float(prune_every)
        #: Whether only PostgreSQL's commit makes a write safe for ``when_written`` (not the spool).
        self.strict_durability = bool(strict_durability)
        self._pruner: asyncio.Future[None] | None = None
        chosen = spool_path or options["spool_path"]
        self.spool_path = (
            Path(chosen).expanduser()
            if chosen
            else default_ledger_path().parent / f"postgres-spool-{self._url.digest}.sqlite3"
        )
        self._spool = Spool(self.spool_path)
        #: The rows the lease keeper marked ``interrupted``, for the gateway's audit log
        #: (``engine.ledger_interrupted``): each row once, handed over by the replica whose UPDATE marked it.
        self.interrupted = InterruptedRows()
        # -- the request path (any thread), under _lock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._queue: deque[_Start | _Finish] = deque()
        self._queued_starts: dict[int, _Start] = {}  # starts not yet taken: a finish merges into them
        self._open: set[int] = set()  # numbers of started, unfinished requests
        self._next_number = 1  # replica_seq of the next row; its handle is -number
        self._seq = 0  # writes queued so far
        # every write numbered up to this one is in PostgreSQL or the spool (only PostgreSQL with
        # strict_durability), and the calls waiting for it (``when_written``)
        self._written = Watermark(f"ledger {self._url.shown}", log)
        self._idle = False
        self._closing = False
        self._closed = False
        # -- the writer (the ledger's loop only)
        self._processed = 0  # every write numbered up to this one is in PostgreSQL or the spool
        self._durable = 0  # every write numbered up to this one is in PostgreSQL
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._inflight: list[_Entry] = []
        self._mine_spooled = False  # writes of this replica wait in the spool: new ones go after them
        self._backlog = self._spool.count() > 0  # anyone's writes wait in the spool
        self._ready = False  # schema migrated and lease taken
        self._problem: str | None = None  # why PostgreSQL cannot be used now
        self._problem_since = 0.0
        self._renewed = -math.inf  # monotonic time of the last renewal
        self._pid, self._identity = own_identity()
        self._pool: Any = None
        self._connections: Any = None  # the pool's connections, a stale one retried (PooledConnections)
        self._connect_errors = ConnectErrors()  # why the pool's last connection attempt failed
        self._loop = PostgresLoop(name=f"gtl_nb postgres ledger {self.replica}")
        try:
            self._wake = self._loop.run(self._make_event())
            self._loop.run(self._open_pool(), timeout=connect_timeout + 30)
        except BaseException:
            self._loop.stop()
            self._spool.close()
            raise
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- what callers see -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database's URL without its password."""
        return self._url.shown

    @property
    def degraded(self) -> bool:
        """Whether rows do not reach PostgreSQL now (unreachable) or are still being drained from the spool."""
        return self._problem is not None or self._backlog

    @property
    def degraded_cause(self) -> str | None:
        """Why PostgreSQL cannot be used, alone (``degraded_reason`` without the URL and the spool), for
        the gateway's ``ready`` line; ``None`` when all is well."""
        return self._problem

    @property
    def degraded_reason(self) -> str | None:
        """What ``/readyz`` should say about the ledger, or ``None`` when all is well."""
        if self._problem is not None:
            since = datetime.fromtimestamp(self._problem_since, timezone.utc).strftime("%H:%M:%S UTC")
            return (
                f"PostgreSQL {self._url.shown} cannot be used since {since} ({self._problem}); "
                f"ledger rows are spooled in {self.spool_path}"
            )
        if self._backlog:
            return f"ledger rows spooled in {self.spool_path} are being written to PostgreSQL {self._url.shown}"
        return None

    @property
    def spooled(self) -> int:
        """How many writes wait in the spool file (of every process that shares it)."""
        return self._spool.count()

    async def start(
        self, *, session_id: str, context: RequestContext, model: str | None, now: float | None = None
    ) -> int:
        """Queue the row (status ``started``) and return its handle, without waiting for the database
        (unless the queue is full: then wait for room, up to ``wait_for``)."""
        self._check_open()
        when = self._clock() if now is None else float(now)
        row = (when, session_id, context.principal, model, context.tenant, context.key_id, context.trace_id)
        handle = self._queue_start(*row)
        if handle is None:
            handle = await self._start_when_room(row)
        return handle

    async def finish(self, row_id: int, *, status: str, now: float | None = None, **fields: Any) -> None:
        """Queue the row's outcome (``Ledger.finish``'s fields); raise at once for a wrong status or
        field, and for a handle that is finished already or unknown (the first outcome wins)."""
        self._check_open()
        unknown = set(fields) - FINISH_FIELDS
        if unknown:
            raise TypeError(f"finish() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if status not in FINAL_STATUSES:
            raise LedgerValueError(f"finish status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        when = self._clock() if now is None else float(now)
        self._queue_finish(-int(row_id), status, when, fields)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed in PostgreSQL."""
        self._check_open()
        await self._loop.call(self._until_durable(self._seq))

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every write queued so far is safe from a crash of this process —
        committed in PostgreSQL, or (while PostgreSQL cannot be used, and until this replica's spooled
        writes are drained) in the local spool, which the next drain writes to PostgreSQL; with
        ``strict_durability``, committed in PostgreSQL only (a spooled write waits for its drain): at
        once when none waits, else from the ledger's loop thread right after that commit, so it must be
        quick and thread-safe. What must not be known before its row is (the gateway's audit record)
        waits here, the request not. Never called for writes a ``close`` could neither write nor spool,
        nor, with ``strict_durability``, for those a ``close`` left in the spool (the gateway's audit log
        writes its records anyway when it closes, and says so)."""
        with self._lock:
            target = self._seq
        self._written.call_when(target, callback)

    async def rows(self, *, offset: int = 0, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Matching rows as dicts of every documented column, in id order (queued writes included);
        filters as ``Ledger.to_dataframe``'s, ``offset`` and ``limit`` as ``Ledger.rows``'s (in the SQL)."""
        self._check_open()
        where, params = _where(filters)
        count, skip = page_bounds(offset, limit)
        # PostgreSQL's LIMIT NULL is no limit; the page is cut by the server, not here
        page = f"{where} ORDER BY id LIMIT %s OFFSET %s"
        return await self._loop.call(self._rows(self._seq, page, [*params, None if count < 0 else count, skip]))

    async def totals(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
    ) -> Totals:
        """As ``Ledger.totals``: every row but budget refusals; no tokens of cache hits or coalesced ones."""
        self._check_open()
        return await self._loop.call(self._totals(self._seq, user, since, until, tenant))

    async def spend_today(self, user: str | None = None, now: float | None = None) -> float:
        """USD spent by ``user`` (None: everyone) on requests started in the UTC day of ``now``."""
        when = self._clock() if now is None else float(now)
        day = math.floor(when / DAY) * DAY
        return (await self.totals(user=user, since=day, until=day + DAY)).cost

    def to_dataframe(self, **filters: Any) -> pandas.DataFrame:
        """The rows as the documented DataFrame (``frame_from_rows``), from a thread without a running loop."""
        self._check_open()
        where, params = _where(filters)
        every = f"{where} ORDER BY id"
        return frame_from_rows(self._loop.run(self._rows(self._seq, every, params), timeout=self._wait_for + 30))

    async def recover(self) -> int:
        """Mark ``interrupted`` the started rows of every replica whose lease ran out; how many (the
        lease keeper does this at every renewal)."""
        self._check_open()
        return await self._loop.call(self._judge_now())

    async def aclose(self) -> None:
        """Write what is queued (to PostgreSQL, else the spool), give the lease back and close."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """``aclose`` from a thread without a running loop (and at interpreter exit)."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
            self._room.notify_all()
        try:
            self._loop.run(self._shutdown(), timeout=self._wait_for + 30)
        except Exception as exc:
            log.error("ledger %s: closing failed (%s)", self._url.shown, exc)
        finally:
            self._loop.stop()
            self._spool.close()

    def __repr__(self) -> str:
        return f"<gtl_nb PostgresUsageLedger {self._url.shown} replica={self.replica}>"

    # -- the request path -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerStateError(f"the ledger {self._url.shown} is closed")

    def _queue_start(
        self, when: float, session_id: str, user: str | None, model: str | None, *context: Any
    ) -> int | None:
        with self._lock:
            if self._closing:
                raise LedgerStateError(f"the ledger {self._url.shown} is closed")
            if len(self._queue) >= self._max_pending:
                return None
            self._seq += 1
            number = self._next_number
            self._next_number += 1
            op = _Start(self._seq, number, when, session_id, user, model, *context)
            self._queue.append(op)
            self._queued_starts[number] = op
            self._open.add(number)
            wake, self._idle = self._idle, False
        if wake:
            self._loop.wake(self._wake.set)
        return -number

    def _queue_finish(self, number: int, status: str, when: float, fields: dict[str, Any]) -> None:
        with self._lock:
            if self._closing:
                raise LedgerStateError(f"the ledger {self._url.shown} is closed")
            if number not in self._open:
                if 0 < number < self._next_number:
                    raise LedgerStateError(
                        f"ledger row handle {-number} is already finished; it cannot be finished as {status} "
                        "(the first outcome wins)"
                    )
                raise LedgerStateError(f"ledger row handle {-number} does not exist")
            self._open.discard(number)
            self._seq += 1
            end = _Finish(self._seq, number, status, when, fields)
            queued = self._queued_starts.pop(number, None)
            if queued is not None:  # not taken yet: one INSERT of the finished row
                queued.finish = end
                return
            self._queue.append(end)
            wake, self._idle = self._idle, False
        if wake:
            self._loop.wake(self._wake.set)

    async def _start_when_room(self, row: tuple[Any, ...]) -> int:
        deadline = time.monotonic() + self._wait_for
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LedgerBusyError(
                    f"the ledger {self._url.shown} is {len(self._queue)} write(s) behind for {self._wait_for:g} s"
                )
            await asyncio.to_thread(self._wait_for_room, remaining)
            handle = self._queue_start(*row)
            if handle is not None:
                return handle

    def _wait_for_room(self, timeout: float) -> None:
        with self._lock:
            self._room.wait_for(lambda: len(self._queue) < self._max_pending or self._closing, timeout)

    # -- the ledger's loop: opening -----------------------------------------------------------------

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    async def _open_pool(self) -> None:
        # a fallback name: the URL's own application_name (or $PGAPPNAME) names the connections if given
        naming = application_name_option(self._url.conninfo, f"gtl_nb ledger {self.replica}")
        self._pool = self._psycopg_pool.AsyncConnectionPool(
            self._url.conninfo,
            min_size=1,
            max_size=max(2, self._pool_max),
            open=False,
            kwargs={"autocommit": True, **naming},
            connection_class=self._connect_errors.connection_class(),
            timeout=self._connect_timeout,
            # give up a reconnection series early: the next request starts a new one from a short delay
            reconnect_timeout=max(2 * self._connect_timeout, 10.0),
            name=f"gtl_nb-ledger-{self.replica}",
        )
        self._connections = PooledConnections(
            self._pool, timeout=self._connect_timeout, where=f"ledger {self._url.shown}", errors=self._connect_errors
        )
        await self._pool.open(wait=False)
        try:
            await self._answered(self._prepare())
        except Exception as exc:
            self._failed(exc, "opening")
        self._writer = asyncio.ensure_future(self._write_loop())
        self._keeper = asyncio.ensure_future(self._keep_lease())
        if self._retention is not None:
            self._pruner = asyncio.ensure_future(self._keep_retention(self._retention))

    async def _prepare(self) -> None:
        """Migrate the schema, take the lease, judge the leases that ran out (first contact)."""

        async def first_contact(conn: Any) -> None:
            await migrate(conn, "ledger", LEDGER_MIGRATIONS)
            await self._take_lease(conn)
            await self._judge(conn)
            await self._forget_leases(conn)

        await self._connections.run(first_contact)
        self._ready = True

    async def _take_lease(self, conn: Any) -> None:
        began = time.monotonic()
        await conn.execute(_RENEW, (self.replica, self.hostname, self._pid, self._lease))
        self._renewed = began

    # -- the ledger's loop: the lease keeper ----------------------------------------------------------

    async def _keep_lease(self) -> None:
        """Renew the lease and judge the others every ``renew`` s; while PostgreSQL cannot be used,
        probe it more often (from 0.25 s, doubling up to ``renew``) and wake the writer when it answers."""
        failures = 0
        while True:
            await asyncio.sleep(self._renew if failures == 0 else min(self._renew, 0.25 * 2 ** (failures - 1)))
            try:
                await self._answered(self._prepare() if not self._ready else self._renew_lease())
            except Exception as exc:
                failures += 1
                self._failed(exc, "renewing its lease")
                continue
            failures = 0
            self._recovered()

    async def _renew_lease(self) -> None:
        async def renewal(conn: Any) -> None:
            await self._take_lease(conn)
            await self._judge(conn)
            if time.monotonic() - self._swept >= min(_SWEEP_EVERY, self._forget_after / 4):
                await self._forget_leases(conn)

        await self._connections.run(renewal)

    async def _answered(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """``await work``, or ``asyncio.TimeoutError`` (unreachable) when the server has not answered it
        within ``timeout`` (default ``write_timeout``). The work is cancelled without waiting for it:
        psycopg then tries to cancel the statement, which a server that stopped answering ignores for
        seconds more."""
        timeout = self._write_timeout if timeout is None else timeout
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_consumed)
            raise asyncio.TimeoutError(f"no answer within {timeout:g} s")
        return task.result()

    # -- the ledger's loop: retention ----------------------------------------------------------------

    async def _keep_retention(self, retention: Retention) -> None:
        """Prune once PostgreSQL is usable, then every ``prune_every`` seconds; a failed prune is said and
        tried again at the next one (rows are written whatever happens here)."""
        while True:
            if not self._healthy:
                await asyncio.sleep(self._renew)  # the keeper probes; look again after its next try
                continue
            try:
                pruned = await self._connections.run(lambda conn: prune_postgres(conn, retention, now=self._clock()))
            except Exception as exc:
                log.warning(
                    "ledger %s: pruning failed (%s); trying again in %g s",
                    self._url.shown,
                    self._connect_errors.describe(exc),
                    self._prune_every,
                )
            else:
                if pruned.total:
                    log.info(
                        "ledger %s: pruned %d row(s) by age and %d by size",
                        self._url.shown,
                        pruned.by_age,
                        pruned.by_size,
                    )
            await asyncio.sleep(self._prune_every)

    async def _judge(self, conn: Any) -> int:
        cursor = await conn.execute(_JUDGE)
        judged = await cursor.fetchall()
        replicas = [row[0] for row in judged]
        if replicas:
            log.warning(
                "ledger %s: %d request(s) of %d replica(s) whose lease ran out marked interrupted",
                self._url.shown,
                len(replicas),
                len(set(replicas)),
            )
            self.interrupted.add(dict(zip(INTERRUPTED_COLUMNS, row[1:], strict=True)) for row in judged)
        return len(replicas)

    async def _forget_leases(self, conn: Any) -> None:
        """Delete the leases of replicas gone for more than ``forget_after`` seconds whose rows are judged."""
        self._swept = time.monotonic()
        cursor = await conn.execute(_FORGET_LEASES, (self._forget_after,))
        if cursor.rowcount > 0:
            log.info("ledger %s: forgot the leases of %d replica(s) long gone", self._url.shown, cursor.rowcount)

    async def _judge_now(self) -> int:
        return await self._connections.run(self._judge)

    def _failed(self, exc: BaseException, doing: str) -> None:
        """PostgreSQL cannot be used: say so once, spool from now on, fail the readers waiting."""
        reason = self._connect_errors.describe(exc)  # a pool timeout's real cause, not "couldn't get a connection"
        if not is_unreachable(exc):
            reason = f"{type(exc).__name__}: {reason}"
        if self._problem is None:
            self._problem_since = time.time()
            log.warning(
                "ledger %s: PostgreSQL cannot be used (%s while %s); rows go to the spool %s until it can",
                self._url.shown,
                reason,
                doing,
                self.spool_path,
            )
        elif reason != self._problem:
            log.info("ledger %s: still failing (%s while %s)", self._url.shown, reason, doing)
        self._problem = reason
        self._settle_waiters()

    def _recovered(self) -> None:
        if self._problem is not None:
            log.warning(
                "ledger %s: PostgreSQL answers again after %.1f s; draining the spool",
                self._url.shown,
                time.time() - self._problem_since,
            )
            self._problem = None
            self._wake.set()

    @property
    def _healthy(self) -> bool:
        return self._ready and self._problem is None

    # -- the ledger's loop: the writer ------------------------------------------------------------

    async def _write_loop(self) -> None:
        last_work = -math.inf  # monotonic time of the last batch: the writer starts idle
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                batch = self._take()
                bound = self._queue[0].seq - 1 if self._queue else self._seq
            try:
                if batch:
                    await self._store(batch, bound)
                    last_work = time.monotonic()
                    continue
                if self._backlog and self._healthy:
                    await self._drain()
                    continue
            except Exception:  # a bug, or a spool file gone bad: say so, and keep the writer alive
                log.exception("ledger %s: the writer failed (%d write(s) at stake)", self._url.shown, len(batch))
                self._inflight = []
                await asyncio.sleep(0.5)
                continue
            with self._lock:
                if self._queue:
                    continue
                if self._closing:
                    return
                lingering = time.monotonic() - last_work < IDLE_AFTER
                self._idle = not lingering  # lingering: writes do not wake us, we look again soon
                self._wake.clear()
            if lingering:
                timer = loop.call_later(self.group_commit, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            else:
                await self._wake.wait()

    def _take(self) -> list[_Start | _Finish]:
        """The next batch, removed from the queue (caller holds the lock)."""
        count = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(count)]
        for op in batch:
            if isinstance(op, _Start):
                self._queued_starts.pop(op.number, None)  # taken now: a later finish is an UPDATE
        if count:
            self._room.notify_all()
        return batch

    async def _store(self, batch: list[_Start | _Finish], bound: int) -> None:
        """Write ``batch`` to PostgreSQL, or to the spool when it cannot be used (or this replica's
        earlier writes still wait there: order matters)."""
        entries = [self._entry(op) for op in batch]
        self._inflight = entries
        if self._healthy and not self._mine_spooled:
            try:
                missed = await self._commit(entries)
            except Exception as exc:
                if is_unreachable(exc):
                    self._failed(exc, "writing")
                else:  # one write's own error: write the others one by one
                    log.warning("ledger %s: a batch failed (%s); writing it row by row", self._url.shown, describe(exc))
                    entries = await self._commit_each(entries)
            else:
                entries = []
                if missed:  # only a change by hand can do this: the writer finishes each row once
                    log.warning(
                        "ledger %s: %d outcome(s) found their row no longer started (finished or deleted by "
                        "hand?); the first outcome wins",
                        self._url.shown,
                        missed,
                    )
        if entries:
            await self._spool_entries(entries)
            self._mine_spooled = self._backlog = True
        elif not self._mine_spooled:
            self._durable_up_to(bound)  # everything up to here is in PostgreSQL
        self._inflight = []
        self._processed = bound
        self._settle_waiters()
        self._written_up_to(bound)

    def _written_up_to(self, bound: int) -> None:
        """Every write numbered up to ``bound`` is in PostgreSQL or the spool: call the ``when_written``
        callbacks waiting for it (in the order of their writes) — unless only PostgreSQL counts."""
        if not self.strict_durability:
            self._written.raise_to(bound)  # a watcher's defect is logged and never stops the writer

    def _durable_up_to(self, bound: int) -> None:
        """Every write numbered up to ``bound`` is in PostgreSQL (read-your-writes: ``_settle_waiters``);
        with ``strict_durability``, call the ``when_written`` callbacks waiting for it."""
        self._durable = max(self._durable, bound)
        if self.strict_durability:
            self._written.raise_to(self._durable)

    def _entry(self, op: _Start | _Finish) -> _Entry:
        """``(seq, kind, SQL parameters)`` of one write, as it is committed or spooled."""
        if isinstance(op, _Finish):
            params = self._outcome(op)
            return op.seq, "finish", params
        params = {
            "time": op.when,
            "time_utc": iso_utc(op.when),
            "session_id": _text(op.session_id),
            "user": _text(op.user),
            "model": _text(op.model),
            "pid": self._pid,
            "proc_start": self._identity,
            "hostname": self.hostname,
            "tenant": _text(op.tenant),
            "key_id": _text(op.key_id),
            "trace_id": _text(op.trace_id),
            "replica": self.replica,
            "replica_seq": op.number,
        }
        if op.finish is None:
            return op.seq, "start", {**params, **_STARTED}
        outcome = self._outcome(op.finish)
        # the row as the finishing UPDATE would leave it: given values, else the start's
        if outcome["model"] is None:
            outcome["model"] = params["model"]
        if outcome["latency_ms"] is None:
            outcome["latency_ms"] = (outcome["end_time"] - op.when) * 1000.0
        outcome["cache_hit"] = bool(outcome["cache_hit"])
        outcome["coalesced"] = bool(outcome["coalesced"])
        return op.seq, "finished", {**params, **outcome}

    def _outcome(self, op: _Finish) -> dict[str, Any]:
        """The finishing parameters; details that cannot be made sense of leave the outcome alone."""
        try:
            clean: dict[str, Any] = clean_finish_fields(op.number, op.fields)
        except Exception as exc:  # as the SQLite ledger: an ended request never stays started
            log.warning("ledger row %s: could not record its details (%s); recording its status only", -op.number, exc)
            clean = dict.fromkeys(FINISH_FIELDS)
            clean["error_code"] = _text(op.fields.get("error_code"))
        path = clean["failover_path"]
        return {
            "status": op.status,
            "end_time": op.when,
            "error_code": _text(clean["error_code"]),
            "finish_reason": _text(clean["finish_reason"]),
            "deployment": _text(clean["deployment"]),
            "provider_type": _text(clean["provider_type"]),
            "model": _text(clean["model"]),
            "tokens_in": clean["tokens_in"],
            "tokens_out": clean["tokens_out"],
            "cached_tokens_in": clean["cached_tokens_in"],
            "cache_write_tokens_in": clean["cache_write_tokens_in"],
            "reasoning_tokens_out": clean["reasoning_tokens_out"],
            "cost": clean["cost"],
            "usage_estimated": None if clean["usage_estimated"] is None else bool(clean["usage_estimated"]),
            "ttft_ms": clean["ttft_ms"],
            "latency_ms": clean["latency_ms"],
            "cache_hit": clean["cache_hit"],
            "coalesced": clean["coalesced"],
            "failover_path": None if path is None else _json_list(path),
            "replica": self.replica,
            "replica_seq": op.number,
        }

    async def _commit(self, entries: list[_Entry], *, adopt: Iterable[str] = ()) -> int:
        """``_commit_now``, bounded by ``write_timeout`` (``_answered``): a batch that may have reached a
        server that stopped answering is spooled too, and replaying it changes nothing."""
        return await self._answered(self._commit_now(entries, adopt=adopt))

    async def _commit_now(self, entries: list[_Entry], *, adopt: Iterable[str] = ()) -> int:
        """Write ``entries`` in one transaction and one round trip; return how many finishes found no
        started row.

        The batch is ONE query of a few statements — renew the lease if the keeper is late, adopt the
        replicas of spooled rows, one multi-row INSERT, one UPDATE of the finished rows from a VALUES
        list — with the values written in as SQL literals by psycopg's own quoting
        (``Transformer.as_literal``, what its client-side binding uses) and sent as a simple query,
        which PostgreSQL runs as one implicit transaction: all or nothing, as before. A pipeline of
        ``executemany`` did the same with far more work on the ledger's loop thread (whose GIL time is
        the event loop's loss): at concurrency 1 the ledger's share of the gateway's GIL samples fell
        from ~11.5 % to ~7 % (``make bench-stores --profile postgres``)."""
        inserts = [params for _, kind, params in entries if kind != "finish"]
        finishes = [params for _, kind, params in entries if kind == "finish"]
        began = time.monotonic()
        renew = began - self._renewed > self._renew  # the keeper is late: renew with the rows
        runs = 0

        async def batch(conn: Any) -> int:
            nonlocal runs
            runs += 1
            literal = self._psycopg.adapt.Transformer.from_context(conn).as_literal
            statements: list[bytes] = []
            if renew:
                statements.append(_statement(literal, _RENEW, (self.replica, self.hostname, self._pid, self._lease)))
            for replica in adopt:
                statements.append(_statement(literal, _ADOPT, (replica, self._lease)))
            # inserts first: a finish in the same batch refers to a row started in an earlier one
            if inserts:
                statements.append(_INSERT_HEAD + _rows(literal, inserts, _INSERT_COLUMNS, _INSERT_CASTS) + _INSERT_TAIL)
            if finishes:
                statements.append(
                    _FINISH_HEAD + _rows(literal, finishes, _FINISH_COLUMNS, _FINISH_CASTS) + _FINISH_TAIL
                )
            if not statements:
                return 0
            cursor = self._psycopg.AsyncClientCursor(conn)
            await cursor.execute(b"; ".join(statements))
            updated = int(cursor.rowcount)
            while cursor.nextset():  # the UPDATE's is the last result
                updated = int(cursor.rowcount)
            # run again: a finish whose row is no longer started was finished by the first run's
            # COMMIT, which reached the server before the connection was lost — not missed
            return len(finishes) if runs > 1 else updated

        # run again on a new connection when the pooled one was closed by the server: the batch is
        # idempotent (inserts keyed by replica and number do nothing twice, a finish updates only a
        # row still started), so even a batch whose COMMIT did reach the server doubles nothing
        updated = await self._connections.run(batch)
        if renew:
            self._renewed = began
        return len(finishes) - max(0, updated) if finishes else 0

    async def _commit_each(self, entries: list[_Entry]) -> list[_Entry]:
        """Write ``entries`` one transaction each; a write refused for its own values is logged and
        dropped. Returns the entries not written because PostgreSQL became unreachable (to spool)."""
        for index, entry in enumerate(entries):
            try:
                await self._commit([entry])
            except Exception as exc:
                if is_unreachable(exc):
                    self._failed(exc, "writing")
                    return entries[index:]
                log.error(
                    "ledger %s: the %s of row %s of %s could not be written (%s); it is lost",
                    self._url.shown,
                    entry[1],
                    entry[2]["replica_seq"],
                    entry[2]["replica"],
                    describe(exc),
                )
        return []

    async def _spool_entries(self, entries: list[_Entry]) -> None:
        """Append to the spool, retrying (and saying so) until the local disk takes them."""
        delay = 0.05
        while True:
            try:
                self._spool.append(self.replica, entries)
                return
            except Exception as exc:
                log.error(
                    "ledger spool %s: cannot append %d write(s) (%s); retrying", self.spool_path, len(entries), exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _drain(self) -> None:
        """Replay the oldest chunk of the spool into PostgreSQL, then delete it from the spool."""
        chunk: list[SpoolEntry] = self._spool.head(SPOOL_CHUNK)
        if not chunk:
            self._backlog = self._mine_spooled = False
            self._durable_up_to(self._processed)
            self._settle_waiters()
            log.info("ledger %s: the spool is drained", self._url.shown)
            return
        entries = [(entry.op_seq, entry.kind, _clean_params(entry.params)) for entry in chunk]
        foreign = sorted({entry.replica for entry in chunk} - {self.replica})
        try:
            await self._commit(entries, adopt=foreign)
        except Exception as exc:
            if is_unreachable(exc):
                self._failed(exc, "draining the spool")
                return
            log.warning("ledger %s: a spooled chunk failed (%s); writing it row by row", self._url.shown, describe(exc))
            if await self._commit_each(entries):
                return  # unreachable again: the chunk stays in the spool
        self._spool.remove(chunk)
        first = self._spool.first_of(self.replica)
        self._mine_spooled = first is not None
        self._durable_up_to(self._processed if first is None else first - 1)
        self._settle_waiters()

    # -- the ledger's loop: readers ---------------------------------------------------------------

    async def _until_durable(self, target: int) -> None:
        """Return once every write numbered up to ``target`` is in PostgreSQL (read-your-writes)."""
        if self._durable >= target:
            return
        if not self._healthy:
            raise self._unavailable()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wake.set()  # a lingering writer looks now: a reader is waiting
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._wait_for)
        except asyncio.TimeoutError:
            raise LedgerBusyError(
                f"the ledger {self._url.shown} has not written its queued rows for {self._wait_for:g} s; see the log"
            ) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            self._waiters = [(t, w) for t, w in self._waiters if w is not waiter]

    def _settle_waiters(self) -> None:
        if not self._waiters:
            return
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if self._durable >= target:
                waiter.set_result(None)
            elif not self._healthy:
                waiter.set_exception(self._unavailable())
            else:
                keep.append((target, waiter))
        self._waiters = keep

    def _unavailable(self) -> PostgresUnavailableError:
        return PostgresUnavailableError(
            f"the ledger cannot be read now: {self.degraded_reason or 'PostgreSQL is not reachable yet'}"
        )

    async def _fetch(self, target: int, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        await self._until_durable(target)
        psycopg = self._psycopg
        try:
            # a read may be long (a year of rows), but not as long as a server that stopped answering
            return await self._answered(self._query(sql, params), timeout=max(self._wait_for, self._write_timeout))
        except (psycopg.DataError, psycopg.errors.UndefinedFunction) as exc:
            raise LedgerValueError(f"a ledger filter has a value of the wrong type: {describe(exc)}") from None
        except Exception as exc:
            if is_unreachable(exc):
                raise PostgresUnavailableError(
                    f"the ledger {self._url.shown} cannot be read now: {self._connect_errors.describe(exc)}"
                ) from None
            raise

    async def _query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        async def read(conn: Any) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

        return await self._connections.run(read)

    async def _rows(self, target: int, where: str, params: list[Any]) -> list[dict[str, Any]]:
        """The rows selected by ``where`` (its ORDER BY and LIMIT included), once ``target`` is written."""
        found = await self._fetch(target, f"{_SELECT}{where}", params)
        return [_record(values) for values in found]

    async def _totals(
        self, target: int, user: str | None, since: float | None, until: float | None, tenant: str | None
    ) -> Totals:
        filters: dict[str, Any] = {"since": since, "until": until}
        if user is not None:
            filters["user"] = user
        if tenant is not None:
            filters["tenant"] = tenant
        where, params = _where(filters)
        where = f"{where} AND {_NOT_REFUSED}" if where else f" WHERE {_NOT_REFUSED}"
        sql = f"SELECT COUNT(*), COALESCE(SUM({_TOKENS}), 0), COALESCE(SUM(cost), 0.0) FROM {TABLE}{where}"
        found = (await self._fetch(target, sql, params))[0]
        return Totals(int(found[0]), int(found[1]), float(found[2]))

    # -- the ledger's loop: closing ----------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), self._wait_for)
        except asyncio.TimeoutError:
            log.error(
                "ledger %s: the writer did not finish in %g s; spooling what it holds", self._url.shown, self._wait_for
            )
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            with self._lock:
                left = [self._entry(op) for op in self._take_all()]
                bound = self._seq  # nothing is queued after close: every write is in this batch or before
            await self._spool_entries([*self._inflight, *left])  # idempotent: a committed one replays as nothing
            self._mine_spooled = True
            self._written_up_to(bound)
        except Exception:
            log.exception("ledger %s: the writer failed", self._url.shown)
        for task in (self._keeper, self._pruner):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._healthy and not self._mine_spooled:
            try:
                await self._answered(self._release())
            except Exception as exc:  # the lease runs out by itself and another replica judges the rows
                log.warning("ledger %s: could not give back its lease (%s)", self._url.shown, describe(exc))
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(LedgerStateError(f"the ledger {self._url.shown} is closed"))
        await self._pool.close(timeout=5.0)

    async def _release(self) -> None:
        async def release(conn: Any) -> None:
            async with conn.transaction():
                # the handles of these rows are gone with this ledger: nobody can finish them now
                await conn.execute(_RELEASE_ROWS, (self._clock(), self.replica))
                await conn.execute(_RELEASE_LEASE, (self.replica,))

        await self._connections.run(release)

    def _take_all(self) -> list[_Start | _Finish]:
        ops = list(self._queue)
        self._queue.clear()
        self._queued_starts.clear()
        return ops


def _statement(literal: Callable[[Any], bytes], sql: str, values: tuple[Any, ...]) -> bytes:
    """``sql`` with its ``%s`` replaced by ``values`` as SQL literals."""
    parts = sql.encode().split(b"%s")
    return parts[0] + b"".join(literal(value) + part for value, part in zip(values, parts[1:], strict=True))


def _consumed(task: asyncio.Future[Any]) -> None:
    """A timed-out write's end, which nobody awaits: marked seen rather than logged as never retrieved."""
    if not task.cancelled():
        task.exception()


def _close_at_exit(ref: weakref.ref[PostgresUsageLedger]) -> None:
    ledger = ref()
    if ledger is not None:
        stop_shared_loop()  # the sessions still running end first, their rows' outcomes queued here
        ledger.close()


# ----------------------------------------------------------------------------------------------
# values


def _text(value: Any) -> str | None:
    """A text value PostgreSQL can store: NUL (which it refuses) becomes U+FFFD, a lone surrogate
    (which UTF-8 cannot encode) its escape — the row is written rather than lost."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _json_list(path: Iterable[Any]) -> str:
    import json

    return json.dumps([_text(step) for step in path])


# Columns the writes gained after spools were first written: an entry an older gtl_nb spooled has
# none of them (NULL: that writer did not know them), and it is still written, not lost.
_LATER_COLUMNS = ("cache_write_tokens_in", "finish_reason", "usage_estimated")


def _clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Spooled parameters as they were before JSON (which keeps every value but escapes), with the
    columns an older writer did not know as NULL."""
    clean = dict.fromkeys(_LATER_COLUMNS)
    clean.update((name, _text(value) if isinstance(value, str) else value) for name, value in params.items())
    return clean


def _record(values: Iterable[Any]) -> dict[str, Any]:
    record = dict(zip(COLUMN_NAMES, values, strict=True))
    path = record["failover_path"]
    record["failover_path"] = None if path is None else list(path)
    record["cache_hit"] = bool(record["cache_hit"])
    record["coalesced"] = bool(record["coalesced"])
    if record["usage_estimated"] is not None:  # (NULL: a row still started, or written before version 6)
        record["usage_estimated"] = bool(record["usage_estimated"])
    return record


def _bindable(name: str, value: Any) -> Any:
    """A filter value as the column compares it (SQLite's affinity: a number matches text as its text)."""
    if name in _FLAGS:
        return bool(value)
    if isinstance(value, bool):
        value = int(value)
    if _KIND.get(name) == "TEXT" and not isinstance(value, str):
        return str(value)
    return value


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause from keyword filters (``Ledger.to_dataframe``'s); names from the schema, values bound."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        if key in ("since", "until"):
            if value is not None:
                clauses.append("time >= %s" if key == "since" else "time < %s")
                params.append(bound_seconds(value))
            continue
        if key not in COLUMN_NAMES:
            raise LedgerValueError(unknown_filter(key))
        column = "failover_path::text" if key == "failover_path" else quoted(key)
        checked_filter_value(key, value)
        if value is None:
            clauses.append(f"{column} IS NULL")
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = [_bindable(key, v) for v in value]
            clauses.append(f"{column} IN ({', '.join(['%s'] * len(values))})" if values else "false")
            params.extend(values)
        else:
            clauses.append(f"{column} = %s")
            params.append(_bindable(key, value))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
